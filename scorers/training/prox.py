"""Supervised fine-tuning of a ProX refining model on (user turn, program) pairs.

Each example is the prompt exactly as the ``prox_*`` stages render and tokenise it (the
system message and the user turn in the chat template, the tokenizer's own special
tokens), followed by the program tokens and EOS; the loss is on the program tokens and
EOS only. ``base`` fine-tunes a local causal-LM checkpoint (loaded with safetensors /
``weights_only`` through thresher's loader); without it a tiny Llama is built from a config
with a tokenizer trained on the pairs, so the whole teach -> train -> refine loop runs on a
laptop. The result is saved with ``save_pretrained`` (safetensors) plus ``prox_card.json``.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from typing import Optional

import torch

from thresher.scorers.training.lm import optimizer_step


def render(template: str, system: str, user: str) -> str:
    """The prompt text the ``generate`` task renders for a custom template."""
    return re.sub(r"\{(system|user)\}", lambda m: user if m.group(1) == "user" else system, template)


def encode_pairs(tok, pairs: Sequence[tuple[str, str]], template: str, system: str, max_len: int):
    """(input ids, labels) per example; the prompt is cut from its end when the example
    would not fit ``max_len`` (the program is always kept whole)."""
    eos = tok.eos_token_id
    out = []
    for user, program in pairs:
        p = tok(render(template, system, user), add_special_tokens=True)["input_ids"]
        g = tok(program, add_special_tokens=False)["input_ids"] + [eos]
        if len(g) >= max_len:
            g = g[: max_len - 1]
        p = p[: max_len - len(g)]
        out.append((p + g, [-100] * len(p) + g))
    return out


def train_refiner(pairs: Sequence[tuple[str, str]], output: str, *, base: Optional[str] = None,
                  template: str, system: str, steps: int = 300, batch_size: int = 8, lr: float = 3e-3,
                  max_len: int = 512, hidden: int = 64, layers: int = 2, vocab_size: int = 2000,
                  seed: int = 0, log=lambda s: None) -> dict:
    if not pairs:
        raise ValueError("no (prompt, program) pairs to train on")
    torch.manual_seed(seed)
    if base is None:
        from thresher.scorers.training import lm
        texts = [render(template, system, u) for u, _ in pairs] + [p for _, p in pairs]
        tok = lm.train_tokenizer(texts, vocab_size=vocab_size, model_max_length=max_len)
        model = lm.new_causal_lm(tok, hidden=hidden, layers=layers, heads=max(1, hidden // 16), context=max_len,
                                 seed=seed)
    else:
        from thresher.scorers.models.loading import load_model
        loaded = load_model(base, kind="causal_lm")
        model, tok = loaded.model, loaded.tokenizer
        lr = min(lr, 5e-5)
    data = encode_pairs(tok, pairs, template, system, max_len)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    order = torch.randperm(len(data), generator=g).tolist()
    pos, last = 0, float("nan")
    for step in range(steps):
        if pos >= len(order):
            order, pos = torch.randperm(len(data), generator=g).tolist(), 0
        idx = order[pos: pos + batch_size]
        pos += batch_size
        batch = [data[i] for i in idx]
        L = max(len(x) for x, _ in batch)
        ids = torch.full((len(batch), L), pad, dtype=torch.long)
        lab = torch.full((len(batch), L), -100, dtype=torch.long)
        att = torch.zeros((len(batch), L), dtype=torch.long)
        for b, (x, y) in enumerate(batch):
            ids[b, : len(x)] = torch.tensor(x)
            lab[b, : len(y)] = torch.tensor(y)
            att[b, : len(x)] = 1
        last = optimizer_step(model, opt, sched, model(input_ids=ids, attention_mask=att, labels=lab).loss)
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps}: loss on program tokens {last:.3f}")
    model.train(False)
    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    tok.save_pretrained(output)
    card = {"pairs": len(pairs), "steps": steps, "batch_size": batch_size, "lr": lr, "final_loss": last,
            "base": base, "template": template, "system": system, "max_len": max_len,
            "parameters": int(sum(p.numel() for p in model.parameters()))}
    with open(os.path.join(output, "prox_card.json"), "w") as f:
        json.dump(card, f, indent=2)
    return card
