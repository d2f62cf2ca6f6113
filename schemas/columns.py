"""Every column name thresher writes, and its Arrow type.

Other modules import names from here instead of spelling strings. Stage score
columns are registered per stage in ``STAGE_FIELDS`` (see ``register_fields``),
so the output schema of any pipeline is known before a row is processed.
"""
from __future__ import annotations

import pyarrow as pa

# --- document identity and routing -------------------------------------------------
ID = "id"                      # derived id column name when the input has none
REASON = "reason"              # rejected rows: "<stage>.<rule>"
DUPLICATE_OF = "duplicate_of"  # rejected duplicates: id of the surviving document
ORIGINAL_TEXT = "original_text"  # optional copy of the input text when a stage rewrites it

# Internal columns: present in work files and key tables, never in kept/rejected.
SHARD = "__shard"   # int32 index of the input shard in the sorted shard list
ROW = "__row"       # int64 row index inside the shard
STAGE_IDX = "__stage"  # int16 index (in config order) of the stage that rejected the row
CHARS_IN = "__chars_in"  # int64 characters of the input text (before any rewrite)
INTERNAL = (SHARD, ROW, STAGE_IDX, CHARS_IN)

# Reasons the engine itself assigns (stage name "input").
INPUT_STAGE = "input"
R_NULL_TEXT = "input.null_text"
R_EMPTY_TEXT = "input.empty_text"
R_INVALID_UTF8 = "input.invalid_utf8"
R_TOO_LARGE = "input.too_large"

REASON_TYPE = pa.string()
ID_TYPE = pa.string()

# --- stage score columns --------------------------------------------------------------
# stage name -> ordered list of fields the stage adds to every row it sees.
STAGE_FIELDS: dict[str, list[pa.Field]] = {}


def register_fields(stage: str, fields: list[pa.Field]) -> list[pa.Field]:
    """Declare the columns a stage writes. Names must be globally unique."""
    taken = {f.name: s for s, fs in STAGE_FIELDS.items() if s != stage for f in fs}
    for f in fields:
        if f.name in taken:
            raise ValueError(f"column {f.name!r} of stage {stage!r} is already written by {taken[f.name]!r}")
        if f.name in (REASON, DUPLICATE_OF) or f.name.startswith("__"):
            raise ValueError(f"column {f.name!r} is reserved")
    STAGE_FIELDS[stage] = list(fields)
    return STAGE_FIELDS[stage]


# Trivial scoring stage used by the engine benchmark and as a length filter.
LENGTH_CHARS = "length_chars"
LENGTH_WORDS = "length_words"
LENGTH_LINES = "length_lines"
register_fields("length", [
    pa.field(LENGTH_CHARS, pa.int64()),
    pa.field(LENGTH_WORDS, pa.int64()),
    pa.field(LENGTH_LINES, pa.int64()),
])

# exact_dedup annotations
EXACT_HASH = "exact_hash"
register_fields("exact_dedup", [pa.field(EXACT_HASH, pa.string())])
