"""Batch text normalisation and stable hashing shared by the engine and dedup stages."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash


def normalize_text(text: pa.Array, *, nfkc: bool = True, casefold: bool = True,
                   collapse_whitespace: bool = True) -> pa.Array:
    """Vectorised normalisation: NFKC, lower-casing (Arrow's Unicode lower, plus
    the German sharp s folded to 'ss' as full case folding does), whitespace collapse."""
    out = text
    if nfkc:
        out = pc.utf8_normalize(out, form="NFKC")
    if casefold:
        out = pc.utf8_lower(out)
        out = pc.replace_substring(out, "ß", "ss")
        out = pc.replace_substring(out, "ς", "σ")
    if collapse_whitespace:
        out = pc.replace_substring_regex(out, r"\s+", " ")
        out = pc.utf8_trim_whitespace(out)
    return out


def xxh128_hex(text: pa.Array) -> pa.Array:
    """128-bit xxh3 of each string as 32 hex chars (no Arrow kernel exists for this)."""
    f = xxhash.xxh3_128_hexdigest
    return pa.array([f(s.encode("utf-8")) if s is not None else None for s in text.to_pylist()], pa.string())


def stable_id_hash(ids: pa.Array) -> np.ndarray:
    """xxh64 of each id's UTF-8 bytes, seed 0: a tie-breaker independent of row order."""
    f = xxhash.xxh64_intdigest
    vals = ids.cast(pa.string()).to_pylist()
    return np.fromiter((f(v.encode("utf-8")) if v is not None else 0 for v in vals),
                       dtype=np.uint64, count=len(vals))
