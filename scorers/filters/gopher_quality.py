"""``gopher_quality``: the Gopher quality rules."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.scorers.base import (
    Column,
    Param,
    ParamError,
    StageOutput,
)
from thresher.scorers.filters.rules import (
    SKIPPED_DOC,
    _doc_languages,
    _float_col,
    _frac_param,
    _gt,
    _int_col,
    _lt,
    _positive_or_none,
    _ratio,
    _ratio_param,
    _RuleStage,
    _stop_word_counts,
)
from thresher.scorers.registry import register
from thresher.scorers.text import ops as T

# ----------------------------------------------------------------------------------------
# gopher_quality
# ----------------------------------------------------------------------------------------


@register
class GopherQuality(_RuleStage):
    """Gopher quality rules (Rae et al. 2021, appendix A), reference defaults.

    Words are the output of :func:`thresher.scorers.text.ops.tokenize`, punctuation words included.
    A *symbol word* consists only of Unicode punctuation, symbols and control characters
    (the reference uses a fixed list of mostly ASCII punctuation, so there ``°``, ``€``,
    ``•`` or an emoji count as words; here they do not).

    * ``word_count``: words that are not symbol words; reject below ``min_words`` or above
      ``max_words``.
    * ``mean_word_length``: mean length (characters) of those words, leaving out single
      Han/kana characters (words of their own whose length says nothing); reject outside
      [``min_mean_word_length``, ``max_mean_word_length``].
    * ``hash_ratio``: ``#`` characters per word (all words); reject above ``max_hash_ratio``.
    * ``ellipsis_ratio``: ``...`` (counted without overlap) and ``…`` per word; reject above
      ``max_ellipsis_ratio``.
    * ``bullet_lines``: fraction of lines (``str.splitlines``) starting, after leading
      whitespace, with ``•`` or ``-``; reject above ``max_bullet_lines``.
    * ``ellipsis_lines``: fraction of lines ending, before trailing whitespace, with ``...``
      or ``…``; reject above ``max_ellipsis_lines``.
    * ``alpha_words``: fraction of words (all words) containing a letter; reject below
      ``min_alpha_words``.
    * ``stop_words``: number of *distinct* stop words of the document's language present
      (case-sensitive); reject below ``min_stop_words``.
    """

    name = "gopher_quality"
    doc = "Gopher quality heuristics (word count, word length, symbols, bullets, stop words)."
    RULES = ("word_count", "mean_word_length", "hash_ratio", "ellipsis_ratio", "bullet_lines",
             "ellipsis_lines", "alpha_words", "stop_words")
    reasons = RULES
    default_order = 40
    cpu_ns_per_byte = 120  # benchmarks/results (filters.txt, langid.txt, dedup_100k.json)
    columns = (
        Column("gopher_quality_word_count", pa.int64(), "words that are not only punctuation/symbols"),
        Column("gopher_quality_mean_word_length", pa.float64(), "mean characters of those words"),
        Column("gopher_quality_hash_ratio", pa.float64(), "'#' per word"),
        Column("gopher_quality_ellipsis_ratio", pa.float64(), "'...'/'…' per word"),
        Column("gopher_quality_bullet_lines", pa.float64(), "fraction of lines starting with a bullet"),
        Column("gopher_quality_ellipsis_lines", pa.float64(), "fraction of lines ending with an ellipsis"),
        Column("gopher_quality_alpha_words", pa.float64(), "fraction of words with a letter"),
        Column("gopher_quality_stop_words", pa.int64(), "distinct stop words present"),
        Column("gopher_quality_skipped", pa.string(), SKIPPED_DOC),
    )
    params = {
        "min_words": Param(int, 50, "minimum number of non-symbol words", check=_positive_or_none,
                           nullable=True),
        "max_words": Param(int, 100_000, "maximum number of non-symbol words",
                           check=_positive_or_none, nullable=True),
        "min_mean_word_length": _ratio_param(3.0, "minimum mean word length (characters)"),
        "max_mean_word_length": _ratio_param(10.0, "maximum mean word length (characters)"),
        "max_hash_ratio": _ratio_param(0.1, "maximum '#' per word"),
        "max_ellipsis_ratio": _ratio_param(0.1, "maximum ellipses per word"),
        "max_bullet_lines": _frac_param(0.9, "maximum fraction of lines starting with a bullet"),
        "max_ellipsis_lines": _frac_param(0.3, "maximum fraction of lines ending with an ellipsis"),
        "min_alpha_words": _frac_param(0.8, "minimum fraction of words that contain a letter"),
        "min_stop_words": Param(int, 2, "minimum number of distinct stop words",
                                check=_positive_or_none, nullable=True),
        "stop_words": Param(list, None, "stop words for every language (default: per-language lists)",
                            nullable=True,
                            check=lambda v: None if all(isinstance(w, str) and w for w in v)
                            else "must be a list of non-empty strings"),
        "language_column": Param(str, "language", "column with each row's language code "
                                 "(absent column: English)"),
    }

    @classmethod
    def check_params(cls, p: dict[str, Any], prefix: str) -> None:
        for lo, hi in (("min_words", "max_words"), ("min_mean_word_length", "max_mean_word_length")):
            if p[lo] is not None and p[hi] is not None and p[lo] > p[hi]:
                raise ParamError(prefix + lo, f"must be <= {hi} ({p[hi]}), got {p[lo]}")

    def process(self, text: pa.Array, batch: pa.Table) -> StageOutput:
        cfg = self.config
        text = T.as_string(text)
        n = len(text)
        words = T.tokenize(text)
        scripts = T.script_info(text)
        unseg = scripts.unsegmented_doc()
        nospace = scripts.no_space() | unseg

        n_all = words.counts
        par = words.parents
        ns = words.mask(r"[^\p{P}\p{S}\p{Cc}]")
        n_ns = T.per_doc_count(ns, par, n)
        # a Han/kana character is a word of its own: it counts as a word but its length
        # says nothing about word length
        for_len = ns & ~words.full_mask("[" + T.CJK_CLASS + "]") if scripts.cjk.any() else ns
        mean_len = _ratio(T.per_doc_sum(np.where(for_len, words.lengths, 0), par, n),
                          T.per_doc_count(for_len, par, n))
        hash_ratio = _ratio(T.count_literal(text, "#"), n_all)
        ell_ratio = _ratio(T.count_literal(text, "...") + T.count_literal(text, "…"), n_all)

        lines, lpar, loff = T.list_parts(T.split_lines(text))
        n_lines = np.diff(loff)
        if len(lines):
            bullet = T.to_bool(pc.match_substring_regex(pc.utf8_ltrim_whitespace(lines), "^[•-]"))
            ell_end = T.to_bool(pc.match_substring_regex(pc.utf8_rtrim_whitespace(lines),
                                                         r"(?:\.\.\.|…)$"))
        else:
            bullet = ell_end = np.zeros(0, bool)
        bullet_lines = _ratio(T.per_doc_count(bullet, lpar, n), n_lines)
        ell_lines = _ratio(T.per_doc_count(ell_end, lpar, n), n_lines)
        alpha = _ratio(T.per_doc_count(words.mask(r"\p{L}"), par, n), n_all)

        langs = _doc_languages(batch, cfg["language_column"], n)
        stops, no_list = _stop_word_counts(words, langs, cfg["stop_words"], n)

        skips = {
            "word_count": unseg,
            "mean_word_length": nospace,
            "hash_ratio": unseg,
            "ellipsis_ratio": unseg,
            "stop_words": nospace | no_list,
        }
        fails = {
            "word_count": _lt(n_ns, cfg["min_words"]) | _gt(n_ns, cfg["max_words"]),
            "mean_word_length": _lt(mean_len, cfg["min_mean_word_length"])
            | _gt(mean_len, cfg["max_mean_word_length"]),
            "hash_ratio": _gt(hash_ratio, cfg["max_hash_ratio"]),
            "ellipsis_ratio": _gt(ell_ratio, cfg["max_ellipsis_ratio"]),
            "bullet_lines": _gt(bullet_lines, cfg["max_bullet_lines"]),
            "ellipsis_lines": _gt(ell_lines, cfg["max_ellipsis_lines"]),
            "alpha_words": _lt(alpha, cfg["min_alpha_words"]),
            "stop_words": _lt(stops, cfg["min_stop_words"]),
        }
        for r, s in skips.items():
            fails[r] = fails[r] & ~s
        p = "gopher_quality_"
        cols = {
            p + "word_count": _int_col(n_ns),
            p + "mean_word_length": _float_col(mean_len),
            p + "hash_ratio": _float_col(hash_ratio),
            p + "ellipsis_ratio": _float_col(ell_ratio),
            p + "bullet_lines": _float_col(bullet_lines),
            p + "ellipsis_lines": _float_col(ell_lines),
            p + "alpha_words": _float_col(alpha),
            p + "stop_words": _int_col(stops),
            p + "skipped": self._skipped(skips, n),
        }
        return StageOutput(columns=cols, reasons=self._reasons(fails, n))


