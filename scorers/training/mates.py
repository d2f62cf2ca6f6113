"""MATES oracle data influence by local probing (framework-free: torch, no Beam).

Method (Yu et al., "MATES: Model-Aware Data Selection", arXiv 2406.06046), as the
authors' ``probe_oracle_data_influence.py`` does it: from the pretraining model's
checkpoint, with its AdamW moments and step count, take **one optimizer step on one
candidate document alone**, then measure the mean loss on a reference set; restore the
checkpoint state and go on with the next candidate. The post-step reference loss is the
oracle score (lower is better); the pre-step loss is constant per checkpoint, so ranking
by it equals ranking by the change.

What thresher does differently, on purpose:

* the checkpoint is loaded **once**; after each probe the parameters and the optimizer
  state are restored with in-place copies from snapshots kept on the same device (the
  authors reload the checkpoint from disk per probe). The restore is bitwise: a test
  checks a fixed batch's loss is identical before and after a round of probes;
* the reference set is tokenised once and evaluated in token-budget batches through the
  scoring engine (:class:`thresher.scorers.models.engine.Engine`), length-sorted, with
  the loss summed in float64: the mean over all scored reference tokens;
* the model stays in eval mode during the probe step (no dropout: a probe is a pure
  function of the checkpoint and the document; the authors' Pythia has no dropout either).

Checkpoint format (what :class:`thresher.scorers.training.pretrain.Pretrainer` writes and
what an HF ``Trainer`` checkpoint holds): a causal-LM directory (``config.json``,
safetensors weights, tokenizer) with ``optimizer.pt`` = ``torch.save(opt.state_dict())``
of a ``torch.optim.AdamW``, loaded with ``torch.load(weights_only=True)``. Its parameter
groups are matched to the model in one of two layouts, each checked against the saved
moments' shapes: (1) one group over ``model.parameters()`` in their order (thresher's
trainer); (2) HF ``Trainer``'s two groups, the parameters with weight decay then those
without (biases and norm weights), each in ``named_parameters()`` order. The learning
rate, betas and weight decay of a probe step are the saved groups' (the scheduled
learning rate at the checkpoint, as the authors probe), unless overridden. Without
``optimizer.pt`` a fresh AdamW is used (lr 1e-3, betas (0.9, 0.95), weight decay 0.1: the
authors' pretraining optimizer), and the output says so (``optimizer_state: false``).
Gradients are clipped to norm 1.0 (the authors' clip).
"""
from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

OPTIMIZER_FILE = "optimizer.pt"
#: AdamW of a probe when the checkpoint has no optimizer state (the authors' pretraining optimizer)
FRESH_ADAMW = {"lr": 1e-3, "betas": (0.9, 0.95), "weight_decay": 0.1, "eps": 1e-8}
CLIP_NORM = 1.0
#: default probe / reference context when the model allows it (the authors' 1,024-token sequences)
DEFAULT_CONTEXT = 1024
_NORM_NAME = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)|ln_f|ln_\d", re.I)


class ProbeError(ValueError):
    """The checkpoint, its optimizer state or the reference set cannot be used."""


