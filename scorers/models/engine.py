"""Token-budget batching engine for model scorers (framework-free: no Beam).

The engine knows nothing about text or tasks. A task hands it the token
length of every *unit* (a document, or one window of a long document) and a
``step`` function that runs one batch of units on the model. The engine

* sorts units by length (longest first) and packs batches greedily so that
  ``batch_size × longest_in_batch <= max_tokens_per_batch`` (and
  ``batch_size <= max_batch_size``); a unit longer than the budget runs alone;
* runs each batch under ``torch.inference_mode`` and, on CUDA, bf16 autocast;
* on out-of-memory halves the batch and retries both halves, lowering the
  budget for the batches still to come; a unit is never dropped (if a single
  unit does not fit, the error is raised with its size);
* returns per-unit results in the caller's original order;
* keeps throughput counters (:class:`EngineStats`).

Out-of-memory can be simulated with ``oom_injector(batch_size, padded_tokens)``
returning True, or by a step function that raises ``torch.OutOfMemoryError``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

#: default ``max_tokens_per_batch`` by device type
DEFAULT_MAX_TOKENS = {"cpu": 16384, "cuda": 32768}
DEFAULT_MAX_BATCH_SIZE = 512

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


class DocumentTooLargeError(RuntimeError):
    """A single unit ran out of memory alone; it cannot be split further."""


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def resolve_device(device: Optional[str] = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``. ``cuda`` without a GPU is an error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return dev


def resolve_compute_dtype(dtype: Optional[str], device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on CUDA when supported (else fp16), fp32 elsewhere."""
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


@dataclasses.dataclass
class EngineStats:
    """Throughput counters; cumulative over every call of an engine."""

    docs: int = 0
    doc_tokens: int = 0          # document tokens after truncation, each counted once
    units: int = 0               # model inputs (a long document can be several windows)
    batches: int = 0
    processed_tokens: int = 0    # real tokens fed to the model (window overlap counted again)
    padded_tokens: int = 0       # sum over batches of batch_size × longest unit
    oom_events: int = 0
    tokenize_s: float = 0.0
    model_s: float = 0.0         # time inside step calls (on CUDA: launch + syncs, approximate)
    wall_s: float = 0.0          # whole task calls, tokenisation included

    @property
    def docs_per_s(self) -> float:
        return self.docs / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.doc_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def padding_waste(self) -> float:
        """Fraction of the padded batch area that was padding."""
        return 1.0 - self.processed_tokens / self.padded_tokens if self.padded_tokens else 0.0

    def add(self, other: EngineStats) -> EngineStats:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(docs_per_s=self.docs_per_s, tokens_per_s=self.tokens_per_s, padding_waste=self.padding_waste)
        return d


def pack_batches(lengths: Sequence[int], max_tokens: int, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 sort: bool = True) -> list[list[int]]:
    """Plan batches (lists of indices) under the padded-token budget.

    With ``sort`` the units go longest first; otherwise in input order (a
    static-order plan, as a plain loop would do). Every index appears once.
    """
    order = _order(lengths, sort)
    out: list[list[int]] = []
    pos = 0
    while pos < len(order):
        b, pos = _next_batch(order, pos, lengths, max_tokens, max_batch_size)
        out.append(b)
    return out


def _order(lengths: Sequence[int], sort: bool) -> list[int]:
    if not sort:
        return list(range(len(lengths)))
    # stable: equal lengths keep their input order
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist()


def _next_batch(order: list[int], pos: int, lengths: Sequence[int], budget: int,
                max_bs: int) -> tuple[list[int], int]:
    first = order[pos]
    batch = [first]
    longest = max(1, int(lengths[first]))
    j = pos + 1
    while j < len(order) and len(batch) < max_bs:
        m = max(longest, int(lengths[order[j]]))
        if (len(batch) + 1) * m > budget:
            break
        batch.append(order[j])
        longest = m
        j += 1
    return batch, j


