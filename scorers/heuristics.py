"""Rule-based quality stages: ``gopher_quality``, ``gopher_repetition``, ``c4``, ``fineweb``.

Framework-free: each stage is a :class:`scorers.base.LocalStage` that scores a whole Arrow
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

Word splitting (:func:`scorers.textops.tokenize`) follows the rule-based English
tokenizer that the reference filters use, so counts agree with them on real text.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import columns as C
from schemas import filters as _fields  # noqa: F401  (registers the score columns)
from scorers import textops as T
from scorers.base import LocalStage, Param, ParamError, StageOutput, between, one_of

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

_LANG_ALIASES = {
    "eng": "en", "deu": "de", "ger": "de", "fra": "fr", "fre": "fr", "spa": "es", "ita": "it",
    "por": "pt", "nld": "nl", "dut": "nl", "rus": "ru", "zho": "zh", "chi": "zh", "cmn": "zh",
    "jpn": "ja", "tha": "th", "kor": "ko",
}


def normalize_language(code: Optional[str]) -> Optional[str]:
    """``"en-US"``, ``"eng_Latn"``, ``"EN"`` -> ``"en"``; None/empty -> None."""
    if not code:
        return None
    base = code.strip().lower().replace("_", "-").split("-")[0]
    return _LANG_ALIASES.get(base, base) or None


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


# ----------------------------------------------------------------------------------------
# gopher_quality
# ----------------------------------------------------------------------------------------


class GopherQuality(_RuleStage):
    """Gopher quality rules (Rae et al. 2021, appendix A), reference defaults.

    Words are the output of :func:`scorers.textops.tokenize`, punctuation words included.
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
    reasons = tuple(f"gopher_quality.{r}" for r in RULES)
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


# ----------------------------------------------------------------------------------------
# gopher_repetition
# ----------------------------------------------------------------------------------------

_TOP_N = (2, 3, 4)
_DUP_N = (5, 6, 7, 8, 9, 10)


def _ngram_repeats(ng: T.NGrams, n: int, cand: Optional[np.ndarray] = None) -> tuple[np.ndarray, T.Repeats]:
    """Word positions (ascending) of n-grams that occur at least twice in their document,
    and their grouping. ``cand`` limits the search to these start positions (it must
    contain every repeated one: the repeated (n+1)-grams start where repeated n-grams do)."""
    if cand is None:
        cand = np.flatnonzero(ng.valid(n))
    else:
        cand = cand[ng.valid(n)[cand]]
    r = T.repeats(ng.keys(n, cand))
    return cand[r.pos], r


def _top_ngram_share(ng: T.NGrams, n: int, n_docs: int, rep=None) -> np.ndarray:
    """Characters of the most frequent n-gram times its count, per document.

    The n-gram's characters are its words joined by single spaces. Ties between equally
    frequent n-grams go to the one that occurs first; when no n-gram repeats, the first
    n-gram is the most frequent (count 1). NaN for documents with fewer than n words.
    """
    out = np.full(n_docs, np.nan)
    valid = np.flatnonzero(ng.valid(n))
    if len(valid) == 0:
        return out
    parents = ng.words.parents
    vdoc = parents[valid]
    clen = ng.char_len(n, 1)
    # default: count 1, the document's first n-gram
    firsts = np.flatnonzero(np.r_[True, vdoc[1:] != vdoc[:-1]])
    out[vdoc[firsts]] = clen[valid[firsts]]
    pos, r = rep if rep is not None else _ngram_repeats(ng, n)
    if len(pos):
        pdoc = parents[pos]
        dmax = np.zeros(n_docs, np.int64)
        np.maximum.at(dmax, pdoc, r.size)
        top = np.flatnonzero(r.size == dmax[pdoc])
        first = top[np.r_[True, pdoc[top][1:] != pdoc[top][:-1]]]
        out[pdoc[first]] = clen[pos[first]] * r.size[first]
    return out