# ----------------------------------------------------------------------------- optimizer state
def _hf_groups(model: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
    """HF Trainer's parameter groups: with weight decay (not a bias, not a norm layer's
    weight), then without; both in ``named_parameters()`` order."""
    norm_params = set()
    for mod in model.modules():
        if isinstance(mod, torch.nn.LayerNorm) or "norm" in type(mod).__name__.lower():
            for p in mod.parameters(recurse=False):
                norm_params.add(id(p))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in norm_params or _NORM_NAME.search(name):
            no_decay.append(p)
        else:
            decay.append(p)
    return [decay, no_decay]


def _matches(groups: list[list[torch.nn.Parameter]], state: dict) -> bool:
    saved = state.get("param_groups") or []
    if len(saved) != len(groups) or any(len(g["params"]) != len(ps) for g, ps in zip(saved, groups)):
        return False
    per = state.get("state") or {}
    for g, ps in zip(saved, groups):
        for idx, p in zip(g["params"], ps):
            s = per.get(idx)
            if s is not None and "exp_avg" in s and tuple(s["exp_avg"].shape) != tuple(p.shape):
                return False
    return True


def load_optimizer(model: torch.nn.Module, directory: str, *, lr: Optional[float] = None
                   ) -> tuple[torch.optim.AdamW, dict[str, Any]]:
    """An AdamW over ``model``'s parameters with the checkpoint's state when ``directory``
    holds ``optimizer.pt`` (see the module docs for the layouts), else fresh. ``lr``
    overrides the learning rate. Returns the optimizer and a description for the card."""
    path = os.path.join(directory, OPTIMIZER_FILE)
    params = [p for p in model.parameters() if p.requires_grad]
    if not os.path.isfile(path):
        opt = torch.optim.AdamW(params, **{**FRESH_ADAMW, **({"lr": lr} if lr is not None else {})})
        return opt, {"optimizer_state": False, "layout": "fresh", **_hyper(opt)}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - anything unreadable is the user's file
        raise ProbeError(f"{path}: cannot be read with torch.load(weights_only=True): "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(state, dict) or "param_groups" not in state or "state" not in state:
        raise ProbeError(f"{path}: not an optimizer state_dict (expected 'state' and 'param_groups')")
    layouts = [("single_group", [params])]
    try:    # HF's own rule when transformers has it (what the Trainer that saved the state used) ...
        from transformers import Trainer
        names = set(Trainer.get_decay_parameter_names(None, model))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        layouts.append(("hf_trainer_decay_groups", [[p for n, p in named if n in names],
                                                   [p for n, p in named if n not in names]]))
    except Exception:  # noqa: BLE001 - an older or newer transformers: the rules below still apply
        pass
    layouts.append(("hf_trainer_decay_groups", _hf_groups(model)))   # ... and the rule written out here
    # older transformers releases left norm weights of non-LayerNorm classes (RMSNorm) in the decay group
    legacy_no = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters(False)}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    layouts.append(("hf_trainer_decay_groups_legacy",
                    [[p for n, p in named if id(p) not in legacy_no and "bias" not in n],
                     [p for n, p in named if id(p) in legacy_no or "bias" in n]]))
    found = next(((n, g) for n, g in layouts if _matches(g, state)), None)
    if found is None:
        sizes = [len(g["params"]) for g in state["param_groups"]]
        raise ProbeError(f"{path}: its parameter groups {sizes} match neither one group over the model's "
                         f"{len(params)} parameters nor HF Trainer's decay/no-decay groups "
                         f"{[len(g) for g in layouts[-2][1]]}; was it saved for this model?")
    name, groups = found
    saved = state["param_groups"]
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": g.get("weight_decay", 0.0)}
                             for ps, g in zip(groups, saved)], lr=saved[0].get("lr", FRESH_ADAMW["lr"]))
    try:
        opt.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ProbeError(f"{path}: does not load into AdamW over this model: {e}") from None
    if lr is not None:
        for g in opt.param_groups:
            g["lr"] = lr
    steps = [float(s["step"]) for s in opt.state.values() if "step" in s]
    return opt, {"optimizer_state": True, "layout": name, "step": int(max(steps)) if steps else 0, **_hyper(opt)}


def _hyper(opt: torch.optim.Optimizer) -> dict[str, Any]:
    g = opt.param_groups
    return {"lr": float(g[0]["lr"]), "betas": list(g[0]["betas"]),
            "weight_decay": sorted({float(x["weight_decay"]) for x in g}), "eps": float(g[0]["eps"])}


# ----------------------------------------------------------------------------- reference set
@dataclass
class ReferenceSet:
    """Tokenised reference examples: each is (token ids, index of the first scored token)."""

    units: list[tuple[list[int], int]]
    kind: str                      # "text" (every token) or "prompt_continuation"
    examples: int
    scored_tokens: int
    truncated: int = 0
    dropped: int = 0               # rows without a usable example (null, empty, nothing to score)