class Engine:
    """Runs batches of units on a device with a token budget. See module docs."""

    def __init__(self, device: Optional[str] = "auto", dtype: Optional[str] = "auto",
                 max_tokens_per_batch: Optional[int] = None, max_batch_size: Optional[int] = None,
                 sort_by_length: bool = True, pad_to_multiple_of: Optional[int] = None,
                 cast_weights: Optional[bool] = None,
                 oom_injector: Optional[Callable[[int, int], bool]] = None):
        self.device = resolve_device(device)
        self.compute_dtype = resolve_compute_dtype(dtype, self.device)
        self.max_tokens_per_batch = int(max_tokens_per_batch or DEFAULT_MAX_TOKENS.get(self.device.type, 8192))
        self.max_batch_size = int(max_batch_size or DEFAULT_MAX_BATCH_SIZE)
        if self.max_tokens_per_batch < 1 or self.max_batch_size < 1:
            raise ValueError("max_tokens_per_batch and max_batch_size must be >= 1")
        self.sort_by_length = sort_by_length
        self.pad_to_multiple_of = pad_to_multiple_of
        # On CUDA with a half-precision compute dtype, the weights are cast once
        # (half the memory, no per-batch casts); autocast still guards the
        # ops it keeps in fp32. On CPU weights stay as loaded.
        self.cast_weights = (self.device.type == "cuda") if cast_weights is None else cast_weights
        self.oom_injector = oom_injector
        self.stats = EngineStats()
        self.budget = self.max_tokens_per_batch  # lowered after an out-of-memory

    # ------------------------------------------------------------------ setup
    def place(self, module: torch.nn.Module, keep_fp32: bool = False) -> torch.nn.Module:
        """Move a module to the engine's device (and dtype, see ``cast_weights``)."""
        module.to(self.device)
        if self.cast_weights and not keep_fp32 and self.compute_dtype != torch.float32:
            module.to(self.compute_dtype)
        module.train(False)
        return module

    def autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def padded_length(self, n: int) -> int:
        m = self.pad_to_multiple_of
        return n if not m else ((n + m - 1) // m) * m

    def as_tensor(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(array)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    # ------------------------------------------------------------------ run
    def run(self, lengths: Sequence[int], step: Callable[[list[int]], Any]) -> Any:
        """Run ``step`` over batches of unit indices; results in input order.

        ``step(indices)`` returns either a tensor / array whose first
        dimension is ``len(indices)`` (the engine concatenates them and
        returns one numpy array, synchronising the device once), or a list
        of ``len(indices)`` Python objects (the engine returns a list).
        """
        n = len(lengths)
        if n == 0:
            return []
        lengths = [self.padded_length(max(1, int(x))) for x in lengths]
        order = _order(lengths, self.sort_by_length)
        done: list[tuple[list[int], Any]] = []
        pos = 0
        while pos < n:
            batch, pos = _next_batch(order, pos, lengths, self.budget, self.max_batch_size)
            self._run_batch(batch, lengths, step, done)
        self.stats.units += n
        return _assemble(done, n)

    def _run_batch(self, idx: list[int], lengths: list[int], step, done: list) -> None:
        longest = max(lengths[i] for i in idx)
        padded = len(idx) * longest
        oom = False
        t0 = time.perf_counter()
        try:
            if self.oom_injector is not None and self.oom_injector(len(idx), padded):
                raise torch.OutOfMemoryError(f"injected out-of-memory at batch {len(idx)} × {longest}")
            with torch.inference_mode(), self.autocast():
                res = step(idx)
        except Exception as e:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_oom(e):
                raise
            oom = True
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not oom:
            self.stats.model_s += time.perf_counter() - t0
            self.stats.batches += 1
            self.stats.processed_tokens += sum(lengths[i] for i in idx)
            self.stats.padded_tokens += padded
            done.append((idx, res))
            return
        # out of the except block: the failed batch's tensors are released now
        self.stats.oom_events += 1
        self._free()
        if len(idx) == 1:
            raise DocumentTooLargeError(
                f"a single input of {longest} tokens runs out of memory on {self.device} ({msg}); "
                f"lower --max-length or use a bigger device")
        self.budget = max(1, min(self.budget, padded // 2))
        log.warning("out of memory at batch %d × %d tokens; retrying as two halves, budget now %d tokens",
                    len(idx), longest, self.budget)
        half = len(idx) // 2
        self._run_batch(idx[:half], lengths, step, done)
        self._run_batch(idx[half:], lengths, step, done)

    def _free(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _assemble(done: list[tuple[list[int], Any]], n: int) -> Any:
    if all(isinstance(r, (torch.Tensor, np.ndarray)) for _, r in done):
        parts = [r for _, r in done]
        if all(isinstance(p, torch.Tensor) for p in parts):
            # one device->host copy for the whole call
            flat = torch.cat([p.reshape(p.shape[0], -1) if p.dim() != 1 else p for p in parts]).cpu().numpy()
        else:
            flat = np.concatenate([np.asarray(p.cpu() if isinstance(p, torch.Tensor) else p) for p in parts])
        order = np.fromiter((i for idx, _ in done for i in idx), dtype=np.int64, count=n)
        out = np.empty_like(flat)
        out[order] = flat
        return out
    out_list: list[Any] = [None] * n
    for idx, r in done:
        if len(r) != len(idx):
            raise RuntimeError(f"step returned {len(r)} results for {len(idx)} inputs")
        for i, v in zip(idx, r):
            out_list[i] = v
    return out_list


__all__ = ["Engine", "EngineStats", "pack_batches", "resolve_device", "resolve_compute_dtype",
           "is_oom", "DocumentTooLargeError", "DEFAULT_MAX_TOKENS", "DEFAULT_MAX_BATCH_SIZE"]
