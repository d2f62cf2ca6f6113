"""Every column name thresher writes, and its Arrow type.

These are the engine's own columns. A stage's score columns are declared on the
stage class (``Stage.columns``), so the output schema of any pipeline is known
before a row is processed.
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
