"""MATES data influence model: fine-tune an encoder to predict oracle data influence.

MATES (methods README §3.4) probes a few thousand documents for their effect on a
reference loss, then trains a small encoder to predict that score for the whole pool.
:func:`fit_influence_model` is that trainer, framework-free (no Beam import):

* **Encoder and pooling.** A local Hugging Face encoder (loaded with thresher's own
  safe loader: safetensors or ``weights_only``, never remote code, nothing downloaded)
  with mean pooling over the attention mask and a thresher ``EncoderHead(hidden, 1)``
  (a Linear), with dropout before it while training (as the authors: dropout, then
  Linear(hidden -> 1)). Documents are cut into model inputs by the very code the
  engine's ``encoder_score`` task uses with ``truncation="windows"``
  (:meth:`EncoderScore._units`): token ids without special tokens, capped at
  ``max_doc_tokens``, split into consecutive windows of ``window`` minus the special
  tokens, each wrapped in the tokenizer's special tokens; the hidden states of all
  windows of a document are pooled together (sum over every window token / token
  count). The authors' BERT recipe (1,024 tokens as two 512-token halves, pooled
  together) is the case ``window=512, max_doc_tokens=1024`` up to the special tokens.
* **Split.** The held-out rows are the ``heldout_fraction`` of rows with the smallest
  seeded stable hash of their ids (:func:`heldout_split`), so the split depends on ids
  and the seed only, not on row order.
* **Training.** Targets z-normalised with the training split's mean and std; MSE;
  full fine-tuning of encoder and head with AdamW (no weight decay on biases and
  LayerNorm weights, as HF Trainer) and a linear decay to 0, gradient norm clipped
  to 1 (HF Trainer's default); batches of ``batch_size`` documents in a seeded
  shuffle. Held-out Spearman every ``eval_every`` steps and at the end of every
  epoch; the best state (by held-out Spearman) is kept in memory and saved.
* **Output.** ``output_dir`` loads with ``thresher.scorers.models.loading.load_model``
  and ``EncoderScore(lm, truncation="windows", max_doc_tokens=max_doc_tokens,
  max_length=window)`` gives the **de-normalised** prediction (the predicted target
  value): the z-normalisation is folded into the head (``w' = w·std``,
  ``b' = b·std + mean``). Files: the encoder (``save_pretrained``, safetensors), the
  tokenizer, ``thresher_head.json`` + ``thresher_head.safetensors`` and
  ``influence_card.json`` (see :data:`CARD_KEYS`).

On CUDA the forward passes run under bf16 autocast (the authors trained in bf16);
on CPU everything is fp32. Torch's thread count is left as the caller set it.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from thresher.scorers.text.hashing import stable_id_hash

FORMAT = "thresher.mates.influence/1"
CARD_FILE = "influence_card.json"
MIN_TRAIN = 8
MIN_HELDOUT = 4
MAX_DEFAULT_WINDOW = 512
#: documents tokenised per call while building the model inputs (bounds the Python lists)
_TOKENISE_CHUNK = 2048
#: keys of ``influence_card.json``
CARD_KEYS = ("format", "encoder", "target_mean", "target_std", "n_train", "n_heldout", "heldout_fraction",
             "best_spearman", "best_step", "steps", "epochs", "lr", "batch_size", "weight_decay", "dropout",
             "window", "max_doc_tokens", "eval_every", "seed", "device", "seconds", "spearman_curve")

_M64 = (1 << 64) - 1


# --------------------------------------------------------------------------- split
def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def heldout_split(ids: Sequence[str], heldout_fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of the held-out rows: the ``round(n · heldout_fraction)`` rows whose
    ``stable_id_hash`` (mixed with ``seed``) is smallest. Depends on the ids and the seed
    only, not on the order of the rows."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    ids = [str(i) for i in ids]
    n = len(ids)
    h = stable_id_hash(pa.array(ids, type=pa.string()))
    key = _splitmix64(h ^ _splitmix64(np.array([int(seed) & _M64], dtype=np.uint64))[0])
    k = int(round(n * heldout_fraction))
    order = sorted(range(n), key=lambda i: (int(key[i]), ids[i]))
    mask = np.zeros(n, dtype=bool)
    mask[order[:k]] = True
    return mask


def _validate(texts: Sequence[str], targets: np.ndarray, ids: Optional[Sequence[str]],
              heldout_fraction: float, seed: int) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    texts = list(texts)
    n = len(texts)
    y = np.asarray(targets, dtype=np.float64)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"targets must be one number per text: {n} texts, targets of shape {y.shape}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{len(bad)} texts are not strings (first at row {bad[0]}: {type(texts[bad[0]]).__name__})")
    nonfinite = np.flatnonzero(~np.isfinite(y))
    if len(nonfinite):
        raise ValueError(f"{len(nonfinite)} targets are not finite (NaN or inf; first at row {int(nonfinite[0])}: "
                         f"{y[nonfinite[0]]}); drop or fix those rows")
    ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"ids must be one per text: {n} texts, {len(ids)} ids")
    if len(set(ids)) != n:
        raise ValueError(f"ids must be unique: {n - len(set(ids))} repeated")
    held = heldout_split(ids, heldout_fraction, seed)
    n_held = int(held.sum())
    n_train = n - n_held
    if n_train < MIN_TRAIN or n_held < MIN_HELDOUT:
        raise ValueError(f"too few rows: {n} rows with heldout_fraction {heldout_fraction} give {n_train} training "
                         f"and {n_held} held-out rows; need at least {MIN_TRAIN} training and {MIN_HELDOUT} held-out")
    ytr = y[~held]
    mean, std = float(ytr.mean()), float(ytr.std())
    if not std > 1e-12 * max(1.0, abs(mean)):
        raise ValueError(f"targets have zero variance on the training split ({n_train} rows, all {mean!r}); "
                         f"nothing to learn")
    return texts, y, ids, held


# --------------------------------------------------------------------------- model inputs
class _Inputs:
    """Model inputs (windows) of every document, tokenised once, as the engine builds them."""

    def __init__(self, unit_doc: np.ndarray, units: list[np.ndarray], n_docs: int, pad_id: int):
        self.unit_doc = unit_doc
        self.units = units
        self.lengths = np.fromiter((len(u) for u in units), dtype=np.int64, count=len(units))
        self.start = np.searchsorted(unit_doc, np.arange(n_docs), side="left")
        self.end = np.searchsorted(unit_doc, np.arange(n_docs), side="right")
        self.pad_id = pad_id

    def of(self, docs: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(unit indices, position of each unit's document in ``docs``)."""
        us = [np.arange(self.start[d], self.end[d]) for d in docs]
        local = np.concatenate([np.full(len(u), j, dtype=np.int64) for j, u in enumerate(us)])
        return np.concatenate(us), local