def reference_set(table, tokenizer, max_length: int) -> ReferenceSet:
    """``table`` (pyarrow) with a ``text`` column (loss on every token after BOS) or
    ``prompt`` and ``continuation`` columns (loss on the continuation's tokens only; the two
    are tokenised separately and concatenated, so the continuation carries its own leading
    space, e.g. ``" dog"``). Texts are cut to ``max_length`` tokens at the head; a
    prompt/continuation pair keeps its end (the continuation) and loses prompt tokens."""
    cols = set(table.column_names)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pre = [bos] if bos is not None else []
    units: list[tuple[list[int], int]] = []
    truncated = 0
    n_rows = table.num_rows
    if {"prompt", "continuation"} <= cols:
        kind = "prompt_continuation"
        prompts = table["prompt"].to_pylist()
        conts = table["continuation"].to_pylist()
        ok = [i for i in range(len(prompts)) if isinstance(prompts[i], str) and isinstance(conts[i], str)
              and conts[i]]
        p_ids = tokenizer([prompts[i] for i in ok], add_special_tokens=False, verbose=False)["input_ids"] if ok else []
        c_ids = tokenizer([conts[i] for i in ok], add_special_tokens=False, verbose=False)["input_ids"] if ok else []
        for p, c in zip(p_ids, c_ids):
            if not c:
                continue
            seq = pre + p + c
            if len(seq) > max_length:
                truncated += 1
                if len(c) + 1 > max_length:
                    c = c[: max_length - 1]
                    seq = (pre + c) if pre else c
                    if not pre:
                        continue
                else:
                    seq = seq[len(seq) - max_length:]
            # the first token is never scored (nothing predicts it): without BOS an empty prompt
            # gives up the continuation's first token
            units.append((seq, max(1, len(seq) - len(c))))
    elif "text" in cols:
        kind = "text"
        texts = [t for t in table["text"].to_pylist() if isinstance(t, str) and t]
        ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
        for s in ids:
            seq = pre + s
            if len(seq) > max_length:
                truncated += 1
                seq = seq[:max_length]
            if len(seq) >= 2:
                units.append((seq, 1))
    else:
        raise ProbeError(f"the reference set needs a 'text' column or 'prompt' and 'continuation' columns; "
                         f"it has {sorted(cols)}")
    units = [(sq, f) for sq, f in units if len(sq) - f >= 1]
    if not units:
        raise ProbeError("the reference set has no usable example (empty texts or continuations)")
    scored = sum(len(sq) - f for sq, f in units)
    return ReferenceSet(units, kind, len(units), scored, truncated, n_rows - len(units))


# ----------------------------------------------------------------------------- reference loss
class ReferenceEvaluator:
    """Mean NLL (nats) of ``model`` over every scored token of a :class:`ReferenceSet`,
    in the engine's token-budget batches (length-sorted), float64-accumulated. The batch
    step is the ``causal_lm_loss`` task's (one copy of the masked-loss code, and its fast
    path: the output layer runs on the scored positions only)."""

    def __init__(self, model: torch.nn.Module, tokenizer, reference: ReferenceSet, engine):
        from thresher.scorers.models.loading import LoadedModel
        from thresher.scorers.models.tasks import CausalLMLoss
        self.model = model
        self.ref = reference
        self.engine = engine
        longest = max(len(s) for s, _ in reference.units)
        self._task = CausalLMLoss(LoadedModel.wrap(model, tokenizer), engine=engine, max_length=max(2, longest))
        self._units = [(0, s, first) for s, first in reference.units]
        self._lengths = [len(s) for s, _ in reference.units]

    def __call__(self) -> float:
        units = self._units
        was_training = self.model.training
        self.model.train(False)
        out = self.engine.run(self._lengths, lambda idx: self._task._step([units[i] for i in idx]))
        self.model.train(was_training)
        sums = np.asarray(out, dtype=np.float64).reshape(-1)
        return float(sums.sum() / self.ref.scored_tokens)


