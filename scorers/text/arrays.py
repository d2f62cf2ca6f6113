"""Arrow array helpers shared by every scorer (one copy of each)."""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def as_array(arr: Any) -> pa.Array:
    """One contiguous Arrow array from an Array or ChunkedArray (anything else: ``pa.array``)."""
    if isinstance(arr, pa.ChunkedArray):
        return arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if isinstance(arr, pa.Array):
        return arr
    return pa.array(arr)


def as_string_array(text: Any, *, fill_null: bool = False, large_ok: bool = False) -> pa.Array:
    """A contiguous string array from an Arrow array, chunked array or a sequence of str.

    ``large_string`` / ``string_view`` are cast to ``string`` while the data fits 2 GiB
    (``large_ok``: keep ``large_string`` as it is); ``fill_null`` turns nulls into ''.
    A non-string array is a ``TypeError``."""
    if not isinstance(text, (pa.Array, pa.ChunkedArray)):
        text = pa.array(list(text), type=pa.string())
    text = as_array(text)
    t = text.type
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        if not (large_ok and pa.types.is_large_string(t)):
            text = text.cast(pa.string()) if text.nbytes < (1 << 31) - 1 else text.cast(pa.large_string())
    elif not pa.types.is_string(t):
        raise TypeError(f"expected a string array, got {t}")
    if fill_null and text.null_count:
        text = pc.fill_null(text, "")
    return text