def _build_inputs(task, texts: list[str]) -> _Inputs:
    unit_doc: list[int] = []
    units: list[np.ndarray] = []
    for s in range(0, len(texts), _TOKENISE_CHUNK):
        for d, seq in task._units(texts[s:s + _TOKENISE_CHUNK]):
            unit_doc.append(s + d)
            units.append(np.asarray(seq, dtype=np.int64))
    return _Inputs(np.asarray(unit_doc, dtype=np.int64), units, len(texts), task.pad_id)


def _pooled_sums(encoder, inputs: _Inputs, unit_idx: np.ndarray, device: torch.device, autocast,
                 max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of last hidden states over each unit's tokens [U, H], token counts [U]) in fp32,
    computed in length-sorted micro-batches under a padded-token budget."""
    from thresher.scorers.models.engine import pack_batches

    lengths = inputs.lengths[unit_idx]
    order: list[int] = []
    parts: list[torch.Tensor] = []
    for b in pack_batches(lengths.tolist(), max_tokens):
        Lm = int(lengths[b].max())
        ids = np.full((len(b), Lm), inputs.pad_id, dtype=np.int64)
        mask = np.zeros((len(b), Lm), dtype=np.int64)
        for r, j in enumerate(b):
            seq = inputs.units[unit_idx[j]]
            ids[r, :len(seq)] = seq
            mask[r, :len(seq)] = 1
        ids_t = torch.from_numpy(ids).to(device)
        mask_t = torch.from_numpy(mask).to(device)
        with autocast():
            out = encoder(input_ids=ids_t, attention_mask=mask_t)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        parts.append(torch.einsum("bl,blh->bh", mask_t.float(), hidden.float()))
        order.extend(b)
    cat = torch.cat(parts)
    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    counts = torch.from_numpy(lengths.astype(np.float32)).to(device)
    return cat[inv.to(device)], counts


def _predict_z(encoder, head, inputs: _Inputs, docs: np.ndarray, device, autocast, max_tokens) -> np.ndarray:
    """Head outputs (z-space) for ``docs``, pooled as the engine pools (float64 sums)."""
    encoder.train(False)
    head.train(False)
    with torch.inference_mode():
        unit_idx, local = inputs.of(docs)
        sums, counts = _pooled_sums(encoder, inputs, unit_idx, device, autocast, max_tokens)
        acc = torch.zeros((len(docs), sums.shape[1]), dtype=torch.float64, device=device)
        acc.index_add_(0, torch.from_numpy(local).to(device), sums.double())
        cnt = torch.zeros(len(docs), dtype=torch.float64, device=device)
        cnt.index_add_(0, torch.from_numpy(local).to(device), counts.double())
        pooled = (acc / cnt.clamp_min(1e-12).unsqueeze(1)).float()
        return head(pooled)[:, 0].double().cpu().numpy()


def _spearman(pred: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(pred) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(pred, y).statistic)


def _param_groups(modules: Sequence[nn.Module], weight_decay: float) -> list[dict]:
    """HF Trainer's grouping: no weight decay on biases and normalisation weights."""
    decay, no_decay = [], []
    for m in modules:
        for mod in m.modules():
            norm = isinstance(mod, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(mod).__name__.lower()
            for name, p in mod.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                (no_decay if norm or name == "bias" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- public
def fit_influence_model(texts: Sequence[str], targets: np.ndarray, encoder_dir: str, output_dir: str, *,
                        ids: Optional[Sequence[str]] = None, heldout_fraction: float = 0.1,
                        epochs: int = 5, lr: float = 5e-5, batch_size: int = 32, weight_decay: float = 0.01,
                        dropout: float = 0.1, max_doc_tokens: int = 1024, window: Optional[int] = None,
                        eval_every: int = 20, seed: int = 0, device: str = "auto",
                        log: Optional[Callable[[str], None]] = None) -> dict:
    """Fine-tune the encoder at ``encoder_dir`` + a linear head to predict ``targets``
    from ``texts``; save the best state (by held-out Spearman) to ``output_dir``.

    Returns the card (what ``influence_card.json`` holds, keys :data:`CARD_KEYS`) plus
    two entries not written to the file: ``heldout_index`` (row indices of the held-out
    rows, ascending) and ``heldout_predictions`` (the best state's de-normalised
    predictions for them, float64; what the saved model's ``encoder_score`` gives).
    Raises ``ValueError`` for too few rows, non-finite targets or targets with zero
    variance on the training split, before any model is loaded.
    """
    from thresher.scorers.models.engine import DEFAULT_MAX_TOKENS, resolve_device
    from thresher.scorers.models.loading import (
        KIND_ENCODER,
        EncoderHead,
        LoadedModel,
        _load_hf,
        _load_tokenizer,
        _max_positions,
        save_encoder_head,
    )
    from thresher.scorers.models.tasks import EncoderScore

    t_start = time.perf_counter()
    say = log or (lambda _msg: None)
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("eval_every", eval_every),
                    ("max_doc_tokens", max_doc_tokens)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not lr > 0 or weight_decay < 0 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"need lr > 0, weight_decay >= 0 and 0 <= dropout < 1 "
                         f"(got lr={lr}, weight_decay={weight_decay}, dropout={dropout})")
    texts, y, ids, held = _validate(texts, targets, ids, heldout_fraction, seed)
    train_idx = np.flatnonzero(~held)
    held_idx = np.flatnonzero(held)
    mean, std = float(y[train_idx].mean()), float(y[train_idx].std())
    z = (y - mean) / std

    # ---- model
    enc_dir = os.path.abspath(os.path.expanduser(encoder_dir))
    tokenizer = _load_tokenizer(enc_dir)
    encoder = _load_hf(enc_dir, KIND_ENCODER, None).float()
    hidden = getattr(encoder.config, "hidden_size", None)
    if not isinstance(hidden, int):
        raise ValueError(f"{enc_dir}: the encoder config has no hidden_size")
    maxpos = _max_positions(encoder.config, tokenizer, enc_dir)
    if window is None:
        window = min(maxpos or MAX_DEFAULT_WINDOW, MAX_DEFAULT_WINDOW)
    elif maxpos is not None and window > maxpos:
        raise ValueError(f"window {window} exceeds the encoder's {maxpos} positions")
    window = int(window)
    torch.manual_seed(seed)
    head = EncoderHead(hidden, 1)
    # the engine's own task cuts the documents into windows (inputs identical to inference)
    ref = EncoderScore(LoadedModel.wrap(encoder, tokenizer, head=head, max_positions=window), device="cpu",
                       truncation="windows", max_doc_tokens=max_doc_tokens, max_length=window)
    t0 = time.perf_counter()
    inputs = _build_inputs(ref, texts)
    say(f"tokenised {len(texts)} documents into {len(inputs.units)} windows of <= {window} tokens "
        f"({int(inputs.lengths.sum())} tokens) in {time.perf_counter() - t0:.1f}s")

    dev = resolve_device(device)
    encoder.to(dev)
    head.to(dev)
    drop = nn.Dropout(dropout)
    max_tokens = DEFAULT_MAX_TOKENS.get(dev.type, 8192)
    if dev.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16 if bf16 else torch.float16)
    else:
        import contextlib
        autocast = contextlib.nullcontext

    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    total = steps_per_epoch * epochs
    groups = _param_groups([encoder, head], weight_decay)
    try:    # the fused kernel (CPU and CUDA) is several times faster than the per-tensor loop
        opt = torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.AdamW(groups, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    params = [p for g in opt.param_groups for p in g["params"]]
    rng = np.random.default_rng(seed)
    z_t = torch.from_numpy(z.astype(np.float32)).to(dev)
    y_held = y[held_idx]

    curve: list[tuple[int, Optional[float]]] = []
    best: dict[str, Any] = {"spearman": None, "step": 0, "pred": None, "encoder": None, "head": None}

    def evaluate(step: int, loss: float) -> None:
        pred = _predict_z(encoder, head, inputs, held_idx, dev, autocast, max_tokens) * std + mean
        sp = _spearman(pred, y_held)
        curve.append((step, sp if math.isfinite(sp) else None))
        improved = best["encoder"] is None or (math.isfinite(sp) and (best["spearman"] is None
                                                                      or sp > best["spearman"]))
        if improved:
            best.update(spearman=sp if math.isfinite(sp) else None, step=step, pred=pred,
                        encoder=_state_copy(encoder), head=_state_copy(head))
        say(f"step {step}/{total} train loss {loss:.4f} held-out spearman {sp:.4f}"
            + (" (best)" if improved else ""))

    step = 0
    last_eval = -1
    for epoch in range(epochs):
        order = rng.permutation(train_idx)
        run_loss, run_n = 0.0, 0
        for b in range(steps_per_epoch):
            docs = order[b * batch_size:(b + 1) * batch_size]
            encoder.train(True)
            head.train(True)
            drop.train(True)
            unit_idx, local = inputs.of(docs)
            sums, counts = _pooled_sums(encoder, inputs, unit_idx, dev, autocast, max_tokens)
            local_t = torch.from_numpy(local).to(dev)
            acc = torch.zeros((len(docs), sums.shape[1]), dtype=torch.float32, device=dev).index_add(0, local_t, sums)
            cnt = torch.zeros(len(docs), dtype=torch.float32, device=dev).index_add(0, local_t, counts)
            pooled = acc / cnt.clamp_min(1e-12).unsqueeze(1)
            pred = head(drop(pooled))[:, 0]
            loss = torch.nn.functional.mse_loss(pred, z_t[torch.from_numpy(docs).to(dev)])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            run_loss += float(loss.detach()) * len(docs)
            run_n += len(docs)
            if step % eval_every == 0:
                evaluate(step, run_loss / max(run_n, 1))
                last_eval = step
        if last_eval != step:
            evaluate(step, run_loss / max(run_n, 1))
            last_eval = step
        say(f"epoch {epoch + 1}/{epochs} done, mean train loss {run_loss / max(run_n, 1):.4f}")

    # ---- best state, head with the normalisation folded in, saved
    encoder.load_state_dict(best["encoder"])
    head.load_state_dict(best["head"])
    encoder.to("cpu").train(False)
    head.to("cpu").train(False)
    lin = head.layers[-1]
    with torch.no_grad():
        lin.weight.mul_(std)
        lin.bias.mul_(std).add_(mean)
    os.makedirs(output_dir, exist_ok=True)
    encoder.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    extra = {"format": FORMAT, "target_mean": mean, "target_std": std,
             "output": "predicted target value (z-normalisation folded into the head)",
             "truncation": "windows", "max_doc_tokens": int(max_doc_tokens)}
    save_encoder_head(output_dir, head, encoder=".", max_length=window, extra=extra)
    card: dict[str, Any] = {
        "format": FORMAT, "encoder": enc_dir, "target_mean": mean, "target_std": std,
        "n_train": int(len(train_idx)), "n_heldout": int(len(held_idx)), "heldout_fraction": float(heldout_fraction),
        "best_spearman": best["spearman"], "best_step": int(best["step"]), "steps": int(step),
        "epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size), "weight_decay": float(weight_decay),
        "dropout": float(dropout), "window": window, "max_doc_tokens": int(max_doc_tokens),
        "eval_every": int(eval_every), "seed": int(seed), "device": str(dev),
        "seconds": round(time.perf_counter() - t_start, 3),
        "spearman_curve": [[int(s), v] for s, v in curve],
    }
    tmp = os.path.join(output_dir, CARD_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(card, f, indent=2)
    os.replace(tmp, os.path.join(output_dir, CARD_FILE))
    say(f"best held-out spearman {best['spearman']} at step {best['step']}; saved to {output_dir}")
    return {**card, "heldout_index": held_idx.copy(), "heldout_predictions": np.asarray(best["pred"])}


__all__ = ["fit_influence_model", "heldout_split", "FORMAT", "CARD_FILE", "CARD_KEYS"]
