"""``gopher_repetition``: the Gopher repetition rules."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.scorers.base import (
    Column,
    StageOutput,
)
from thresher.scorers.filters.rules import (
    SKIPPED_DOC,
    _float_col,
    _frac_param,
    _gt,
    _nonempty_lists,
    _ratio,
    _RuleStage,
    _text_len,
)
from thresher.scorers.registry import register
from thresher.scorers.text import ops as T

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


_REP_DOC = {
    'dup_para_frac': 'fraction of paragraphs that duplicate an earlier one',
    'dup_para_char_frac': 'character fraction in duplicate paragraphs',
    'dup_line_frac': 'fraction of lines that duplicate an earlier one',
    'dup_line_char_frac': 'character fraction in duplicate lines',
    'top_2_gram': 'character share of the most frequent 2-gram',
    'top_3_gram': 'character share of the most frequent 3-gram',
    'top_4_gram': 'character share of the most frequent 4-gram',
    'dup_5_gram': 'character share of duplicated 5-grams',
    'dup_6_gram': 'character share of duplicated 6-grams',
    'dup_7_gram': 'character share of duplicated 7-grams',
    'dup_8_gram': 'character share of duplicated 8-grams',
    'dup_9_gram': 'character share of duplicated 9-grams',
    'dup_10_gram': 'character share of duplicated 10-grams',
}


@register
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

    Words come from :func:`thresher.scorers.text.ops.tokenize` (punctuation words included). Two
    n-grams are equal when their words are; the reference compares the words concatenated
    without a separator for ``dup_*`` (so there ``"ab c"`` equals ``"a bc"``).
    """

    name = "gopher_repetition"
    doc = "Gopher repetition heuristics (duplicate lines/paragraphs, repeated n-grams)."
    RULES = ("dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac") + tuple(
        f"top_{k}_gram" for k in _TOP_N) + tuple(f"dup_{k}_gram" for k in _DUP_N)
    reasons = RULES
    default_order = 30
    cpu_ns_per_byte = 137  # benchmarks/results (filters.txt, langid.txt, dedup_100k.json)
    columns = tuple(Column(f"gopher_repetition_{r}", pa.float64(), _REP_DOC[r]) for r in RULES) + (
        Column("gopher_repetition_skipped", pa.string(), SKIPPED_DOC),)
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


