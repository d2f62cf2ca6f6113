"""Rule-based quality stages: ``gopher_quality``, ``gopher_repetition``, ``c4``, ``fineweb``.

Framework-free: each stage is a :class:`thresher.scorers.base.LocalStage` that scores a whole Arrow
batch with ``pyarrow.compute`` kernels and numpy (no per-document Python loop). Every rule
writes its own score column ``<stage>_<rule>`` (the measured count or ratio, null where it
is undefined) and rejects with the reason ``<stage>.<rule>``; when several rules fail, the
reason is the first failing rule in the order of the stage's ``RULES`` (the order of the
reference rule sets). A threshold set to ``None`` disables its rule.

Rules that cannot apply to a document never reject it; they are listed, comma-separated,
in the stage's ``<stage>_skipped`` column instead:

* documents written mostly (>30 % of letters) in a script without spaces between words:
  Han/kana text is split one character per word, so word *counts* and n-grams still work,
  but the mean word length and English stop words do not apply; Thai, Lao, Khmer, Myanmar
  and Tibetan need a dictionary segmenter, so every rule that needs words is skipped;
* the stop-word rule for a language without a stop-word list (see ``language_column``).

Word splitting (:func:`thresher.scorers.text.ops.tokenize`) follows the rule-based English
tokenizer that the reference filters use, so counts agree with them on real text.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.scorers.base import (
    LocalStage,
    Param,
)
from thresher.scorers.text import ops as T
from thresher.scorers.text.langcodes import normalize_language

# ----------------------------------------------------------------------------------------
# stop words
# ----------------------------------------------------------------------------------------

#: Small lists of very frequent function words, one per language. English is the list
#: of the Gopher rules; the others were chosen the same way (short, frequent, unambiguous).
STOP_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("the", "be", "to", "of", "and", "that", "have", "with"),
    "de": ("der", "die", "das", "und", "zu", "den", "von", "mit", "ist", "nicht"),
    "fr": ("le", "la", "les", "de", "et", "des", "que", "est", "une", "pour"),
    "es": ("el", "la", "de", "que", "y", "los", "las", "con", "por", "una"),
    "it": ("il", "di", "che", "e", "la", "per", "non", "una", "del", "con"),
    "pt": ("o", "de", "que", "e", "do", "da", "em", "para", "com", "uma"),
    "nl": ("de", "het", "een", "en", "van", "dat", "is", "met", "te", "niet"),
    "ru": ("и", "в", "не", "на", "что", "с", "как", "это", "по", "он"),
}

#: the doc of every rule stage's ``<stage>_skipped`` column
SKIPPED_DOC = "comma-separated rules that could not apply to the row (null: none skipped)"


def _doc_languages(batch: Optional[pa.Table], column: str, n: int) -> tuple[np.ndarray, list[str]]:
    """(language index per row, normalized language codes). Rows without a language (no
    such column, or null) are English."""
    if batch is None or column not in batch.column_names or n == 0:
        return np.zeros(n, np.int64), ["en"]
    col = T.as_array(batch.column(column))
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        col = pc.cast(col, pa.string())
    enc = pc.dictionary_encode(col)
    names = [normalize_language(v) or "en" for v in enc.dictionary.to_pylist()] + ["en"]
    idx = np.asarray(pc.fill_null(enc.indices, len(names) - 1), dtype=np.int64)
    return idx, names


def _stop_word_counts(words: T.Words, langs: tuple[np.ndarray, list[str]],
                      override: Optional[list], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct stop words per document, documents whose language has no stop-word list)."""
    lang_idx, names = langs
    vocab_of = [tuple(override) if override is not None else STOP_WORDS.get(x) for x in names]
    no_list = np.array([v is None for v in vocab_of], bool)[lang_idx]
    found = np.zeros(n, np.int64)
    if len(words.words) == 0:
        return found, no_list
    wlang = lang_idx[words.parents]
    for li in np.unique(lang_idx).tolist():
        vocab = vocab_of[li]
        sel = np.flatnonzero(wlang == li)
        if not vocab or len(sel) == 0:
            continue
        idx = pc.index_in(words.words.take(pa.array(sel)), value_set=pa.array(list(vocab), words.words.type))
        hit = T.to_bool(pc.is_valid(idx))
        if not hit.any():
            continue
        docs = words.parents[sel][hit]
        which = np.asarray(idx.filter(pa.array(hit)), dtype=np.int64)
        pairs = np.unique(docs * (len(vocab) + 1) + which)
        found += np.bincount(pairs // (len(vocab) + 1), minlength=n)
    return found, no_list


# ----------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------


def _ratio(num, den) -> np.ndarray:
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.full(len(num), np.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def _float_col(values: np.ndarray, skip: Optional[np.ndarray] = None) -> pa.Array:
    mask = np.isnan(values)
    if skip is not None:
        mask = mask | skip
    return pa.array(values, pa.float64(), mask=mask)


def _int_col(values: np.ndarray, skip: Optional[np.ndarray] = None) -> pa.Array:
    return pa.array(np.asarray(values, np.int64), pa.int64(), mask=skip)


def _gt(values: np.ndarray, thr) -> np.ndarray:
    if thr is None:
        return np.zeros(len(values), bool)
    with np.errstate(invalid="ignore"):
        return values > thr


def _lt(values: np.ndarray, thr) -> np.ndarray:
    if thr is None:
        return np.zeros(len(values), bool)
    with np.errstate(invalid="ignore"):
        return values < thr


def _positive_or_none(v):
    return None if v is None or v >= 0 else f"must be >= 0, got {v}"


def _fraction(v):
    return None if v is None or 0 <= v <= 1 else f"must be between 0 and 1, got {v}"


def _ratio_param(default: float, doc: str) -> Param:
    return Param(float, default, doc, check=_positive_or_none, nullable=True)


def _frac_param(default: float, doc: str) -> Param:
    return Param(float, default, doc, check=_fraction, nullable=True)


class _RuleStage(LocalStage):
    """A stage whose rules each have a score column and a reason."""

    RULES: tuple[str, ...] = ()

    def _reasons(self, fails: dict[str, np.ndarray], n: int) -> pa.Array:
        """The first failing rule (in RULES order) per row; null where none fails."""
        first = np.full(n, -1, np.int64)
        for i in range(len(self.RULES) - 1, -1, -1):
            f = fails.get(self.RULES[i])
            if f is not None:
                first[f] = i
        names = pa.array([self.reason(r) for r in self.RULES] or [""], pa.string())
        return names.take(pa.array(first, mask=first < 0))

    @staticmethod
    def _skipped(skips: dict[str, np.ndarray], n: int) -> pa.Array:
        """Comma-separated names of the skipped rules per row (null: none skipped)."""
        code = np.zeros(n, np.int64)
        names = list(skips)
        for i, r in enumerate(names):
            code |= np.asarray(skips[r], bool).astype(np.int64) << i
        uniq, inv = np.unique(code, return_inverse=True)
        labels = [",".join(names[i] for i in range(len(names)) if u >> i & 1) or None for u in uniq]
        return pa.array(labels, pa.string()).take(pa.array(inv.reshape(-1)))


def _text_len(text: pa.Array) -> np.ndarray:
    return T.lengths(text)


def _nonempty_lists(lists: pa.Array, n: int) -> pa.Array:
    """Drop empty strings from every list."""
    flat, par, _ = T.list_parts(lists)
    keep = T.lengths(flat) > 0
    if keep.all():
        return lists
    counts = np.bincount(par[keep], minlength=n)
    off = np.zeros(n + 1, np.int32)
    np.cumsum(counts, out=off[1:])
    return pa.ListArray.from_arrays(pa.array(off), flat.filter(pa.array(keep)))
