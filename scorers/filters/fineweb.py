"""``fineweb``: the FineWeb quality rules."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.scorers.base import (
    Column,
    Param,
    StageOutput,
    between,
)
from thresher.scorers.filters.rules import (
    SKIPPED_DOC,
    _float_col,
    _frac_param,
    _gt,
    _lt,
    _ratio,
    _ratio_param,
    _RuleStage,
    _text_len,
)
from thresher.scorers.registry import register
from thresher.scorers.text import ops as T

# ----------------------------------------------------------------------------------------
# fineweb
# ----------------------------------------------------------------------------------------


@register
class FineWeb(_RuleStage):
    """FineWeb quality rules (Penedo et al. 2024), reference defaults.

    Lines are the pieces of the text between ``\\n``, without the blank ones.

    * ``empty``: the document has no non-blank line.
    * ``line_punct_ratio``: fraction of lines whose last character is a sentence
      terminator (Unicode Sentence_Terminal, or ``stop_chars``); reject below
      ``min_line_punct_ratio`` (unless it is 0 and ``line_punct_exclude_zero``).
    * ``short_line_ratio``: fraction of lines of at most ``short_line_length``
      characters; reject above ``max_short_line_ratio``.
    * ``char_dup_ratio``: characters in duplicate lines (lines equal to an earlier line)
      over the characters of the text without ``\\n``; reject above ``max_char_dup_ratio``.
    * ``newline_ratio``: ``\\n`` per word; reject above ``max_newline_ratio``.
    """

    name = "fineweb"
    doc = "FineWeb quality heuristics (line punctuation, short lines, duplicate lines, lists)."
    RULES = ("empty", "line_punct_ratio", "short_line_ratio", "char_dup_ratio", "newline_ratio")
    reasons = RULES
    default_order = 60
    cpu_ns_per_byte = 95  # benchmarks/results (filters.txt, langid.txt, dedup_100k.json)
    columns = (
        Column("fineweb_line_punct_ratio", pa.float64(), "fraction of lines ending in terminal punctuation"),
        Column("fineweb_short_line_ratio", pa.float64(), "fraction of short lines"),
        Column("fineweb_char_dup_ratio", pa.float64(), "character fraction in duplicate lines"),
        Column("fineweb_newline_ratio", pa.float64(), "newlines per word"),
        Column("fineweb_skipped", pa.string(), SKIPPED_DOC),
    )
    params = {
        "min_line_punct_ratio": _frac_param(0.12, "minimum fraction of lines ending in terminal punctuation"),
        "line_punct_exclude_zero": Param(bool, False, "do not reject documents where no line ends in punctuation"),
        "stop_chars": Param(list, None, "line endings that count as terminal punctuation "
                            "(default: Unicode sentence terminators)", nullable=True,
                            check=lambda v: None if v and all(isinstance(s, str) and s for s in v)
                            else "must be a non-empty list of non-empty strings"),
        "max_short_line_ratio": _frac_param(0.67, "maximum fraction of short lines"),
        "short_line_length": Param(int, 30, "a line of at most this many characters is short",
                                   check=between(0)),
        "max_char_dup_ratio": _frac_param(0.01, "maximum character fraction in duplicate lines"),
        "max_newline_ratio": _ratio_param(0.3, "maximum newlines per word"),
    }

    def process(self, text: pa.Array, batch: pa.Table) -> StageOutput:
        cfg = self.config
        text = T.as_string(text)
        n = len(text)
        raw = pc.split_pattern(text, "\n")
        flat, par, _ = T.list_parts(raw)
        blank = T.lengths(pc.utf8_trim_whitespace(flat)) == 0 if len(flat) else np.zeros(0, bool)
        keep = ~blank
        lines = flat.filter(pa.array(keep))
        lpar = par[keep]
        n_lines = np.bincount(lpar, minlength=n) if len(lpar) else np.zeros(n, np.int64)
        if cfg["stop_chars"] is None:
            end_re = "[" + T.STERM_CLASS + "]$"
        else:
            end_re = "(?:" + "|".join(T.regex_literal(s) for s in cfg["stop_chars"]) + ")$"
        ends = T.to_bool(pc.match_substring_regex(lines, end_re)) if len(lines) else np.zeros(0, bool)
        punct = _ratio(T.per_doc_count(ends, lpar, n), n_lines)
        short = _ratio(T.per_doc_count(T.lengths(lines) <= cfg["short_line_length"], lpar, n), n_lines)
        off = np.zeros(n + 1, np.int64)
        np.cumsum(n_lines, out=off[1:])
        _, _, dchars = T.duplicate_stats(pa.ListArray.from_arrays(pa.array(off, pa.int32()), lines))
        nl = T.count_literal(text, "\n")
        dup = _ratio(dchars, _text_len(text) - nl)
        unseg = T.script_info(text).unsegmented_doc()
        words = T.tokenize(text)
        newline = _ratio(nl, words.counts)

        empty = n_lines == 0
        thr = cfg["min_line_punct_ratio"]
        punct_fail = _lt(punct, thr)
        if cfg["line_punct_exclude_zero"]:
            punct_fail &= ~(punct == 0)
        fails = {
            "empty": empty,
            "line_punct_ratio": punct_fail,
            "short_line_ratio": _gt(short, cfg["max_short_line_ratio"]),
            "char_dup_ratio": _gt(dup, cfg["max_char_dup_ratio"]),
            "newline_ratio": _gt(newline, cfg["max_newline_ratio"]) & ~unseg,
        }
        p = "fineweb_"
        cols = {
            p + "line_punct_ratio": _float_col(punct),
            p + "short_line_ratio": _float_col(short),
            p + "char_dup_ratio": _float_col(dup),
            p + "newline_ratio": _float_col(newline),
            p + "skipped": self._skipped({"newline_ratio": unseg}, n),
        }
        return StageOutput(columns=cols, reasons=self._reasons(fails, n))


