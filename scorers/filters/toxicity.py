"""``toxicity`` stage: word lists, a trainable classifier, and profanity-check.

Three signals, each written as score columns (see ``schemas/filters_lang_tox.py``):

1. **Word lists** (always on). Per language, a *hard* list (slurs, unambiguous
   obscenities, explicit pornographic terms) and a *soft* list (words that are
   offensive in some uses and ordinary in others: anatomy, mild swearing,
   ``dick``, ``rape``, ...). Columns ``toxicity_hard_hits``,
   ``toxicity_soft_hits`` (occurrences) and ``toxicity_wordlist_score`` (words
   covered by hits / words). The lists shipped in ``scorers/data/badwords``
   are derived from LDNOOBW (CC-BY-4.0, see the ATTRIBUTION file there);
   ``wordlists`` points at your own.

   Matching is by whole words, case-insensitive (Unicode lower-casing), in any
   script: the text is split into words at every character that is not a
   letter, digit or combining mark, and an entry (one word or a phrase of
   several) matches a run of consecutive words equal to its own words. So
   ``cunt`` matches ``CUNT!`` but not ``Scunthorpe``, ``ass`` does not match
   ``class``, and hyphens and apostrophes separate words (``ass-kicking`` is
   ``ass`` + ``kicking``). Entries written in scripts without spaces between
   words (Chinese, Japanese, Thai, Lao, Khmer, Myanmar) and entries without any
   letter (emoji) match as substrings. Where entries overlap, the longest match
   at a position wins, and a match whose words all lie inside a longer counted
   match is not counted again. All of it is vectorised over the batch (Arrow
   RE2 kernels and numpy); Python runs per row only for substring-entry hits.

   The list of a row is picked by its language: the ``language_column`` (the
   ``language`` stage's output) when the batch has it, else
   ``default_language``. Codes are normalised (``en``, ``eng``, ``eng_Latn``,
   ``en-US`` -> ``en``); rows in languages without a list score 0.

2. **A trained classifier** (``model``: a fastText ``.bin``/``.ftz`` or a
   linear model directory written by :func:`train_toxicity_classifier`).
   Column ``toxicity_score`` = P(toxic).

3. **alt-profanity-check** (``profanity_check: true``). Column
   ``toxicity_profanity``. Its model is a joblib (pickle) file inside the
   package: loading it executes pickle, which is acceptable only because the
   package is a pinned dependency installed from PyPI, never a user-supplied
   file. Off by default.

Training: ``thresher toxicity train`` -> :func:`main_train` ->
:func:`train_toxicity_classifier`. The linear model is saved without pickle
(vocabulary in JSON, weights in an ``.npz`` read with ``allow_pickle=False``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.scorers.base import (
    Column,
    LocalStage,
    Param,
    ParamError,
    StageOutput,
    between,
    first_reason,
    one_of,
)
from thresher.scorers.classifiers import fasttext_util as ftu
from thresher.scorers.registry import register
from thresher.scorers.text.arrays import as_string_array
from thresher.scorers.text.langcodes import normalize_language

TOXICITY_HARD_HITS = "toxicity_hard_hits"            # occurrences of hard-list entries
TOXICITY_SOFT_HITS = "toxicity_soft_hits"            # occurrences of soft-list entries
TOXICITY_WORDLIST_SCORE = "toxicity_wordlist_score"  # words covered by hits / words
TOXICITY_SCORE = "toxicity_score"                    # P(toxic) of the trained classifier (if configured)
TOXICITY_PROFANITY = "toxicity_profanity"            # alt-profanity-check probability (if enabled)

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "badwords")

# --------------------------------------------------------------------------------------
# text normalisation shared by the matcher
# --------------------------------------------------------------------------------------

# Scripts written without spaces between words: entries in them match as substrings,
# and every character of them counts as one word.
_UNSEG_RANGES = [
    (0x0E00, 0x0EFF),    # Thai, Lao
    (0x1000, 0x109F),    # Myanmar
    (0x1780, 0x17FF),    # Khmer
    (0x3040, 0x30FF),    # Hiragana, Katakana
    (0x3100, 0x312F),    # Bopomofo
    (0x31F0, 0x31FF),    # Katakana phonetic extensions
    (0x3400, 0x4DBF),    # CJK extension A
    (0x4E00, 0x9FFF),    # CJK unified ideographs
    (0xF900, 0xFAFF),    # CJK compatibility ideographs
    (0xFF66, 0xFF9F),    # half-width Katakana
    (0x20000, 0x3134F),  # CJK extensions B-G
]
_UNSEG_RE2 = "".join(f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in _UNSEG_RANGES)
# a "word" for the score's denominator: one character of an unsegmented script, or a
# run of letters/digits/marks of other scripts
_WORD_RE2 = f"[{_UNSEG_RE2}]|[^\\s\\p{{P}}\\p{{S}}\\p{{Z}}\\p{{C}}{_UNSEG_RE2}]+"
_SPLIT_RE2 = r"[^\p{L}\p{N}\p{M}]+"


def _as_string(text) -> pa.Array:
    return as_string_array(text)


def _is_unseg(ch: str) -> bool:
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in _UNSEG_RANGES)


def _lower(strings: Sequence[str]) -> list[str]:
    """Lower-case exactly as the matcher does for texts (Arrow's utf8_lower)."""
    return pc.utf8_lower(pa.array(list(strings), pa.string())).to_pylist()


def _tokens(strings: Sequence[str]) -> list[list[str]]:
    arr = pc.split_pattern_regex(pa.array(list(strings), pa.string()), _SPLIT_RE2)
    return [[t for t in toks if t] for toks in arr.to_pylist()]


def _re2_literal(s: str) -> str:
    return "".join(ch if ch.isalnum() else f"\\x{{{ord(ch):X}}}" for ch in s)


# --------------------------------------------------------------------------------------
# language codes
# --------------------------------------------------------------------------------------






# --------------------------------------------------------------------------------------
# word lists
# --------------------------------------------------------------------------------------

HARD, SOFT = 1, 2


def _read_list(path: str) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            s = line.strip()
            if s and not s.startswith("#"):
                out.append(s)
    return out


def load_wordlists(path: Optional[str] = None) -> dict[str, dict[int, list[str]]]:
    """``{lang: {HARD: [...], SOFT: [...]}}`` from a directory of list files.

    File names: ``<lang>.hard.txt``, ``<lang>.soft.txt``, or ``<lang>.txt``
    (a single list, used as hard). ``<lang>`` is normalised with
    :func:`thresher.scorers.text.langcodes.normalize_language` (``fr-CA-u-sd-caqc.txt`` joins ``fr``). One entry per
    line, UTF-8; blank lines and lines starting with ``#`` are ignored.
    """
    root = path or DATA_DIR
    if not os.path.isdir(root):
        raise FileNotFoundError(f"word-list directory {root!r} does not exist")
    lists: dict[str, dict[int, list[str]]] = {}
    for fn in sorted(os.listdir(root)):
        if not fn.endswith(".txt"):
            continue
        stem = fn[:-4]
        kind = HARD
        if stem.endswith(".hard"):
            stem = stem[:-5]
        elif stem.endswith(".soft"):
            stem, kind = stem[:-5], SOFT
        elif "." in stem:
            continue
        key = normalize_language(stem)
        if not key:
            continue
        lists.setdefault(key, {HARD: [], SOFT: []})[kind].extend(_read_list(os.path.join(root, fn)))
    if not lists:
        raise FileNotFoundError(
            f"no word lists in {root!r} (expected <lang>.hard.txt, <lang>.soft.txt or <lang>.txt)")
    return lists


@dataclasses.dataclass
class _CompiledList:
    vocab: pa.Array                      # token -> id (index in this array)
    uni_kind: np.ndarray                 # int8 [V + 1]: kind of single-token entries; last = "not in vocab"
    ngrams: dict                         # n -> (sorted int64 keys, int8 kinds) or {tuple: kind}
    max_n: int
    sub_re2: Optional[str]               # alternation of substring entries (RE2)
    sub_rx: Optional[re.Pattern]         # the same for Python, used on rows with hits
    sub_kind: dict                       # substring entry -> kind


def compile_wordlist(hard: Iterable[str], soft: Iterable[str]) -> _CompiledList:
    entries: dict[str, int] = {}
    for kind, items in ((SOFT, soft), (HARD, hard)):   # hard wins over soft on duplicates
        items = [s for s in items if s.strip()]
        for e in _lower([unicodedata.normalize("NFC", s.strip()) for s in items]):
            entries[e] = kind
    token_entries, sub_kind = {}, {}
    for e, kind in entries.items():
        if any(_is_unseg(ch) for ch in e) or not any(ch.isalnum() for ch in e):
            sub_kind[e] = kind
        else:
            token_entries[e] = kind
    toks = _tokens(list(token_entries))
    vocab = sorted({t for ts in toks for t in ts})
    index = {t: i for i, t in enumerate(vocab)}
    V = len(vocab)
    uni = np.zeros(V + 1, np.int8)
    by_n: dict[int, dict[tuple, int]] = {}
    for ts, kind in zip(toks, token_entries.values()):
        if not ts:
            continue
        # two entries can tokenise alike ("g-spot", "g spot"): hard wins
        if len(ts) == 1:
            j = index[ts[0]]
            if uni[j] != HARD:
                uni[j] = kind
        else:
            ids = tuple(index[t] for t in ts)
            table = by_n.setdefault(len(ts), {})
            if table.get(ids) != HARD:
                table[ids] = kind
    ngrams = {}
    for n, d in by_n.items():
        if (V + 1) ** n < 2 ** 62:
            keys = np.array([_key(ids, V) for ids in d], np.int64)
            kinds = np.array(list(d.values()), np.int8)
            order = np.argsort(keys)
            ngrams[n] = (keys[order], kinds[order])
        else:
            ngrams[n] = d
    subs = sorted(sub_kind, key=lambda s: (-len(s), s))
    return _CompiledList(
        vocab=pa.array(vocab, pa.string()),
        uni_kind=uni,
        ngrams=ngrams,
        max_n=max([1] + list(by_n)),
        sub_re2="|".join(_re2_literal(s) for s in subs) if subs else None,
        sub_rx=re.compile("|".join(re.escape(s) for s in subs)) if subs else None,
        sub_kind=sub_kind,
    )


def _key(ids: Sequence[int], V: int) -> int:
    k = 0
    for i in ids:
        k = k * (V + 1) + i
    return k


def match_wordlist(low: pa.Array, cl: _CompiledList) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hard hits, soft hits and covered words per row of lower-cased ``low``."""
    n = len(low)
    hard = np.zeros(n, np.int64)
    soft = np.zeros(n, np.int64)
    covered_words = np.zeros(n, np.int64)
    if n == 0:
        return hard, soft, covered_words
    # ---- word entries: tokens -> vocabulary ids -> n-gram lookups ----
    if len(cl.vocab):
        toks = pc.split_pattern_regex(low, _SPLIT_RE2)
        flat = pc.list_flatten(toks)
        row = np.asarray(pc.list_parent_indices(toks))
        ids = np.asarray(pc.fill_null(pc.index_in(flat, value_set=cl.vocab), -1), dtype=np.int64)
        V = len(cl.vocab)
        T = len(ids)
        covered = np.zeros(T, bool)
        invocab = ids >= 0
        for size in sorted(set(cl.ngrams) | {1}, reverse=True):
            if size > T:
                continue
            m = T - size + 1
            ok = invocab[:m].copy()
            for k in range(1, size):
                ok &= invocab[k:k + m]
                ok &= row[k:k + m] == row[:m]
            pos = np.flatnonzero(ok)
            if not len(pos):
                continue
            if size == 1:
                kinds = cl.uni_kind[ids[pos]]
            else:
                table = cl.ngrams[size]
                if isinstance(table, dict):
                    kinds = np.array([table.get(tuple(ids[p:p + size]), 0) for p in pos], np.int8)
                else:
                    keys = np.zeros(len(pos), np.int64)
                    for k in range(size):
                        keys = keys * (V + 1) + ids[pos + k]
                    sk, skind = table
                    j = np.clip(np.searchsorted(sk, keys), 0, len(sk) - 1)
                    kinds = np.where(sk[j] == keys, skind[j], 0).astype(np.int8)
            hit = kinds > 0
            pos, kinds = pos[hit], kinds[hit]
            if not len(pos):
                continue
            inside = np.ones(len(pos), bool)
            for k in range(size):
                inside &= covered[pos + k]
            pos, kinds = pos[~inside], kinds[~inside]
            for k in range(size):
                covered[pos + k] = True
            r = row[pos]
            hard += np.bincount(r[kinds == HARD], minlength=n)
            soft += np.bincount(r[kinds == SOFT], minlength=n)
        if covered.any():
            covered_words += np.bincount(row[covered], minlength=n)
    # ---- substring entries: RE2 finds the rows, Python walks their matches ----
    if cl.sub_re2 is not None:
        counts = np.asarray(pc.count_substring_regex(low, cl.sub_re2))
        for i in np.flatnonzero(counts):
            s = low[int(i)].as_py()
            for mt in cl.sub_rx.finditer(s):
                if cl.sub_kind[mt.group(0)] == HARD:
                    hard[i] += 1
                else:
                    soft[i] += 1
                covered_words[i] += sum(1 for ch in mt.group(0) if _is_unseg(ch)) or 1
    return hard, soft, covered_words


def count_words(low: pa.Array) -> np.ndarray:
    return np.asarray(pc.count_substring_regex(low, _WORD_RE2), dtype=np.int64)


class WordListScorer:
    """Word-list scores for Arrow string arrays, one compiled list per language."""

    def __init__(self, path: Optional[str] = None):
        self.path = path or DATA_DIR
        self.raw = load_wordlists(self.path)
        self._compiled: dict[str, _CompiledList] = {}

    @property
    def languages(self) -> list[str]:
        return sorted(self.raw)

    def compiled(self, lang: str) -> Optional[_CompiledList]:
        if lang not in self.raw:
            return None
        cl = self._compiled.get(lang)
        if cl is None:
            lists = self.raw[lang]
            cl = self._compiled[lang] = compile_wordlist(lists[HARD], lists[SOFT])
        return cl

    def score(self, text: pa.Array, languages: Optional[pa.Array] = None,
              default_language: str = "en") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(hard_hits int32, soft_hits int32, score float32)`` per row.

        ``languages``: per-row language codes (nulls use ``default_language``).
        """
        text = _as_string(text)
        n = len(text)
        low = pc.utf8_lower(text)
        hard = np.zeros(n, np.int64)
        soft = np.zeros(n, np.int64)
        covered = np.zeros(n, np.int64)
        default = normalize_language(default_language)
        if languages is None:
            groups = {default: None}
        else:
            if isinstance(languages, pa.ChunkedArray):
                languages = languages.combine_chunks()
            enc = pc.dictionary_encode(pc.fill_null(languages.cast(pa.string()), default_language))
            codes = np.asarray(enc.indices)
            groups = {}
            for j, value in enumerate(enc.dictionary.to_pylist()):
                key = normalize_language(value)
                idx = np.flatnonzero(codes == j)
                if len(idx):
                    groups.setdefault(key, []).append(idx)
            groups = {k: np.sort(np.concatenate(v)) for k, v in groups.items()}
            if len(groups) == 1 and len(next(iter(groups.values()))) == n:
                groups = {next(iter(groups)): None}
        for key, idx in groups.items():
            cl = self.compiled(key) if key else None
            if cl is None:
                continue
            sub = low if idx is None else low.take(pa.array(idx))
            h, s, c = match_wordlist(sub, cl)
            if idx is None:
                hard, soft, covered = h, s, c
            else:
                hard[idx], soft[idx], covered[idx] = h, s, c
        words = count_words(low)
        score = np.where(words > 0, covered / np.maximum(words, 1), 0.0)
        return hard.astype(np.int32), soft.astype(np.int32), np.minimum(score, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------
# classifier: preprocessing, linear model, loading
# --------------------------------------------------------------------------------------

PREPROCESS = "lower_punct_v1"


def normalize_for_classifier(text: pa.Array) -> pa.Array:
    """Lower-case, put spaces around punctuation/symbols, collapse whitespace.

    Used for training and scoring of the classifiers trained here (recorded as
    ``preprocess: lower_punct_v1`` in card.json), so ``fuck!`` and ``fuck`` are
    one token for fastText.
    """
    low = pc.utf8_lower(_as_string(text))
    sep = pc.replace_substring_regex(low, r"([^\p{L}\p{N}\p{M}\s])", " \\1 ")
    one = pc.replace_substring_regex(sep, r"\s+", " ")
    return pc.utf8_trim_whitespace(one)


class LinearModel:
    """TF-IDF (word 1..k-grams, sublinear tf, l2) + logistic regression, no pickle.

    Files: ``linear.json`` (settings and vocabulary) and ``linear.npz``
    (``idf``, ``coef``, ``intercept``; read with ``allow_pickle=False``).
    """

    def __init__(self, vocabulary: list[str], idf: np.ndarray, coef: np.ndarray,
                 intercept: float, ngram_max: int = 2):
        self.vocabulary = list(vocabulary)
        self.index = {t: i for i, t in enumerate(self.vocabulary)}
        self.idf = np.asarray(idf, np.float64)
        self.coef = np.asarray(coef, np.float64)
        self.intercept = float(intercept)
        self.ngram_max = int(ngram_max)

    @staticmethod
    def terms(tokens: list[str], ngram_max: int) -> Iterable[str]:
        for k in range(1, ngram_max + 1):
            for i in range(len(tokens) - k + 1):
                yield " ".join(tokens[i:i + k]) if k > 1 else tokens[i]

    @classmethod
    def fit_vocabulary(cls, docs: list[list[str]], ngram_max: int, min_df: int,
                       max_features: int) -> tuple[list[str], np.ndarray]:
        df: dict[str, int] = {}
        for toks in docs:
            for t in set(cls.terms(toks, ngram_max)):
                df[t] = df.get(t, 0) + 1
        items = [(c, t) for t, c in df.items() if c >= min_df]
        items.sort(key=lambda x: (-x[0], x[1]))
        items = items[:max_features]
        vocab = sorted(t for _, t in items)
        n = len(docs)
        idf = np.array([math.log((1 + n) / (1 + df[t])) + 1.0 for t in vocab])
        return vocab, idf

    @staticmethod
    def featurize(docs: list[list[str]], index: dict[str, int], idf: np.ndarray, ngram_max: int):
        """CSR parts (data, indices, indptr) of the l2-normalised tf-idf matrix."""
        data, indices, indptr = [], [], [0]
        for toks in docs:
            counts: dict[int, int] = {}
            for t in LinearModel.terms(toks, ngram_max):
                j = index.get(t)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            if counts:
                cols = np.fromiter(counts.keys(), np.int64, len(counts))
                tf = np.fromiter(counts.values(), np.float64, len(counts))
                vals = (1.0 + np.log(tf)) * idf[cols]
                vals /= np.sqrt((vals * vals).sum())
                data.append(vals)
                indices.append(cols)
            indptr.append(indptr[-1] + len(counts))
        data = np.concatenate(data) if data else np.zeros(0)
        indices = np.concatenate(indices) if indices else np.zeros(0, np.int64)
        return data, indices, np.asarray(indptr, np.int64)

    def predict_proba(self, text: pa.Array) -> np.ndarray:
        docs = [s.split(" ") if s else [] for s in normalize_for_classifier(text).to_pylist()]
        data, indices, indptr = self.featurize(docs, self.index, self.idf, self.ngram_max)
        # per-row dot products; a trailing 0 keeps reduceat's indices in range for
        # rows without any known term (their sum is masked to 0 below)
        contrib = np.append(data * self.coef[indices], 0.0)
        sums = np.add.reduceat(contrib, indptr[:-1]) if len(docs) else np.zeros(0)
        sums = np.where(np.diff(indptr) > 0, sums, 0.0)
        z = sums + self.intercept
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def save(self, out_dir: str, extra: Optional[dict] = None) -> list[str]:
        meta = {"kind": "linear", "format": 1, "preprocess": PREPROCESS,
                "features": "tfidf-word-ngrams-sublinear-l2", "ngram_max": self.ngram_max,
                "vocabulary": self.vocabulary}
        meta.update(extra or {})
        jp, npzp = os.path.join(out_dir, "linear.json"), os.path.join(out_dir, "linear.npz")
        with open(jp, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, ensure_ascii=False)
        np.savez(npzp, idf=self.idf.astype(np.float64), coef=self.coef.astype(np.float64),
                 intercept=np.array([self.intercept]))
        return [jp, npzp]

    @classmethod
    def load(cls, path: str) -> LinearModel:
        d = path if os.path.isdir(path) else os.path.dirname(path)
        jp, npzp = os.path.join(d, "linear.json"), os.path.join(d, "linear.npz")
        for p in (jp, npzp):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"linear toxicity model: {p!r} not found")
        try:
            with open(jp, encoding="utf-8") as fh:
                meta = json.load(fh)
            with np.load(npzp, allow_pickle=False) as z:
                idf, coef, intercept = z["idf"], z["coef"], float(z["intercept"][0])
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"linear toxicity model in {d!r} is corrupt: {e}") from e
        if meta.get("kind") != "linear" or len(meta.get("vocabulary", [])) != len(coef) or len(idf) != len(coef):
            raise ValueError(f"linear toxicity model in {d!r} is inconsistent (vocabulary/weights sizes)")
        return cls(meta["vocabulary"], idf, coef, intercept, meta.get("ngram_max", 2))


