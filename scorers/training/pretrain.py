"""A small built-in pretraining loop for the MATES stage loop (framework-free).

:class:`Pretrainer` trains a causal LM in stages on packed token blocks, carrying the
AdamW state and one learning-rate schedule (linear warmup, then cosine decay to
``min_lr_ratio`` of the peak) across stages, deterministically by seed. It saves
checkpoints in the format the MATES prober reads (``thresher.scorers.training.mates``):
``save_pretrained`` weights (safetensors) and tokenizer, ``optimizer.pt`` =
``torch.save(optimizer.state_dict())`` of the AdamW over ``model.parameters()`` in their
order (one group; its ``lr`` is the scheduled rate at the checkpoint), and
``thresher_trainer.json`` (step, schedule, tokens seen), so :meth:`Pretrainer.load`
resumes exactly where :meth:`save` left off.

A user's own trainer replaces this class through the loop's checkpoint hand-off (see
``thresher mates loop``); it only has to write such a directory.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from thresher.scorers.training.lm import new_causal_lm, token_stream, train_tokenizer
from thresher.scorers.training.mates import OPTIMIZER_FILE

TRAINER_FILE = "thresher_trainer.json"

DEFAULTS: dict[str, Any] = {
    "vocab_size": 2048, "hidden": 128, "layers": 2, "heads": 4, "context": 256,
    "seq_len": 128, "batch_size": 16, "lr": 3e-3, "warmup_steps": 20, "min_lr_ratio": 0.1,
    "weight_decay": 0.1, "betas": (0.9, 0.95), "total_steps": 1000, "seed": 0, "precision": "fp32",
}
#: ``fp32``: plain float32; ``bf16``: float32 weights and optimizer state, forward and loss under
#: ``torch.autocast(bfloat16)`` (the usual mixed precision for GPU pretraining; CPU autocast works too)
PRECISIONS = ("fp32", "bf16")


class Pretrainer:
    """Stage-wise pretraining with one optimizer and one schedule over ``total_steps``."""

    def __init__(self, model, tokenizer, *, total_steps: int, lr: float = 3e-3, warmup_steps: int = 20,
                 min_lr_ratio: float = 0.1, weight_decay: float = 0.1, betas=(0.9, 0.95), seq_len: int = 128,
                 batch_size: int = 16, seed: int = 0, device: str = "cpu", step: int = 0, tokens: int = 0,
                 precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.model = model.to(device)
        self.tok = tokenizer
        self.device = torch.device(device)
        self.total_steps = int(total_steps)
        self.peak_lr = float(lr)
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.step = int(step)
        self.tokens = int(tokens)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr_at(self.step), betas=tuple(betas),
                                     weight_decay=weight_decay)

    # ------------------------------------------------------------------ construction
    @classmethod
    def new(cls, texts: Sequence[str], **cfg: Any) -> Pretrainer:
        """A tokenizer trained on ``texts`` and a Llama built from the config (no download)."""
        c = {**DEFAULTS, **cfg}
        tok = train_tokenizer(texts, vocab_size=c["vocab_size"], model_max_length=c["context"])
        model = new_causal_lm(tok, hidden=c["hidden"], layers=c["layers"], heads=c["heads"], context=c["context"],
                              seed=c["seed"])
        return cls(model, tok, total_steps=c["total_steps"], lr=c["lr"], warmup_steps=c["warmup_steps"],
                   min_lr_ratio=c["min_lr_ratio"], weight_decay=c["weight_decay"], betas=c["betas"],
                   seq_len=c["seq_len"], batch_size=c["batch_size"], seed=c["seed"], device=c.get("device", "cpu"),
                   precision=c["precision"])

    @classmethod
    def load(cls, directory: str, device: str = "cpu") -> Pretrainer:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        with open(os.path.join(directory, TRAINER_FILE)) as f:
            st = json.load(f)
        tok = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, trust_remote_code=False,
                                                     use_safetensors=True, dtype=torch.float32)
        self = cls(model, tok, total_steps=st["total_steps"], lr=st["peak_lr"], warmup_steps=st["warmup_steps"],
                   min_lr_ratio=st["min_lr_ratio"], weight_decay=st["weight_decay"], betas=st["betas"],
                   seq_len=st["seq_len"], batch_size=st["batch_size"], seed=st["seed"], device=device,
                   step=st["step"], tokens=st["tokens"], precision=st.get("precision", "fp32"))
        state = torch.load(os.path.join(directory, OPTIMIZER_FILE), map_location="cpu", weights_only=True)
        self.opt.load_state_dict(state)
        return self

    # ------------------------------------------------------------------ schedule
    def lr_at(self, step: int) -> float:
        """Linear warmup over ``warmup_steps``, then cosine to ``min_lr_ratio`` × peak at ``total_steps``."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.peak_lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    # ------------------------------------------------------------------ training
    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def blocks(self, texts: Sequence[str]) -> torch.Tensor:
        stream = token_stream(self.tok, texts)
        n = len(stream) // self.seq_len
        if n == 0:
            raise ValueError(f"the selection holds {len(stream)} tokens, fewer than one training block "
                             f"of {self.seq_len}")
        return torch.from_numpy(stream[: n * self.seq_len].reshape(n, self.seq_len))

    def train(self, texts: Sequence[str], steps: int, stage: int = 0) -> dict[str, Any]:
        """``steps`` optimizer steps on ``texts`` packed into blocks (shuffled by (seed, stage);
        the blocks are cycled when the steps need more tokens than they hold)."""
        blocks = self.blocks(texts)
        n = blocks.shape[0]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + stage)
        order = torch.randperm(n, generator=g)
        pos = 0
        losses = []
        self.model.train()
        for _ in range(int(steps)):
            if pos + self.batch_size > n:
                order = torch.randperm(n, generator=g) if n >= self.batch_size else order
                pos = 0
            idx = order[pos: pos + self.batch_size]
            if idx.numel() < self.batch_size:            # fewer blocks than a batch: repeat them
                idx = order.repeat(self.batch_size // n + 1)[: self.batch_size]
            pos += self.batch_size
            x = blocks[idx].to(self.device)
            for grp in self.opt.param_groups:
                grp["lr"] = self.lr_at(self.step)
            with self._autocast():
                loss = self.model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            self.step += 1
            self.tokens += int(x.numel())
        for grp in self.opt.param_groups:                # the rate the next step (or a probe) uses
            grp["lr"] = self.lr_at(self.step)
        self.model.train(False)
        return {"steps": int(steps), "step": self.step, "tokens": self.tokens, "blocks": int(n),
                "final_loss": float(np.mean(losses[-10:])) if losses else math.nan}

    @torch.no_grad()
    def eval_loss(self, texts: Sequence[str], batch_size: int = 32) -> float:
        """Mean token NLL over ``texts`` packed into ``seq_len`` blocks."""
        blocks = self.blocks(texts)
        self.model.train(False)
        tot, cnt = 0.0, 0
        for i in range(0, blocks.shape[0], batch_size):
            x = blocks[i: i + batch_size].to(self.device)
            k = x.numel() - x.shape[0]
            with self._autocast():
                tot += float(self.model(input_ids=x, labels=x).loss) * k
            cnt += k
        return tot / max(cnt, 1)

    def save(self, directory: str) -> str:
        """Write the checkpoint into a fresh sibling directory, then rename it into place: a
        reader never sees a partial checkpoint, and no file of an older one is left beside it."""
        import shutil
        final = os.path.abspath(directory)
        tmp = final + ".tmp-save"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self._write(tmp)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        return directory

    def _write(self, directory: str) -> None:
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tok.save_pretrained(directory)
        torch.save(self.opt.state_dict(), os.path.join(directory, OPTIMIZER_FILE))
        grp = self.opt.param_groups[0]
        with open(os.path.join(directory, TRAINER_FILE), "w") as f:
            json.dump({"step": self.step, "tokens": self.tokens, "total_steps": self.total_steps,
                       "peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps, "min_lr_ratio": self.min_lr_ratio,
                       "weight_decay": grp["weight_decay"], "betas": list(grp["betas"]), "seq_len": self.seq_len,
                       "batch_size": self.batch_size, "seed": self.seed, "lr_now": grp["lr"],
                       "precision": self.precision}, f, indent=2)


__all__ = ["Pretrainer", "TRAINER_FILE", "DEFAULTS", "PRECISIONS"]