def _greedy_ranges(cand: np.ndarray, n: int, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blocks counted by the left-to-right duplicate scan, given its duplicate positions.

    ``cand`` (ascending word positions) are the positions the scan treats as duplicates.
    The scan takes the first candidate at or after its cursor, counts the n words from it
    and moves the cursor n words on. Candidates form runs of consecutive positions; inside
    a run the scan takes p, p+n, p+2n ... (returned as one range [p, stop)). Runs further
    than n words apart do not interact, so each group of nearby runs is scanned on its own,
    all groups in parallel, one run per round. Returns the ranges' starts and stops.
    """
    if len(cand) == 0:
        z = np.zeros(0, np.int64)
        return z, z
    brk = np.flatnonzero(np.diff(cand) != 1) + 1
    rs = cand[np.r_[0, brk]]
    re_ = cand[np.r_[brk - 1, len(cand) - 1]]
    rdoc = parents[rs]
    new_cl = np.r_[True, (rs[1:] - re_[:-1] >= n) | (rdoc[1:] != rdoc[:-1])]
    cl_first = np.flatnonzero(new_cl)
    cl_last = np.r_[cl_first[1:] - 1, len(rs) - 1]
    starts, stops = [], []
    act = np.arange(len(cl_first))
    r = cl_first.copy()
    c = rs[cl_first].copy()
    while len(act):
        k = (re_[r] - c) // n + 1
        stop = c + k * n
        starts.append(c)
        stops.append(stop)
        nr = np.searchsorted(re_, stop, side="left")
        keep = nr <= cl_last[act]
        act, nr, stop = act[keep], nr[keep], stop[keep]
        r = nr
        c = np.maximum(stop, rs[nr])
    return np.concatenate(starts), np.concatenate(stops)


def _dup_ngram_chars(ng: T.NGrams, n: int, n_docs: int, max_rounds: int = 8, rep=None) -> np.ndarray:
    """Characters in repeated n-grams per document, counted as the reference scan does.

    The reference scans a document's words left to right keeping a set of seen n-grams: an
    n-gram already in the set is a duplicate, its characters (words without separators)
    are counted and the scan jumps n words on, past it, without adding the n-grams it jumps
    over; otherwise the n-gram is added and the scan moves one word on. So overlapping
    repeats are counted once, and an n-gram whose earlier copies were all jumped over is
    not a duplicate.

    Vectorised: only n-grams that occur at least twice matter. Starting from "every later
    copy is a duplicate", the blocks the scan would count are computed for all documents at
    once (:func:`_greedy_ranges`); then a copy is a duplicate exactly when an earlier copy
    was visited (not jumped over). This is repeated for the documents whose duplicates
    changed until none changes (one or two rounds for almost all real documents);
    documents that have not settled after ``max_rounds`` are scanned exactly, one repeated
    n-gram at a time.

    Documents with more than ``_EXACT_SCAN_LIMIT`` repeated n-grams (megabytes of
    repetitive text) keep the first round, i.e. every later copy of an n-gram counts as a
    duplicate even if the scan jumped over all earlier copies; this bounds the time and
    can only count more duplicate characters than the reference.
    """
    out = np.zeros(n_docs, np.float64)
    P, r = rep if rep is not None else _ngram_repeats(ng, n)
    if len(P) == 0:
        return out
    parents = ng.words.parents
    cum = ng.cumlen
    g = r.gid
    pdoc = parents[P]
    dup = ~r.first
    huge_doc = np.bincount(pdoc, minlength=n_docs) > _EXACT_SCAN_LIMIT
    active = ~huge_doc          # documents still iterated
    final_s, final_e = [], []
    if huge_doc.any():
        s_, e_ = _greedy_ranges(P[huge_doc[pdoc] & dup], n, parents)
        final_s.append(s_)
        final_e.append(e_)
    big = np.iinfo(np.int64).max
    first_seen = np.full(r.n_groups, big)
    for _ in range(max_rounds):
        on = active[pdoc]
        if not on.any():
            break
        Pa, ga, da = P[on], g[on], dup[on]
        starts, stops = _greedy_ranges(Pa[da], n, parents)
        order = T.argsort_nonneg(starts)
        starts, stops = starts[order], stops[order]
        # visited: not strictly inside a counted block, or at one of its n-word steps
        visited = np.ones(len(Pa), bool)
        if len(starts):
            j = np.maximum(np.searchsorted(starts, Pa, side="right") - 1, 0)
            off = Pa - starts[j]
            visited = (off < 0) | (Pa >= stops[j]) | (off % n == 0)
        first_seen[ga] = big
        np.minimum.at(first_seen, ga[visited], Pa[visited])
        new_dup = first_seen[ga] < Pa
        changed_doc = np.zeros(n_docs, bool)
        changed_doc[pdoc[on][new_dup != da]] = True
        settled = ~changed_doc[parents[starts]]
        final_s.append(starts[settled])
        final_e.append(stops[settled])
        dup[on] = new_dup
        active &= changed_doc
    if active.any():
        # not settled: exact scan, one repeated n-gram at a time
        for d in np.flatnonzero(active).tolist():
            out[d] = _scan_doc(P, g, pdoc, d, n, cum)
    starts = np.concatenate(final_s) if final_s else np.zeros(0, np.int64)
    stops = np.concatenate(final_e) if final_e else np.zeros(0, np.int64)
    np.add.at(out, parents[starts], cum[stops] - cum[starts])
    return out


#: documents with more repeated n-grams than this are not iterated (see _dup_ngram_chars)
_EXACT_SCAN_LIMIT = 100_000


def _scan_doc(P, g, pdoc, d, n, cum) -> float:
    """The reference scan over one document's repeated n-grams (fallback)."""
    sel = np.flatnonzero(pdoc == d)
    seen: set[int] = set()
    cursor = -1
    total = 0
    for p, gg in zip(P[sel].tolist(), g[sel].tolist()):
        if p < cursor:
            continue
        if gg in seen:
            total += int(cum[p + n] - cum[p])
            cursor = p + n
        else:
            seen.add(gg)
    return float(total)


class GopherRepetition(_RuleStage):
    """Gopher repetition rules (Rae et al. 2021, table A1), reference defaults.

    * ``dup_para_frac`` / ``dup_para_char_frac``: paragraphs are the pieces of the text,
      stripped, split at runs of two or more ``\\n``; a paragraph is a duplicate when an
      identical paragraph occurs earlier in the document. Fraction of paragraphs that are
      duplicates, and characters in duplicates over the document's characters.
    * ``dup_line_frac`` / ``dup_line_char_frac``: the same for lines (split at runs of
      ``\\n``). Empty pieces at the start or end of the text are not lines; the reference
      counts them, so there a text that starts and ends with ``\\n`` has a repeated empty
      "line".
    * ``top_{2,3,4}_gram``: characters of the most frequent word n-gram (words joined by a
      space) times its number of occurrences, over the document's characters. Ties go to
      the n-gram seen first; an n-gram that occurs once can be the most frequent.
    * ``dup_{5..10}_gram``: characters (without separators) of duplicated n-grams, counted
      by a left-to-right scan that skips past each duplicate, so overlapping repeats are
      counted once (see :func:`_dup_ngram_chars`), over the document's characters.

    Words come from :func:`scorers.textops.tokenize` (punctuation words included). Two
    n-grams are equal when their words are; the reference compares the words concatenated
    without a separator for ``dup_*`` (so there ``"ab c"`` equals ``"a bc"``).
    """

    name = "gopher_repetition"
    doc = "Gopher repetition heuristics (duplicate lines/paragraphs, repeated n-grams)."
    RULES = ("dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac") + tuple(
        f"top_{k}_gram" for k in _TOP_N) + tuple(f"dup_{k}_gram" for k in _DUP_N)
    reasons = tuple(f"gopher_repetition.{r}" for r in RULES)
    params = {
        "max_dup_para_frac": _frac_param(0.3, "maximum fraction of duplicate paragraphs"),
        "max_dup_para_char_frac": _frac_param(0.2, "maximum character fraction in duplicate paragraphs"),
        "max_dup_line_frac": _frac_param(0.3, "maximum fraction of duplicate lines"),
        "max_dup_line_char_frac": _frac_param(0.2, "maximum character fraction in duplicate lines"),
        **{f"max_top_{k}_gram": _frac_param(v, f"maximum character share of the most frequent {k}-gram")
           for k, v in zip(_TOP_N, (0.20, 0.18, 0.16))},
        **{f"max_dup_{k}_gram": _frac_param(v, f"maximum character share of duplicated {k}-grams")
           for k, v in zip(_DUP_N, (0.15, 0.14, 0.13, 0.12, 0.11, 0.10))},
    }

    def process(self, text: pa.Array, batch: pa.Table) -> StageOutput:
        cfg = self.config
        text = T.as_string(text)
        n = len(text)
        tlen = _text_len(text)
        fails: dict[str, np.ndarray] = {}
        vals: dict[str, np.ndarray] = {}

        paras = pc.split_pattern_regex(pc.utf8_trim_whitespace(text), r"\n\n+")
        p_n, p_dup, p_chars = T.duplicate_stats(paras)
        vals["dup_para_frac"] = _ratio(p_dup, p_n)
        vals["dup_para_char_frac"] = _ratio(p_chars, tlen)
        lines = _nonempty_lists(pc.split_pattern_regex(text, r"\n+"), n)
        l_n, l_dup, l_chars = T.duplicate_stats(lines)
        vals["dup_line_frac"] = _ratio(l_dup, l_n)
        vals["dup_line_char_frac"] = _ratio(l_chars, tlen)

        scripts = T.script_info(text)
        unseg = scripts.unsegmented_doc()
        need_words = any(cfg[f"max_top_{k}_gram"] is not None for k in _TOP_N) or any(
            cfg[f"max_dup_{k}_gram"] is not None for k in _DUP_N)
        if need_words:
            ng = T.NGrams(T.tokenize(text))
            cand = None
            for k in _TOP_N + _DUP_N:
                # repeated k-grams start where repeated (k-1)-grams do: search only there
                rep = _ngram_repeats(ng, k, cand)
                cand = rep[0]
                if k in _TOP_N:
                    vals[f"top_{k}_gram"] = _ratio(_top_ngram_share(ng, k, n, rep), tlen)
                else:
                    vals[f"dup_{k}_gram"] = _ratio(_dup_ngram_chars(ng, k, n, rep=rep), tlen)
        else:
            for k in _TOP_N:
                vals[f"top_{k}_gram"] = np.full(n, np.nan)
            for k in _DUP_N:
                vals[f"dup_{k}_gram"] = np.full(n, np.nan)

        ngram_rules = [f"top_{k}_gram" for k in _TOP_N] + [f"dup_{k}_gram" for k in _DUP_N]
        for r in self.RULES:
            fails[r] = _gt(vals[r], cfg["max_" + r])
            if r in ngram_rules:
                fails[r] &= ~unseg
        cols = {f"gopher_repetition_{r}": _float_col(vals[r]) for r in self.RULES}
        cols["gopher_repetition_skipped"] = self._skipped({"ngrams": unseg}, n)
        return StageOutput(columns=cols, reasons=self._reasons(fails, n))


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


# ----------------------------------------------------------------------------------------
# fineweb
# ----------------------------------------------------------------------------------------


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
    reasons = tuple(f"fineweb.{r}" for r in RULES)
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


# ----------------------------------------------------------------------------------------
# c4
# ----------------------------------------------------------------------------------------

C4_POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
                     "use of cookies", "use cookies")
