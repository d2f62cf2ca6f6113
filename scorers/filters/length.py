"""``length``: character / word / line counts and a length filter."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.scorers.base import (
    Column,
    LocalStage,
    Param,
    StageOutput,
    between,
)
from thresher.scorers.registry import register

LENGTH_CHARS = "length_chars"
LENGTH_WORDS = "length_words"
LENGTH_LINES = "length_lines"


@register
class Length(LocalStage):
    """Counts characters, words (whitespace-separated) and lines; rejects outside bounds."""

    name = "length"
    doc = "Character/word/line counts; optional min/max character bounds."
    cpu_ns_per_byte = 3
    params = {
        "min_chars": Param(int, 0, "reject documents with fewer characters", between(0)),
        "max_chars": Param(int, None, "reject documents with more characters", between(1), nullable=True),
    }
    reasons = {"too_short": "fewer characters than `min_chars`", "too_long": "more characters than `max_chars`"}
    columns = (
        Column(LENGTH_CHARS, pa.int64(), "characters (Unicode code points)"),
        Column(LENGTH_WORDS, pa.int64(), "whitespace-separated words"),
        Column(LENGTH_LINES, pa.int64(), "lines (newlines + 1)"),
    )

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
            columns={LENGTH_CHARS: chars, LENGTH_WORDS: words, LENGTH_LINES: lines},
            reasons=pa.array(reasons, pa.string()),
        )
