"""Torch implementation of the MinHash shingle + signature arithmetic.

It computes, bit for bit, what ``scorers/minhash.py`` computes with numpy: n-gram
hashes from token hashes and the multiply-add-shift minima. Tokenising and
token hashing stay on the CPU (they are Arrow string kernels); only the
O(shingles x num_perm) part moves to the device.

uint64 arithmetic in torch int64: two's-complement addition and multiplication
wrap mod 2^64 exactly like numpy's uint64, and XOR is bitwise, so only two
operations need care: the logical right shift (torch's ``>>`` on int64 is
arithmetic, so the sign-extended high bits are masked off) and ordering (signed
order differs from unsigned, so the minimum is taken after ``>> 32``, on values
in [0, 2^32), where both orders agree). The torch path runs on any device;
tests run it on the CPU to check equality without a GPU.
"""
from __future__ import annotations

import numpy as np
import torch

from thresher.scorers.dedup import lsh as M

_MASK32 = 0xFFFFFFFF


def _s64(c: int) -> int:
    """A uint64 constant as the int64 with the same bits."""
    c &= (1 << 64) - 1
    return c - (1 << 64) if c >= (1 << 63) else c


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (x >> k) & ((1 << (64 - k)) - 1)


_C1 = _s64(M.FMIX_C1)
_C2 = _s64(M.FMIX_C2)


def fmix64(x: torch.Tensor) -> torch.Tensor:
    x = x ^ _srl(x, 33)
    x = x * _C1
    x = x ^ _srl(x, 33)
    x = x * _C2
    return x ^ _srl(x, 33)


def to_torch_u64(a: np.ndarray, device) -> torch.Tensor:
    """uint64 numpy array → int64 tensor with the same bits."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint64).view(np.int64)).to(device)


def shingle_hashes(tok: torch.Tensor, doc_off: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch version of :func:`thresher.scorers.dedup.lsh.shingle_hashes` (same conventions)."""
    dev = tok.device
    lens = doc_off[1:] - doc_off[:-1]
    counts = torch.where(lens >= n, lens - n + 1, torch.clamp(lens, max=1))
    sh_off = torch.zeros(len(lens) + 1, dtype=torch.int64, device=dev)
    sh_off[1:] = torch.cumsum(counts, 0)
    T = tok.numel()
    mul = to_torch_u64(M._NGRAM_MUL[:n], dev)
    acc = torch.zeros(T, dtype=torch.int64, device=dev)
    for k in range(min(n, T)):
        acc[: T - k] += tok[k:] * mul[k]
    S = int(sh_off[-1])
    rep_first = torch.repeat_interleave(sh_off[:-1], counts, output_size=S)
    rep_start = torch.repeat_interleave(doc_off[:-1], counts, output_size=S)
    pos = torch.arange(S, dtype=torch.int64, device=dev) - rep_first + rep_start
    sh = acc[pos]
    short = torch.nonzero((lens > 0) & (lens < n)).flatten()
    if short.numel():
        s_acc = torch.zeros(short.numel(), dtype=torch.int64, device=dev)
        st = doc_off[short]
        ls = lens[short]
        for k in range(n - 1):
            m = ls > k
            idx = torch.where(m, st + k, torch.zeros_like(st))
            s_acc += torch.where(m, tok[idx] * mul[k], torch.zeros_like(s_acc))
        sh[sh_off[:-1][short]] = s_acc
    return fmix64(sh), sh_off


def signatures_from_shingles(sh: torch.Tensor, sh_off: torch.Tensor, a: torch.Tensor,
                             b: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """int64 tensor [N, P] of signature values (in [0, 2^32)); empty docs 0xFFFFFFFF."""
    dev = sh.device
    N = sh_off.numel() - 1
    P = a.numel()
    out = torch.full((N, P), _MASK32, dtype=torch.int64, device=dev)
    S = sh.numel()
    if S == 0:
        return out
    counts = sh_off[1:] - sh_off[:-1]
    doc = torch.repeat_interleave(torch.arange(N, device=dev), counts, output_size=S)
    if chunk is None:
        chunk = (1 << 18) if dev.type == "cuda" else (1 << 14)
    for s in range(0, S, chunk):
        x = sh[s:s + chunk, None]
        v = x * a[None, :] + b[None, :]
        h = _srl(v, 32)
        idx = doc[s:s + chunk, None].expand(-1, P)
        out.scatter_reduce_(0, idx, h, reduce="amin", include_self=True)
    return out


def signatures_from_tokens(tok: np.ndarray, doc_off: np.ndarray, n: int, a: np.ndarray,
                           b: np.ndarray, device: str = "cuda") -> tuple[np.ndarray, np.ndarray]:
    """(uint32[N, P] signatures, int64[N] shingle counts) computed with torch on
    ``device`` ("cuda", "cuda:1", … or "torch-cpu"/"cpu" for the CPU)."""
    dev = torch.device("cpu" if device in ("torch-cpu", "cpu") else device)
    t_tok = to_torch_u64(tok, dev)
    t_off = torch.from_numpy(np.asarray(doc_off, dtype=np.int64)).to(dev)
    sh, sh_off = shingle_hashes(t_tok, t_off, n)
    sig = signatures_from_shingles(sh, sh_off, to_torch_u64(a, dev), to_torch_u64(b, dev))
    counts = (sh_off[1:] - sh_off[:-1]).cpu().numpy()
    return sig.to(torch.int64).cpu().numpy().astype(np.uint32), counts
