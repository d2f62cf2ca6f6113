"""Small causal-LM training utilities: ablations ("train a small LM on a selection"),
the PreSelect proof, MATES probing, and offline test models.

Everything is built from a config (no download): a byte-level BPE tokenizer is
trained with the ``tokenizers`` library, a Llama-architecture model is created
from a tiny config, trained with AdamW on packed token streams, and saved with
``save_pretrained`` (safetensors), so the saved directory loads through the same
code users run on real checkpoints.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch


def train_tokenizer(texts: Sequence[str], vocab_size: int = 1024, model_max_length: int = 4096):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=model_max_length)
    return fast


def new_causal_lm(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, context: int = 256, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=context, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def token_stream(tokenizer, texts: Sequence[str]) -> np.ndarray:
    eos = tokenizer.eos_token_id
    enc = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    out = []
    for ids in enc:
        out.extend(ids)
        out.append(eos)
    return np.asarray(out, dtype=np.int64)


def optimizer_step(model, opt, sched, loss) -> float:
    """Backward, clip the gradient norm to 1, step the optimizer and the schedule; the loss."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def train_causal_lm(model, tokenizer, texts: Sequence[str], *, steps: Optional[int] = None,
                    token_budget: Optional[int] = None, seq_len: int = 128, batch_size: int = 16,
                    lr: float = 3e-3, seed: int = 0, weight_decay: float = 0.01) -> dict:
    """Train on ``texts`` packed into ``seq_len`` blocks. Stop after ``steps`` or
    after ``token_budget`` training tokens (whichever is given; the stream is
    cycled if the budget exceeds it)."""
    stream = token_stream(tokenizer, texts)
    n_blocks = len(stream) // seq_len
    if n_blocks == 0:
        raise ValueError("not enough text to fill one training block")
    blocks = torch.from_numpy(stream[: n_blocks * seq_len].reshape(n_blocks, seq_len))
    if steps is None:
        if token_budget is None:
            raise ValueError("give steps or token_budget")
        steps = max(1, token_budget // (seq_len * batch_size))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    order = torch.randperm(n_blocks, generator=g)
    pos = 0
    last = float("nan")
    for _ in range(steps):
        if pos + batch_size > n_blocks:
            order = torch.randperm(n_blocks, generator=g)
            pos = 0
        idx = order[pos: pos + batch_size]
        pos += batch_size
        x = blocks[idx]
        last = optimizer_step(model, opt, sched, model(input_ids=x, labels=x).loss)
    model.train(False)
    return {"steps": steps, "tokens": steps * batch_size * seq_len, "final_loss": last,
            "stream_tokens": int(len(stream))}


@torch.no_grad()
def eval_loss(model, tokenizer, texts: Sequence[str], seq_len: int = 128, batch_size: int = 32) -> float:
    """Mean token NLL (nats) over ``texts`` packed into ``seq_len`` blocks."""
    stream = token_stream(tokenizer, texts)
    n_blocks = len(stream) // seq_len
    blocks = torch.from_numpy(stream[: n_blocks * seq_len].reshape(n_blocks, seq_len))
    model.train(False)
    tot, cnt = 0.0, 0
    for i in range(0, n_blocks, batch_size):
        x = blocks[i: i + batch_size]
        out = model(input_ids=x, labels=x)
        k = x.numel() - x.shape[0]
        tot += float(out.loss) * k
        cnt += k
    return tot / max(cnt, 1)


def save(model, tokenizer, directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