def _read_card(model_path: str) -> dict:
    d = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
    p = os.path.join(d, "card.json")
    if os.path.isfile(p):
        try:
            with open(p, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}
    return {}


class ToxicityClassifier:
    """A loaded classifier: ``predict(text) -> float32 P(toxic)``."""

    def __init__(self, path: str, label: Optional[str] = None, engine: str = "native"):
        self.path = path
        card = _read_card(path)
        target = path
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, "toxicity.bin")):
                target = os.path.join(path, "toxicity.bin")
            elif os.path.isfile(os.path.join(path, "toxicity.ftz")):
                target = os.path.join(path, "toxicity.ftz")
            elif os.path.isfile(os.path.join(path, "linear.json")):
                target = os.path.join(path, "linear.json")
            else:
                raise ftu.FastTextModelError(
                    path, "directory has no toxicity.bin, toxicity.ftz or linear.json")
        self.kind = "linear" if target.endswith(".json") or target.endswith(".npz") else "fasttext"
        self.preprocess = card.get("preprocess") if card else None
        if self.kind == "linear":
            self.linear = LinearModel.load(target)
            self.model = None
            self.label = None
            return
        self.model = ftu.load_classifier(target, engine)
        labels = ftu.model_labels(self.model)
        want = label or card.get("positive_label") or ("toxic" if "toxic" in labels else None)
        if want is None or ftu.normalize_label(want) not in labels:
            raise ValueError(
                f"toxicity model {target!r}: cannot tell which label means toxic "
                f"(labels: {labels[:10]}); set the stage's 'model_label'")
        self.label = ftu.normalize_label(want)

    def predict(self, text: pa.Array) -> np.ndarray:
        if self.kind == "linear":
            return self.linear.predict_proba(text)
        if self.preprocess == PREPROCESS:
            text = normalize_for_classifier(text)
        return ftu.predict_label_prob(self.model, text, self.label)