C4_CITATION_RE = r"\[\p{Nd}*\]|\[edit\]|\[citation needed\]"
C4_TERMINAL = ".?!\"'"


class C4(_RuleStage):
    """C4 cleaning and filtering (Raffel et al. 2020), reference defaults.

    Line cleaning (each line of ``str.splitlines``, whitespace-stripped), in this order:

    1. drop a line with a whitespace-separated word longer than ``max_word_length``;
    2. remove citation markers ``[1]``, ``[]``, ``[edit]``, ``[citation needed]``;
    3. drop a line that does not end in ``. ? ! " '`` or that ends in ``...``
       (``filter_no_terminal_punct``);
    4. drop a line with fewer than ``min_words_per_line`` whitespace-separated words
       (counted before citation removal);
    5. a remaining line containing ``lorem ipsum`` (any case) rejects the document
       (``lorem_ipsum``);
    6. drop a line containing ``javascript`` (any case);
    7. a remaining line containing ``{`` rejects the document (``curly_bracket``);
    8. drop a line containing a policy phrase (``terms of use``, ``privacy policy``,
       cookie notices; any case).

    Document rules, in order: ``lorem_ipsum`` and ``curly_bracket`` (whichever line comes
    first), ``too_few_sentences`` (fewer than ``min_sentences`` sentences in the kept
    lines, see :func:`scorers.textops.sentence_counts`), and, if
    ``paragraph_filter`` is on, ``paragraphs`` (fewer than ``min_paragraphs`` kept lines
    of at least ``min_paragraph_length`` characters, as the mC4 paragraph filter).

    ``mode="clean_and_filter"`` replaces the text of kept documents by the kept lines
    joined with ``\\n``; ``mode="filter"`` takes the same decisions without rewriting.
    Rejected documents keep their text. ``c4_lines_removed`` / ``c4_chars_removed`` say
    how much cleaning removed (or would remove).

    Documents written without spaces (Han/kana) count one word per character for the
    words-per-line rule; for Thai-like scripts that rule is skipped; ``。！？｡`` also count
    as terminal punctuation for both.
    """

    name = "c4"
    doc = "C4 line cleaning and document filter (lorem ipsum, curly brackets, sentences)."
    rewrites_text = True
    RULES = ("lorem_ipsum", "curly_bracket", "too_few_sentences", "paragraphs")
    reasons = tuple(f"c4.{r}" for r in RULES)
    params = {
        "mode": Param(str, "clean_and_filter", "clean_and_filter: rewrite kept documents; "
                      "filter: decisions only", check=one_of("clean_and_filter", "filter")),
        "keep_original": Param(bool, False, f"keep the input text in column {C.ORIGINAL_TEXT!r}"),
        "remove_citations": Param(bool, True, "remove [1], [edit], [citation needed]"),
        "filter_no_terminal_punct": Param(bool, True, "drop lines without terminal punctuation"),
        "min_words_per_line": Param(int, 3, "drop lines with fewer words", check=_positive_or_none,
                                    nullable=True),
        "max_word_length": Param(int, 1000, "drop lines with a longer word", check=_positive_or_none,
                                 nullable=True),
        "filter_javascript": Param(bool, True, "drop lines mentioning javascript"),
        "filter_policy": Param(bool, True, "drop lines with terms-of-use/cookie phrases"),
        "policy_phrases": Param(list, list(C4_POLICY_PHRASES), "lower-case phrases for filter_policy",
                                check=lambda v: None if all(isinstance(s, str) and s for s in v)
                                else "must be a list of non-empty strings"),
        "filter_lorem_ipsum": Param(bool, True, "reject documents with 'lorem ipsum'"),
        "filter_curly_bracket": Param(bool, True, "reject documents with '{' in a kept line"),
        "min_sentences": Param(int, 5, "reject documents with fewer sentences after cleaning",
                               check=_positive_or_none, nullable=True),
        "paragraph_filter": Param(bool, False, "mC4 paragraph rule"),
        "min_paragraphs": Param(int, 3, "paragraph rule: minimum number of long lines", check=between(0)),
        "min_paragraph_length": Param(int, 200, "paragraph rule: characters of a long line",
                                      check=between(0)),
    }

    def fields(self) -> list[pa.Field]:
        out = list(super().fields())
        if self.config["keep_original"]:
            out.append(pa.field(C.ORIGINAL_TEXT, pa.string()))
        return out

    def process(self, text: pa.Array, batch: pa.Table) -> StageOutput:
        cfg = self.config
        text_in = T.as_array(text)
        text = T.as_string(text_in)
        n = len(text)
        scripts = T.script_info(text)
        unseg = scripts.unsegmented_doc()
        nospace = scripts.no_space() | unseg

        lines, lpar, loff = T.list_parts(T.split_lines(text))
        m = len(lines)
        n_lines = np.diff(loff)
        line = pc.utf8_trim_whitespace(lines) if m else lines
        llen = T.lengths(line)
        idx_in_doc = np.arange(m) - loff[lpar] if m else np.zeros(0, np.int64)
        alive = np.ones(m, bool)
        line_nospace = nospace[lpar] if m else np.zeros(0, bool)
        line_unseg = unseg[lpar] if m else np.zeros(0, bool)

        # 1. long words
        long_word = np.zeros(m, bool)
        if cfg["max_word_length"] is not None and m:
            cand = np.flatnonzero(llen > cfg["max_word_length"])
            if len(cand):
                pieces, ppar = T.split_whitespace(line.take(pa.array(cand)))
                big = T.lengths(pieces) > cfg["max_word_length"]
                long_word[cand[np.unique(ppar[big])]] = True
        alive &= ~long_word

        # word counts (before citation removal)
        if m:
            ws, wpar = T.split_whitespace(line)
            n_words = np.bincount(wpar, minlength=m) if len(wpar) else np.zeros(m, np.int64)
            if line_nospace.any():
                cjk_chars = T.count_regex(line, "[" + T.CJK_CLASS + "]")
                n_words = np.where(line_nospace, n_words + cjk_chars, n_words)
        else:
            n_words = np.zeros(0, np.int64)

        # 2. citations
        if cfg["remove_citations"] and m:
            has = T.to_bool(pc.match_substring(line, "["))
            if has.any():
                line = pc.if_else(pa.array(has), pc.replace_substring_regex(line, C4_CITATION_RE, ""), line)

        # 3. terminal punctuation
        no_term = np.zeros(m, bool)
        if cfg["filter_no_terminal_punct"] and m:
            ends = T.to_bool(pc.match_substring_regex(line, "[" + T.char_class(C4_TERMINAL) + "]$"))
            ends |= line_nospace & T.to_bool(pc.match_substring_regex(line, "[。！？｡]$"))
            ends &= ~T.to_bool(pc.ends_with(line, "..."))
            no_term = alive & ~ends
            alive &= ends

        # 4. too few words
        few = np.zeros(m, bool)
        if cfg["min_words_per_line"] is not None and m:
            few = alive & (n_words < cfg["min_words_per_line"]) & ~line_unseg
            alive &= ~few

        # 5-8 on the lower-cased surviving lines
        lorem_line = np.zeros(m, bool)
        js = np.zeros(m, bool)
        curly_line = np.zeros(m, bool)
        policy = np.zeros(m, bool)
        sel = np.flatnonzero(alive)
        if len(sel):
            sub = line.take(pa.array(sel))
            low = pc.utf8_lower(sub)
            if cfg["filter_lorem_ipsum"]:
                lorem_line[sel] = T.to_bool(pc.match_substring(low, "lorem ipsum"))
            if cfg["filter_javascript"]:
                js[sel] = T.to_bool(pc.match_substring(low, "javascript"))
            js &= ~lorem_line
            if cfg["filter_curly_bracket"]:
                curly_line[sel] = T.to_bool(pc.match_substring(sub, "{"))
            curly_line &= ~lorem_line & ~js
            if cfg["filter_policy"] and cfg["policy_phrases"]:
                pat = "|".join(T.regex_literal(s) for s in cfg["policy_phrases"])
                policy[sel] = T.to_bool(pc.match_substring_regex(low, pat))
            policy &= ~lorem_line & ~js & ~curly_line
        kept = alive & ~lorem_line & ~js & ~curly_line & ~policy

        # document rules
        big = np.iinfo(np.int64).max
        first_lorem = np.full(n, big)
        first_curly = np.full(n, big)
        if lorem_line.any():
            np.minimum.at(first_lorem, lpar[lorem_line], idx_in_doc[lorem_line])
        if curly_line.any():
            np.minimum.at(first_curly, lpar[curly_line], idx_in_doc[curly_line])
        lorem_doc = first_lorem <= first_curly
        lorem_doc &= first_lorem < big
        curly_doc = (first_curly < first_lorem)

        kidx = np.flatnonzero(kept)
        kpar = lpar[kidx]
        kept_lines = line.take(pa.array(kidx)) if m else line
        if cfg["min_sentences"] is not None and len(kidx):
            sent_line = T.sentence_counts_text(kept_lines)
            sentences = np.bincount(kpar, weights=sent_line, minlength=n).astype(np.int64)
        else:
            sentences = np.zeros(n, np.int64)
        kcount = np.bincount(kpar, minlength=n) if len(kpar) else np.zeros(n, np.int64)
        klen = T.lengths(kept_lines) if len(kidx) else np.zeros(0, np.int64)
        long_par = T.per_doc_count(klen >= cfg["min_paragraph_length"], kpar, n)

        fails = {
            "lorem_ipsum": lorem_doc,
            "curly_bracket": curly_doc,
            "too_few_sentences": _lt(sentences, cfg["min_sentences"]),
            "paragraphs": (long_par < cfg["min_paragraphs"]) if cfg["paragraph_filter"]
            else np.zeros(n, bool),
        }
        reasons = self._reasons(fails, n)
        rejected = T.to_bool(pc.is_valid(reasons))

        # rewritten text: kept lines joined by "\n"
        koff = np.zeros(n + 1, np.int64)
        np.cumsum(kcount, out=koff[1:])
        joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(koff, pa.int32()), kept_lines), "\n")
        new_len = T.lengths(joined)
        tlen = _text_len(text)

        p = "c4_"
        cols = {
            p + "lorem_ipsum": pa.array(first_lorem < big, pa.bool_()),
            p + "curly_bracket": pa.array(first_curly < big, pa.bool_()),
            p + "sentences": _int_col(sentences),
            p + "paragraphs": _int_col(long_par),
            p + "lines_removed": _int_col(n_lines - kcount),
            p + "chars_removed": _int_col(tlen - new_len),
            p + "lines_long_word": _int_col(T.per_doc_count(long_word, lpar, n)),
            p + "lines_no_terminal_punct": _int_col(T.per_doc_count(no_term, lpar, n)),
            p + "lines_too_few_words": _int_col(T.per_doc_count(few, lpar, n)),
            p + "lines_javascript": _int_col(T.per_doc_count(js, lpar, n)),
            p + "lines_policy": _int_col(T.per_doc_count(policy, lpar, n)),
            p + "skipped": self._skipped({"min_words_per_line": unseg}, n),
        }
        out_text = None
        if cfg["mode"] == "clean_and_filter":
            out_text = pc.if_else(pa.array(rejected), text, joined).cast(text_in.type)
        if cfg["keep_original"]:
            cols[C.ORIGINAL_TEXT] = text_in
        return StageOutput(columns=cols, reasons=reasons, text=out_text)


STAGES = (GopherQuality, GopherRepetition, C4, FineWeb)
