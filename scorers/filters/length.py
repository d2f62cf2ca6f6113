"""``length``: character / word / line counts and a length filter."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from thresher.schemas import columns as C
from thresher.scorers.base import (
    LocalStage,
    Param,
    StageOutput,
    between,
)


class Length(LocalStage):
    """Counts characters, words (whitespace-separated) and lines; rejects outside bounds."""

    name = "length"
    doc = "Character/word/line counts; optional min/max character bounds."
    params = {
        "min_chars": Param(int, 0, "reject documents with fewer characters", between(0)),
        "max_chars": Param(int, None, "reject documents with more characters", between(1), nullable=True),
    }
    reasons = ("length.too_short", "length.too_long")

    def process(self, text: pa.Array, batch: pa.Table) -> StageOutput:
        chars = pc.utf8_length(text).cast(pa.int64())
        words = pc.list_value_length(pc.utf8_split_whitespace(text)).cast(pa.int64())
        lines = pc.add(pc.count_substring(text, "\n").cast(pa.int64()), 1)
        cn = chars.to_numpy(zero_copy_only=False)
        reasons = np.full(len(text), None, dtype=object)
        reasons[cn < self.config["min_chars"]] = self.reason("too_short")
        if self.config["max_chars"] is not None:
            reasons[cn > self.config["max_chars"]] = self.reason("too_long")
        return StageOutput(
            columns={C.LENGTH_CHARS: chars, C.LENGTH_WORDS: words, C.LENGTH_LINES: lines},
            reasons=pa.array(reasons, pa.string()),
        )
