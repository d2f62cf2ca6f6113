"""Input document contract and output schemas.

Input: Parquet shards with a text column (string, large_string, binary or
large_binary; binary is decoded as UTF-8 row by row, invalid rows are rejected
with ``input.invalid_utf8``) and an optional id column (any type, cast to string).
Extra columns pass through untouched.
"""
from __future__ import annotations

from typing import Optional

import pyarrow as pa

from thresher.schemas import columns as C

TEXT_TYPES = (pa.string(), pa.large_string(), pa.binary(), pa.large_binary())


class InputError(ValueError):
    """Bad input data. The message names the file (and row or column) at fault."""


def check_input_schema(schema: pa.Schema, path: str, text_column: str, id_column: Optional[str]) -> None:
    names = schema.names
    if text_column not in names:
        raise InputError(
            f"{path}: text column {text_column!r} not found; columns are {names}. "
            f"Set input.text_column (or --text-column).")
    t = schema.field(text_column).type
    if t not in TEXT_TYPES and not pa.types.is_null(t):
        raise InputError(
            f"{path}: text column {text_column!r} has type {t}; expected string (or binary holding UTF-8)")
    if id_column is not None:
        if id_column not in names:
            raise InputError(
                f"{path}: id column {id_column!r} not found; columns are {names}. "
                f"Set input.id_column to an existing column, or to null to derive ids")
        it = schema.field(id_column).type
        if pa.types.is_nested(it):
            raise InputError(f"{path}: id column {id_column!r} has nested type {it}; expected a scalar")
    else:
        if C.ID in names:
            raise InputError(
                f"{path}: has a column {C.ID!r} but other shards do not; set input.id_column "
                f"explicitly or make the shards agree")
    for reserved in (C.REASON, C.DUPLICATE_OF):
        if reserved in names:
            raise InputError(f"{path}: input column {reserved!r} collides with a column thresher writes; rename it")
    for n in names:
        if n.startswith("__"):
            raise InputError(f"{path}: input column {n!r}: names starting with '__' are reserved")


def output_schema(input_schema: pa.Schema, text_column: str, id_column: Optional[str],
                  stage_fields: list[pa.Field], *, rejected: bool,
                  internal: bool = False) -> pa.Schema:
    """Schema of kept (rejected=False) or rejected files for a shard with ``input_schema``."""
    fields = []
    for f in input_schema:
        if f.name == text_column:
            large = f.type in (pa.large_string(), pa.large_binary())
            fields.append(pa.field(text_column, pa.large_string() if large else pa.string()))
        elif f.name == id_column:
            fields.append(pa.field(id_column, C.ID_TYPE))
        else:
            fields.append(f)
    if id_column is None:
        fields.append(pa.field(C.ID, C.ID_TYPE))
    fields.extend(stage_fields)
    if rejected or internal:
        fields.append(pa.field(C.REASON, C.REASON_TYPE))
        fields.append(pa.field(C.DUPLICATE_OF, C.ID_TYPE))
    if internal:
        fields.append(pa.field(C.ROW, pa.int64()))
        fields.append(pa.field(C.STAGE_IDX, pa.int16()))
        fields.append(pa.field(C.CHARS_IN, pa.int64()))
    return pa.schema(fields)