# ----------------------------------------------------------------------------- prober
@dataclass
class ProbeResult:
    ref_loss: np.ndarray            # reference loss after the step, per probed document
    tokens: np.ndarray              # training tokens of each probe (after truncation)
    base_loss: float                # reference loss of the checkpoint itself
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class Prober:
    """One checkpoint, loaded once; :meth:`probe` runs the one-step probes.

    ``model`` is a causal LM (``nn.Module``) with its ``tokenizer``; ``optimizer`` an AdamW
    over its parameters (:func:`load_optimizer`). ``engine`` evaluates the reference set
    (its device is where everything runs; weights stay fp32 for the optimizer step, the
    forward passes run under the engine's autocast)."""

    def __init__(self, model: torch.nn.Module, tokenizer, optimizer: torch.optim.AdamW, reference: ReferenceSet,
                 engine, *, max_length: int, clip_norm: float = CLIP_NORM):
        self.model = model
        self.tok = tokenizer
        self.opt = optimizer
        self.engine = engine
        self.max_length = int(max_length)
        self.clip_norm = clip_norm
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.pre = [bos] if bos is not None else []
        model.to(engine.device)
        _move_optimizer_state(optimizer, engine.device)
        model.train(False)
        self.reference_loss = ReferenceEvaluator(model, tokenizer, reference, engine)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        with torch.no_grad():
            self._p_snap = [p.detach().clone() for p in self.params]
        self._had_state = bool(optimizer.state)
        self._s_snap = {id(p): {k: (v.detach().clone() if torch.is_tensor(v) else v)
                                for k, v in optimizer.state[p].items()} for p in self.params if p in optimizer.state}

    # -------------------------------------------------------------- probe
    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        ids = self.tok(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [(self.pre + s)[: self.max_length] for s in ids]

    def step_on(self, seq: list[int]) -> None:
        """One optimizer step on one tokenised document (batch 1), clipped."""
        self.opt.zero_grad(set_to_none=True)          # nothing left by a caller leaks into the step
        x = torch.tensor([seq], dtype=torch.long, device=self.engine.device)
        with self.engine.autocast():
            loss = self.model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def restore(self) -> None:
        """Parameters and optimizer state back to the checkpoint's, bitwise, in place."""
        for p, s in zip(self.params, self._p_snap):
            p.copy_(s)
        if not self._had_state:
            self.opt.state.clear()
            return
        for p in self.params:
            snap = self._s_snap.get(id(p))
            cur = self.opt.state.get(p)
            if snap is None:
                self.opt.state.pop(p, None)
                continue
            for k, v in snap.items():
                if torch.is_tensor(v) and cur is not None and torch.is_tensor(cur.get(k)):
                    cur[k].copy_(v)
                else:
                    self.opt.state[p][k] = v.clone() if torch.is_tensor(v) else v

    def probe(self, texts: Sequence[str], log: Optional[Callable[[str], None]] = None) -> ProbeResult:
        """Post-step reference loss for every text (order kept). Empty texts get NaN."""
        t0 = time.perf_counter()
        base = self.reference_loss()
        seqs = self.encode(texts)
        out = np.full(len(seqs), np.nan, dtype=np.float64)
        toks = np.zeros(len(seqs), dtype=np.int64)
        last = time.perf_counter()
        for i, seq in enumerate(seqs):
            if len(seq) < 2:
                continue
            self.step_on(seq)
            out[i] = self.reference_loss()
            toks[i] = len(seq) - 1
            self.restore()
            if log is not None and time.perf_counter() - last > 10:
                last = time.perf_counter()
                done = i + 1
                log(f"probed {done:,} of {len(seqs):,} ({(last - t0) / done:.3f} s per probe)")
        secs = time.perf_counter() - t0
        n = int(np.isfinite(out).sum())
        return ProbeResult(out, toks, base, secs, {"probes": n, "seconds_per_probe": secs / max(n, 1)})


def _move_optimizer_state(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """Moments onto ``device``; ``step`` stays on the CPU unless the group is fused or
    capturable, whose kernels need it beside the parameters (torch's own rule)."""
    for g in opt.param_groups:
        on_device = bool(g.get("fused") or g.get("capturable"))
        for p in g["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            for k, v in list(st.items()):
                if torch.is_tensor(v) and (k != "step" or on_device):
                    st[k] = v.to(device)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (NaN when either side is constant or too short)."""
    from scipy.stats import spearmanr
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(spearmanr(a[ok], b[ok]).statistic)


__all__ = ["OPTIMIZER_FILE", "FRESH_ADAMW", "ProbeError", "load_optimizer", "ReferenceSet", "reference_set",
           "ReferenceEvaluator", "Prober", "ProbeResult", "spearman"]