# --------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------


@register
class ToxicityStage(LocalStage):
    name = "toxicity"
    doc = ("Word-list hits (hard/soft lists per language) plus optional trained classifier "
           "and alt-profanity-check scores.")
    params = {
        "wordlists": Param(str, None, nullable=True,
                           doc="directory of <lang>.hard.txt / <lang>.soft.txt / <lang>.txt lists; "
                               "null = lists shipped with thresher (from LDNOOBW)"),
        "language_column": Param(str, "language",
                                 doc="column with each row's language (from the language stage); "
                                     "rows use default_language when it is absent or null"),
        "default_language": Param(str, "en", doc="language of rows without a language column/value"),
        "max_hard_hits": Param(int, 0, nullable=True, check=between(0),
                               doc="reject when hard-list hits exceed this; null = never"),
        "min_soft_hits": Param(int, 3, nullable=True, check=between(1),
                               doc="reject when soft-list hits reach this; null = never"),
        "model": Param(str, None, nullable=True,
                       doc="trained classifier: toxicity.bin/.ftz, a fastText model, or the output "
                           "directory of `thresher toxicity train`; null = no classifier"),
        "model_label": Param(str, None, nullable=True,
                             doc="label of the toxic class in a fastText model (default: from "
                                 "card.json, else 'toxic')"),
        "threshold": Param(float, 0.5, check=between(0.0, 1.0),
                           doc="reject when the classifier's P(toxic) >= threshold"),
        "engine": Param(str, "native", check=one_of(*ftu.ENGINES),
                        doc="fastText classifier: native (thresher's vectorised inference, same "
                            "scores) or fasttext (the fastText package)"),
        "profanity_check": Param(bool, False,
                                 doc="also score with alt-profanity-check (column toxicity_profanity)"),
        "profanity_threshold": Param(float, None, nullable=True, check=between(0.0, 1.0),
                                     doc="reject when toxicity_profanity >= this; null = score only"),
    }
    reasons = {"hard_word": "hard-list hits exceed `max_hard_hits`",
               "soft_words": "soft-list hits reach `min_soft_hits`",
               "classifier": "the classifier's P(toxic) >= `threshold`",
               "profanity": "toxicity_profanity >= `profanity_threshold`"}
    default_order = 70
    cpu_ns_per_byte = 40  # benchmarks/results (filters.txt, langid.txt, dedup_100k.json)
    _loaded = ("_words", "_clf", "_profanity")
    columns = (
        Column(TOXICITY_HARD_HITS, pa.int32(), "occurrences of hard-list entries"),
        Column(TOXICITY_SOFT_HITS, pa.int32(), "occurrences of soft-list entries"),
        Column(TOXICITY_WORDLIST_SCORE, pa.float32(), "words covered by hits / words"),
        Column(TOXICITY_SCORE, pa.float32(), "P(toxic) of the trained classifier (with `model`)"),
        Column(TOXICITY_PROFANITY, pa.float32(), "alt-profanity-check probability (with `profanity_check`)"),
    )

    @classmethod
    def check_params(cls, params: dict[str, Any], prefix: str) -> None:
        if params.get("profanity_threshold") is not None and not params.get("profanity_check"):
            raise ParamError(prefix + "profanity_threshold", "needs profanity_check: true")
        for key in ("wordlists", "model"):
            p = params.get(key)
            if p is not None and not os.path.exists(p):
                raise ParamError(prefix + key, f"path {p!r} does not exist")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._words: Optional[WordListScorer] = None
        self._clf: Optional[ToxicityClassifier] = None
        self._profanity = None

    def active_columns(self) -> list[Column]:
        out = list(self.columns[:3])
        if self.config["model"]:
            out.append(self.columns[3])
        if self.config["profanity_check"]:
            out.append(self.columns[4])
        return out

    def setup(self) -> None:
        if self._words is None:
            self._words = WordListScorer(self.config["wordlists"])
        if self.config["model"] and self._clf is None:
            self._clf = ToxicityClassifier(self.config["model"], self.config["model_label"],
                                           self.config["engine"])
        if self.config["profanity_check"] and self._profanity is None:
            self._profanity = load_profanity_check()

    def process(self, text: pa.Array, batch: pa.Table) -> StageOutput:
        if self._words is None:
            self.setup()
        n = len(text)
        col = self.config["language_column"]
        langs = batch.column(col) if col and col in batch.column_names else None
        hard, soft, score = self._words.score(text, langs, self.config["default_language"])
        columns = {
            TOXICITY_HARD_HITS: pa.array(hard, pa.int32()),
            TOXICITY_SOFT_HITS: pa.array(soft, pa.int32()),
            TOXICITY_WORDLIST_SCORE: pa.array(score, pa.float32()),
        }
        masks = []
        if self.config["max_hard_hits"] is not None:
            masks.append((hard > self.config["max_hard_hits"], self.reason("hard_word")))
        if self.config["min_soft_hits"] is not None:
            masks.append((soft >= self.config["min_soft_hits"], self.reason("soft_words")))
        if self._clf is not None:
            p = self._clf.predict(text)
            columns[TOXICITY_SCORE] = pa.array(p, pa.float32())
            masks.append((p >= np.float32(self.config["threshold"]), self.reason("classifier")))
        if self._profanity is not None:
            q = self._profanity(text)
            columns[TOXICITY_PROFANITY] = pa.array(q, pa.float32())
            if self.config["profanity_threshold"] is not None:
                masks.append((q >= np.float32(self.config["profanity_threshold"]),
                              self.reason("profanity")))
        return StageOutput(columns=columns, reasons=first_reason(n, masks))


def load_profanity_check():
    """A ``text -> float32 probability`` function backed by alt-profanity-check.

    The package loads its vectorizer and model with joblib (pickle) from its own
    installed files at import time. That is acceptable only because the package
    is a pinned dependency from PyPI; never point joblib at files from elsewhere.
    """
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # sklearn version notes about the pickled model
            import profanity_check  # noqa: WPS433
    except ImportError as e:
        raise ImportError("profanity_check: true needs the 'alt-profanity-check' package "
                          "(`pip install alt-profanity-check`)") from e

    def score(text: pa.Array) -> np.ndarray:
        texts = text.to_pylist()
        if not texts:
            return np.zeros(0, np.float32)
        return np.asarray(profanity_check.predict_prob(texts), dtype=np.float32)

    return score
