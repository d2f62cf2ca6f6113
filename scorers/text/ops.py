"""Vectorised text helpers shared by the heuristic stages (no Beam, no per-document loops).

Everything here takes a whole Arrow batch (``pa.StringArray`` or ``pa.LargeStringArray``)
and returns Arrow arrays or numpy arrays aligned with the batch. Regular expressions are
RE2 (``pyarrow.compute``), compiled by Arrow once per call.

Word splitting
--------------
:func:`tokenize` is a rule-based word splitter for space-delimited scripts, modelled on
the behaviour of the rule-based English tokenizer the reference filters use (so that word
counts, mean word lengths and n-grams agree with it on real text). Its rules, in order:

1. Characters of scripts written without spaces that are safe to split per character
   (Han, Hiragana, Katakana, Bopomofo) become one word each.
2. The text is split on Unicode whitespace.
3. Each piece is split into *leading punctuation* (opening brackets, quotes, currency
   signs and most punctuation marks, each its own word), a *core*, and *trailing
   punctuation* (closing brackets, quotes, ``, ; : ! ?``, dots; each its own word except
   that a run of dots, and punctuation-only emoticons such as ``):``, stay one word). A
   trailing single ``.`` stays on the core unless it follows a lower-case or uncased
   letter, a digit, ``% ² - + |``, a punctuation mark, or two capitals; so ``U.S.`` and
   the initial ``J.`` stay whole; a short list of abbreviations (``e.g.``, ``Mr.``,
   ``Jan.``, single lower-case letters ...) keeps its dot, and a ``.`` right after a dash
   is never split off. A leading ``+`` stays on a number (``+49``).
4. Inside the core, unless it is a URL, a host or file name (``file.tar.gz``) or an e-mail
   address, these become separate words ("infixes"): a hyphen, dash or tilde between a
   letter or digit and a letter; a comma between letters; ``: < > = /`` between a letter
   or digit and a letter; ``+ - * ^`` between two digits; a dot between a lower-case and
   an upper-case letter; a run of dots; a symbol (emoji, box drawing ...).
5. English clitics are split: ``don't`` -> ``do n't``, ``I'm`` -> ``I 'm``, ``they're``
   -> ``they 're``, ``John's`` -> ``John 's`` (also apostrophe-less spellings such as
   ``dont``, ``im``); so is a unit or currency sign after a number (``10km`` -> ``10 km``,
   ``50%`` -> ``50 %``, ``US$5`` -> ``US$ 5``).

On 6,000 documents of the project's test corpora the words are identical to the
reference tokenizer's for 99.2 % of documents; nearly all the rest contain Han/kana text,
which the reference keeps in runs (see rule 1).

Words are never empty and never contain whitespace.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.scorers.text import arrays as _arrays

# ----------------------------------------------------------------------------------------
# character classes (RE2 syntax)
# ----------------------------------------------------------------------------------------


def char_class(chars: str) -> str:
    """Characters as the inside of an RE2 character class (every char escaped)."""
    return "".join(f"\\x{{{ord(c):X}}}" for c in dict.fromkeys(chars))


def regex_literal(s: str) -> str:
    """A literal string as an RE2 pattern (every char escaped)."""
    return "".join(f"\\x{{{ord(c):X}}}" for c in s)


def _ranges_cls(spec: str) -> str:
    """``"21,2E,61D-61F"`` -> RE2 class body."""
    out = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.append(f"\\x{{{a}}}-\\x{{{b}}}")
        else:
            out.append(f"\\x{{{part}}}")
    return "".join(out)


# Unicode Sentence_Terminal property (Unicode 15.1), as code point ranges.
_STERM_RANGES = (
    "21,2E,3F,589,61D-61F,6D4,700-702,7F9,837,839,83D-83E,964-965,104A-104B,1362,1367-1368,"
    "166E,1735-1736,17D4-17D5,1803,1809,1944-1945,1AA8-1AAB,1B4E-1B4F,1B5A-1B5B,1B5E-1B5F,"
    "1B7D-1B7F,1C3B-1C3C,1C7E-1C7F,2024,203C-203D,2047-2049,2CF9-2CFB,2E2E,2E3C,2E53-2E54,"
    "2E60-2E61,3002,A4FF,A60E-A60F,A6F3,A6F7,A876-A877,A8CE-A8CF,A92F,A9C8-A9C9,AA5D-AA5F,"
    "AAF0-AAF1,ABEB,FE12,FE15-FE16,FE52,FE56-FE57,FF01,FF0E,FF1F,FF61,10A56-10A57,"
    "10F55-10F59,10F86-10F89,11047-11048,110BE-110C1,11141-11143,111C5-111C6,111CD,"
    "111DE-111DF,11238-11239,1123B-1123C,112A9,113D4-113D5,1144B-1144C,115C2-115C3,"
    "115C9-115D7,11641-11642,1173C-1173E,11944,11946,11A42-11A43,11A9B-11A9C,11C41-11C42,"
    "11EF7-11EF8,11F43-11F44,16A6E-16A6F,16AF5,16B37-16B38,16B44,16D6E-16D6F,16E98,1BC9F,"
    "1DA88"
)
#: RE2 class body of sentence-terminal characters (``. ! ? 。 ！ ？ ։ ؟ ۔ । ...``).
STERM_CLASS = _ranges_cls(_STERM_RANGES)


# Scripts written without spaces. Han/kana/bopomofo characters are words on their own;
# the others need a dictionary segmenter, so word-based rules are skipped for them.
CJK_CLASS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Bopomofo}"
UNSEGMENTED_CLASS = r"\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"

_PUNCT = ",:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪…"
_QUOTES = "'\"”“`‘´’‚„»«「」『』（）〔〕【】《》〈〉⟦⟧"
_CURRENCY = "$£€¥฿₽﷼₴" + "".join(chr(c) for c in range(0x20A0, 0x20C1))
_HYPHENS = "-–—~"

_PREFIX_CHARS = "".join(dict.fromkeys(_PUNCT + _QUOTES + _CURRENCY + "§%=—–+"))
_SUFFIX_CHARS = "".join(dict.fromkeys(_PUNCT + _QUOTES + "—–."))
# scripts without letter case: their letters count as both lower and upper case
_UNCASED = (r"\p{Ethiopic}\p{Bengali}\p{Hebrew}\p{Arabic}\p{Sinhala}\p{Devanagari}"
            r"\p{Kannada}\p{Tamil}\p{Telugu}\p{Hangul}\p{Hiragana}\p{Katakana}\p{Han}")
_LOWER = r"\p{Ll}" + _UNCASED
_UPPER = r"\p{Lu}" + _UNCASED
# characters after which a final "." is split off
_DOT_SPLIT_AFTER = _LOWER + r"\p{Nd}" + char_class("%²-+|" + _PUNCT + _QUOTES)

# emoticons made only of punctuation stay one word when they appear among the
# leading or trailing punctuation (e.g. "(x):" -> "(", "x", "):")
_EMOTICONS = sorted(
    "): (: :( :) ;) (; =) (= :* '' :] [: =] [= =( ]= :> :} :)) :))) :(( :((( :'( :') >:(".split(),
    key=len, reverse=True)
_EMO_ALT = "|".join(regex_literal(e) for e in _EMOTICONS)
_PIECES_PRE = (r"(\.\.+|US\$|[CA]\$|" + _EMO_ALT + r"|.)", r"\1 ")
_PIECES_SUF = (r"(\.\.+|['’][sS]|" + _EMO_ALT + r"|.)", r" \1")

# "." kept on the word: abbreviations whose dot is part of the word
_ABBREVIATIONS = sorted(set(
    [f"{c}." for c in "abcdefghijklmnopqrstuvwxyzäöü"]
    + "a.m. p.m. e.g. i.e. vs. v.s. co. E.g. E.G. I.e. I.E. Mr. Mrs. Ms. Dr. Prof. St. Mt. Jr. "
      "Rev. Gen. Gov. Sen. Rep. Adm. Inc. Ltd. Co. Corp. Bros. Messrs. Ph.D. D.C. "
      "Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec. "
      "Ala. Ariz. Ark. Calif. Colo. Conn. Del. Fla. Ga. Ill. Ind. Kan. Kans. Ky. La. Md. "
      "Mass. Mich. Minn. Miss. Mo. Mont. Neb. Nebr. Nev. N.C. N.D. N.H. N.J. N.M. N.Y. "
      "Okla. Ore. Pa. S.C. Tenn. Va. Wash. Wis. Ak. Ia. Id.".split()
))

# whole words never split (emoticons and a few fixed spellings)
_WHOLE_WORDS = sorted(set(
    ":) :-) :( :-( ;) ;-) :D :-D :P :-P :p :-p :/ :-/ :| :-| :o :O :-O :* :-* :') :'( "
    "=) =( =D =] =[ <3 </3 XD xD ^_^ -_- o.O O.o o_O O_o ._. :3 8) 8-) (: ): (; "
    "C++ and/or w/o 's 'S ’s ’S 'd 'll 're 've 'm 'em ’d ’ll ’re ’ve ’m ’em 'cause n't".split()
))

# English clitics: (base words, clitic) -> the word splits before the clitic
_NEG_BASES = (
    "do does did is are was were has have had could should would might must need dare may "
    "ought ca wo sha ai"
).split()
_PRON_BASES = (
    "i you he she it we they that this these those there what when where who why how"
).split()
_NOAPOS = {  # spellings without apostrophe -> split position
    **{b + "nt": len(b) for b in "do does did is are was were has have had could should would "
       "might must need ca wo ai".split()},
    "im": 1, "ive": 1, "youre": 3, "youve": 3, "youll": 3, "youd": 3, "theyre": 4, "theyve": 4,
    "theyll": 4, "theyd": 4, "thats": 4, "whats": 4, "hes": 2, "id": 1, "wed": 2, "hed": 2,
    "itll": 2, "itd": 2, "weve": 2, "cannot": 3, "gonna": 3, "gotta": 3, "theres": 5,
    "wheres": 5, "whos": 3, "hows": 3,
}


def _both_cases(words) -> list[str]:
    return sorted({w for x in words for w in (x, x[:1].upper() + x[1:])})


_NOAPOS_WORDS = _both_cases(_NOAPOS)
_NOAPOS_RE = (
    "^(" + "|".join(f"[{w[0].upper()}{w[0]}]{w[1:p]}" for w, p in _NOAPOS.items()) + ")"
    "(nt|re|ve|ll|d|m|s|not|na|ta)$"
)
_APOS = "['’]"
_CLITIC_RE = (
    "^((?:" + "|".join(f"[{b[0].upper()}{b[0]}]{b[1:]}" for b in _NEG_BASES) + f")(?:n{_APOS}t)?"
    "|(?:" + "|".join(f"[{b[0].upper()}{b[0]}]{b[1:]}" for b in _PRON_BASES) + "))"
    f"(n{_APOS}t|{_APOS}(?:d|ll|re|ve|m))$"
)

_UNITS = (
    "km² km³ km cm² cm³ cm mm² mm³ mm dm² dm³ dm m² m³ m ha µm nm yd in ft kg mg µg g t lb oz "
    "m/s km/h kmh mph hPa Pa mbar mb MB kb KB gb GB tb TB T G M K %"
).split()
_UNIT_RE = (
    r"^(.*\p{Nd})(" + "|".join(sorted((u.replace("/", r"\/") for u in _UNITS), key=len,
                                       reverse=True))
    + "|[" + char_class(_CURRENCY) + r"]|\+)$"
)

# a letters-and-digits piece that ends in a unit after a digit ("10km")
_UNIT_TAIL = r"\p{Nd}(?:" + "|".join(sorted((u for u in _UNITS if u.isalpha()), key=len, reverse=True)) + ")$"

# a core that looks like a URL, a host or file name with a lower-case suffix, or an
# e-mail address is not split inside
_HOST_CH = r"A-Za-z0-9\x{A1}-\x{FFFF}"
_URL_RE = (
    r"^(?:[\w+.-]{2,}://)?(?:\S+(?::\S*)?@)?"
    r"(?:(?:[" + _HOST_CH + r"][" + _HOST_CH + r"_-]*)?[" + _HOST_CH + r"]\.)+"
    r"[\p{Ll}\p{Lo}]{2,}(?::\d{2,5})?(?:[/?#]\S*)?$"
)

_INFIX_PASSES = (
    # letter hyphen/comma/colon... letter ; digit : < > = / letter
    (r"([\p{L}\p{Nd}])(---|--|——|[" + char_class(_HYPHENS + ":<>=/") + r"])(\p{L})"
     r"|(\p{L})(,)(\p{L})", r"\1\4 \2\5 \3\6"),
    # digit op digit ; lower . Upper
    (r"(\p{Nd})([" + char_class("+-*^") + r"])([\p{Nd}\-])"
     r"|([" + _LOWER + char_class(_QUOTES) + r"])(\.)([" + _UPPER + char_class(_QUOTES) + r"])",
     r"\1\4 \2\5 \3\6"),
)
_INFIX_ANY = (r"(\.\.+|…|\p{So})", r" \1 ")
_LETTER_DOT = (r"(^|\s)([a-zäöü]) \.(\s|$)", r"\1\2.\3")
_INFIX_CANDIDATE = r"[" + char_class(_HYPHENS + ",:<>=/+*^.…") + r"\p{So}]"


# ----------------------------------------------------------------------------------------
# basic helpers
# ----------------------------------------------------------------------------------------


# one copy of the array helpers, in thresher.scorers.text.arrays
as_array = _arrays.as_array


def as_string(text) -> pa.Array:
    """A contiguous ``pa.string()`` array (large strings are cast; a batch holds < 2 GiB)."""
    return _arrays.as_string_array(text)


def list_parts(lists: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(flat values, parent index per value, offsets of length n+1) of a list array."""
    lists = as_array(lists)
    flat = pc.list_flatten(lists)
    parents = np.asarray(pc.list_parent_indices(lists)) if len(flat) else np.zeros(0, np.int64)
    counts = np.asarray(pc.fill_null(pc.list_value_length(lists), 0), dtype=np.int64)
    offsets = np.zeros(len(lists) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return flat, parents.astype(np.int64, copy=False), offsets


def lengths(strings: pa.Array) -> np.ndarray:
    """Code point length of every string, as int64 numpy."""
    if len(strings) == 0:
        return np.zeros(0, np.int64)
    return np.asarray(pc.fill_null(pc.utf8_length(strings), 0), dtype=np.int64)


def per_doc_sum(values: np.ndarray, parents: np.ndarray, n: int) -> np.ndarray:
    """Sum of ``values`` per parent document (float64 of length n)."""
    if len(parents) == 0:
        return np.zeros(n, np.float64)
    return np.bincount(parents, weights=values, minlength=n)


def per_doc_count(mask: np.ndarray, parents: np.ndarray, n: int) -> np.ndarray:
    """Number of True values per parent (int64 of length n)."""
    if len(parents) == 0:
        return np.zeros(n, np.int64)
    return np.bincount(parents[mask], minlength=n).astype(np.int64)


def to_bool(arr) -> np.ndarray:
    """Boolean Arrow array -> numpy bool (nulls are False)."""
    arr = as_array(arr)
    if len(arr) == 0:
        return np.zeros(0, bool)
    return np.asarray(pc.fill_null(arr, False), dtype=bool)


def count_regex(text: pa.Array, pattern: str) -> np.ndarray:
    return np.asarray(pc.count_substring_regex(text, pattern), dtype=np.int64)


def count_literal(text: pa.Array, needle: str) -> np.ndarray:
    return np.asarray(pc.count_substring(text, needle), dtype=np.int64)


@dataclasses.dataclass
class Repeats:
    """Keys that occur more than once, found by sorting (see :func:`repeats`)."""

    pos: np.ndarray     # indices (ascending) of every key that occurs at least twice
    gid: np.ndarray     # group of equal keys, per index (dense ids)
    first: np.ndarray   # True at the first index of its group
    size: np.ndarray    # number of occurrences of the key, per index
    n_groups: int


def _bits(n: int) -> int:
    return max(1, int(n).bit_length())


def argsort_nonneg(a: np.ndarray) -> np.ndarray:
    """``np.argsort(a, kind="stable")`` for non-negative integers, via a packed value sort.

    numpy's value sort is vectorised (much faster than argsort); the index rides in the low
    bits of each packed value, which also makes the order stable.
    """
    a = np.asarray(a)
    m = len(a)
    if m == 0:
        return np.zeros(0, np.int64)
    b = _bits(m - 1)
    hi = int(a.max())
    if _bits(hi) + b > 64:
        return np.argsort(a, kind="stable")
    packed = (a.astype(np.uint64) << np.uint64(b)) | np.arange(m, dtype=np.uint64)
    packed.sort()
    return (packed & np.uint64((1 << b) - 1)).astype(np.int64)


def repeats(keys: np.ndarray) -> Repeats:
    """Group equal uint64 keys; return the indices of keys that occur at least twice.

    The high bits of each key and its index are packed into one uint64 and sorted with
    numpy's vectorised sort, which orders equal keys by index. Keys that agree in the high
    bits but differ in full are re-sorted exactly (rare).
    """
    keys = np.asarray(keys, np.uint64)
    N = len(keys)
    if N == 0:
        z = np.zeros(0, np.int64)
        return Repeats(z, z, np.zeros(0, bool), z, 0)
    b = np.uint64(_bits(N - 1))
    low = (np.uint64(1) << b) - np.uint64(1)
    s = keys & ~low
    s |= np.arange(N, dtype=np.uint64)
    s.sort()
    pos = (s & low).view(np.int64)
    s >>= b
    hb = s
    same = hb[1:] == hb[:-1]          # element i+1 continues the group of element i
    multi = np.zeros(N, bool)
    multi[1:] = same
    multi[:-1] |= same
    if not multi.any():
        z = np.zeros(0, np.int64)
        return Repeats(z, z, np.zeros(0, bool), z, 0)
    # the high bits agree within a group: check the full keys (differences are rare)
    mi = np.flatnonzero(multi)
    fk = keys[pos[mi]]
    bad = np.flatnonzero(same[mi[1:] - 1] & (fk[1:] != fk[:-1]) if len(mi) > 1 else np.zeros(0, bool))
    if len(bad):
        bid = np.cumsum(np.r_[True, ~same])
        bad_blocks = np.unique(bid[mi[bad + 1]])
        sel = np.flatnonzero(np.isin(bid, bad_blocks))
        sub = pos[sel]
        order = np.lexsort((sub, keys[sub]))
        pos[sel] = sub[order]
        k2 = keys[pos[sel]]
        # within the re-sorted blocks, groups are runs of equal full keys
        same_sel = np.r_[k2[1:] == k2[:-1], False][:-1] if len(sel) > 1 else np.zeros(0, bool)
        inner = np.flatnonzero(np.diff(sel) == 1)
        same[sel[inner]] = same_sel[inner]
        multi[:] = False
        multi[1:] = same
        multi[:-1] |= same
    first = np.ones(N, bool)
    first[1:] = ~same
    pos2 = pos[multi]
    first2 = first[multi]
    gid = np.cumsum(first2) - 1
    gs = np.flatnonzero(first2)
    sizes = np.diff(np.r_[gs, len(pos2)])
    # back to index order: (index, group, first) packed in one uint64, value-sorted
    if N < 2**31:
        packed = pos2.view(np.uint64) << np.uint64(32)
        g2 = gid.view(np.uint64)
        g2 <<= np.uint64(1)
        packed |= g2
        packed |= first2
        del g2
        packed.sort()
        out_first = (packed & np.uint64(1)).astype(bool)
        out_gid = ((packed >> np.uint64(1)) & np.uint64(0x7FFFFFFF)).view(np.int64)
        packed >>= np.uint64(32)
        out_pos = packed.view(np.int64)
    else:
        order = argsort_nonneg(pos2)
        out_pos, out_gid, out_first = pos2[order], gid[order], first2[order]
    return Repeats(out_pos, out_gid, out_first, sizes[out_gid], len(gs))


def first_occurrence(keys: np.ndarray) -> np.ndarray:
    """True where a uint64 key is seen for the first time."""
    out = np.ones(len(keys), bool)
    r = repeats(keys)
    out[r.pos[~r.first]] = False
    return out


def dictionary_ids(values) -> tuple[np.ndarray, int]:
    """Dense int64 ids (first-appearance order) and the number of distinct values."""
    if len(values) == 0:
        return np.zeros(0, np.int64), 0
    enc = pc.dictionary_encode(pa.array(values) if isinstance(values, np.ndarray) else values)
    return np.asarray(enc.indices, dtype=np.int64), len(enc.dictionary)


_RNG_TABLE: dict[int, np.ndarray] = {}


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-mixed uint64 hash of each uint64."""
    z = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def keyed_in_doc(parents: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """One uint64 key per (document, id) pair (collision probability ~2^-64 per pair)."""
    with np.errstate(over="ignore"):
        return _mix64(parents.astype(np.uint64)) * np.uint64(0x2545F4914F6CDD1D) + _mix64(
            ids.astype(np.uint64))


# ----------------------------------------------------------------------------------------
# lines and paragraphs
# ----------------------------------------------------------------------------------------

#: line breaks recognised by Python's str.splitlines()
LINEBREAK_RE = "\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]"


def split_lines(text: pa.Array, pattern: str = LINEBREAK_RE, splitlines: bool = True) -> pa.Array:
    """Lines of every document as a list array.

    ``splitlines=True`` mimics ``str.splitlines()``: a final line break does not start an
    extra empty line, and the empty string has no lines. With ``splitlines=False`` the
    result is that of ``re.split(pattern, text)`` (always at least one element).
    """
    text = as_array(text)
    lists = pc.split_pattern_regex(text, pattern)
    if not splitlines or len(text) == 0:
        return lists
    # drop the trailing "" produced by a final line break (or by the empty document)
    flat, parents, offsets = list_parts(lists)
    last = offsets[1:] - 1
    flen = lengths(flat)
    drop = np.zeros(len(flat), bool)
    has = offsets[1:] > offsets[:-1]
    drop[last[has]] = flen[last[has]] == 0
    if not drop.any():
        return lists
    keep = ~drop
    new_counts = np.bincount(parents[keep], minlength=len(text))
    new_off = np.zeros(len(text) + 1, np.int32)
    np.cumsum(new_counts, out=new_off[1:])
    return pa.ListArray.from_arrays(pa.array(new_off), flat.filter(pa.array(keep)))


def duplicate_stats(lists: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per document: (number of items, number of repeated items, characters in repeated items).

    An item is *repeated* when an identical item occurs earlier in the same document (the
    first occurrence is not counted; every later copy is).
    """
    flat, parents, offsets = list_parts(lists)
    n = len(offsets) - 1
    counts = np.diff(offsets)
    if len(flat) == 0:
        z = np.zeros(n, np.int64)
        return counts, z, z.copy()
    ids, _ = dictionary_ids(flat)
    first = first_occurrence(keyed_in_doc(parents, ids))
    dup = ~first
    ndup = per_doc_count(dup, parents, n)
    dchars = per_doc_sum(np.where(dup, lengths(flat), 0), parents, n).astype(np.int64)
    return counts, ndup, dchars


# ----------------------------------------------------------------------------------------
# scripts
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class ScriptInfo:
    letters: np.ndarray       # letters per document
    cjk: np.ndarray           # Han/kana/bopomofo characters per document
    unsegmented: np.ndarray   # Thai/Lao/Khmer/Myanmar/Tibetan characters per document

    def no_space(self, min_share: float = 0.3) -> np.ndarray:
        """Documents written mostly in a script without spaces between words."""
        return (self.cjk + self.unsegmented) > min_share * np.maximum(self.letters, 1)

    def unsegmented_doc(self, min_share: float = 0.3) -> np.ndarray:
        """Documents whose words cannot be found without a dictionary segmenter."""
        return self.unsegmented > min_share * np.maximum(self.letters, 1)


def script_info(text: pa.Array) -> ScriptInfo:
    text = as_string(text)
    n = len(text)
    cjk = np.zeros(n, np.int64)
    uns = np.zeros(n, np.int64)
    letters = np.zeros(n, np.int64)
    if n == 0:
        return ScriptInfo(letters, cjk, uns)
    # cheap test first: only documents with any non-Latin letters are counted in detail
    cand = to_bool(pc.match_substring_regex(text, "[" + CJK_CLASS + UNSEGMENTED_CLASS + "]"))
    if cand.any():
        idx = np.flatnonzero(cand)
        sub = text.take(pa.array(idx))
        cjk[idx] = count_regex(sub, "[" + CJK_CLASS + "]")
        uns[idx] = count_regex(sub, "[" + UNSEGMENTED_CLASS + "]")
        letters[idx] = count_regex(sub, r"\p{L}")
    return ScriptInfo(letters, cjk, uns)


# ----------------------------------------------------------------------------------------
# word splitting
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Words:
    """Words of a batch of documents, flattened."""

    words: pa.Array          # string array of all words, document after document
    parents: np.ndarray      # document index of every word (int64)
    offsets: np.ndarray      # words of document i are words[offsets[i]:offsets[i+1]]
    _lengths: Optional[np.ndarray] = None

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def lengths(self) -> np.ndarray:
        if self._lengths is None:
            self._lengths = lengths(self.words)
        return self._lengths

    def mask(self, pattern: str) -> np.ndarray:
        """Words that contain a match of the RE2 ``pattern``."""
        if len(self.words) == 0:
            return np.zeros(0, bool)
        return to_bool(pc.match_substring_regex(self.words, pattern))

    def full_mask(self, pattern: str) -> np.ndarray:
        """Words that match ``pattern`` entirely."""
        return self.mask("^(?:" + pattern + ")$")


def _replace(arr: pa.Array, rule: tuple[str, str]) -> pa.Array:
    return pc.replace_substring_regex(arr, rule[0], rule[1])


def _on(mask: np.ndarray, arr: pa.Array, fn) -> pa.Array:
    """``fn`` applied to the rows of ``arr`` where ``mask`` holds (others unchanged)."""
    if not mask.any():
        return arr
    if mask.all():
        return fn(arr)
    m = pa.array(mask)
    return pc.replace_with_mask(arr, m, fn(arr.filter(m)))


def _cut(arr: pa.Array, at: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """Split every string at a byte position: (head, tail), zero-copy then compacted."""
    n = len(arr)
    large = pa.types.is_large_string(arr.type)
    odt = np.int64 if large else np.int32
    offs = np.frombuffer(arr.buffers()[1], dtype=odt)[arr.offset: arr.offset + n + 1]
    inter = np.empty(2 * n + 1, odt)
    inter[0::2] = offs
    inter[1::2] = offs[:-1] + at.astype(odt)
    cls = pa.LargeStringArray if large else pa.StringArray
    both = cls.from_buffers(2 * n, pa.py_buffer(inter), arr.buffers()[2])
    return both.take(pa.array(np.arange(0, 2 * n, 2))), both.take(pa.array(np.arange(1, 2 * n, 2)))


def _blen(arr: pa.Array) -> np.ndarray:
    return np.asarray(pc.binary_length(arr), dtype=np.int64)


def _infix(a: pa.Array) -> pa.Array:
    for rule in _INFIX_PASSES:
        # twice: a match consumes its right context ("a-b-c")
        for _ in range(2):
            a = _on(to_bool(pc.match_substring_regex(a, rule[0])), a, lambda x, rule=rule: _replace(x, rule))
    a = _on(to_bool(pc.match_substring_regex(a, _INFIX_ANY[0])), a, lambda x: _replace(x, _INFIX_ANY))
    # a single lower-case letter split off keeps its dot ("a.C." -> "a. C.")
    return _on(to_bool(pc.match_substring_regex(a, _LETTER_DOT[0])), a, lambda x: _replace(x, _LETTER_DOT))


def _core_rules(core: pa.Array) -> pa.Array:
    """Infixes, clitics and units inside cores (fixed words and URLs stay whole)."""
    whole = to_bool(pc.is_in(core, value_set=pa.array(_WHOLE_WORDS, core.type)))
    dotted = ~whole & to_bool(pc.match_substring_regex(core, r"[.@]"))
    if dotted.any():
        idx = np.flatnonzero(dotted)
        whole[idx] = to_bool(pc.match_substring_regex(core.take(pa.array(idx)), _URL_RE))
    cand = ~whole & to_bool(pc.match_substring_regex(core, _INFIX_CANDIDATE))
    core = _on(cand, core, _infix)
    na = to_bool(pc.is_in(core, value_set=pa.array(_NOAPOS_WORDS, core.type)))
    core = _on(na, core, lambda a: pc.replace_substring_regex(a, _NOAPOS_RE, r"\1 \2"))
    cl = ~whole & to_bool(pc.match_substring_regex(core, "['’]"))
    core = _on(cl, core, lambda a: pc.replace_substring_regex(
        pc.replace_substring_regex(a, _CLITIC_RE, r"\1 \2"), r"^(.+)(['’][sS])$", r"\1 \2"))
    un = ~whole & to_bool(pc.match_substring_regex(
        core, r"\p{Nd}(?:\p{L}|[" + char_class(_CURRENCY + "%+") + r"])|^(?:US|C|A)\$\p{Nd}"))
    return _on(un, core, lambda a: pc.replace_substring_regex(
        pc.replace_substring_regex(a, _UNIT_RE, r"\1 \2"), r"^((?:US|C|A)\$)(\p{Nd})", r"\1 \2"))


# a core needs _core_rules only if it has one of these (else it is a plain word)
_CORE_WORK = "[" + char_class(_HYPHENS + ",:<>=/+*^.…@'’$") + r"\p{So}\p{Nd}]"


def _split_piece(tok: pa.Array) -> pa.Array:
    """Rewrite whitespace pieces that contain punctuation as space-separated words."""
    whole = to_bool(pc.is_in(tok, value_set=pa.array(_WHOLE_WORDS, tok.type)))
    # leading and trailing punctuation by trimming character sets (no regex)
    rest = pc.utf8_ltrim(tok, characters=_PREFIX_CHARS)
    core = pc.utf8_rtrim(rest, characters=_SUFFIX_CHARS)
    pre_b = _blen(tok) - _blen(rest)
    core_b = _blen(core)
    suf_b = _blen(rest) - core_b
    empty = pa.nulls(len(tok), tok.type).fill_null("")
    pre = _cut(tok, pre_b)[0] if pre_b.any() else empty
    suf = _cut(rest, core_b)[1] if suf_b.any() else empty

    # a final single "." stays on the word unless the rule for splitting it holds,
    # and abbreviations keep their dot
    starts_dot = (suf_b > 0) & to_bool(pc.starts_with(suf, ".")) & ~to_bool(pc.starts_with(suf, ".."))
    if starts_dot.any():
        idx = np.flatnonzero(starts_dot)
        sc = core.take(pa.array(idx))
        may_split = to_bool(pc.match_substring_regex(
            sc, "(?:[" + _DOT_SPLIT_AFTER + "]|[" + _UPPER + "][" + _UPPER + "])$"))
        with_dot = pc.binary_join_element_wise(sc, ".", "")
        abbrev = to_bool(pc.is_in(with_dot, value_set=pa.array(_ABBREVIATIONS, tok.type)))
        # a single letter split off by an infix keeps its dot too ("km/h." -> "km / h.")
        letter = to_bool(pc.match_substring_regex(
            sc, "[\\p{L}\\p{Nd}](?:---|--|——|[" + char_class(_HYPHENS + ":<>=/") + "])[a-zäöü]$"))
        keep = ~may_split | abbrev | letter
        if keep.any():
            kd = np.zeros(len(tok), bool)
            kd[idx[keep]] = True
            core = _on(kd, core, lambda a: pc.binary_join_element_wise(a, ".", ""))
            suf = _on(kd, suf, lambda a: pc.utf8_slice_codeunits(a, 1))

    # a "." right after a dash is never split off, so nothing left of it is either
    dash_dot = (suf_b > 1) & (to_bool(pc.match_substring(suf, "—.")) | to_bool(pc.match_substring(suf, "–.")))
    if dash_dot.any():
        idx = np.flatnonzero(dash_dot)
        parts = pc.extract_regex(suf.take(pa.array(idx)), r"(?s)^(?P<a>.*[—–]\.)(?P<b>.*)$")
        core = _on(dash_dot, core, lambda a: pc.binary_join_element_wise(a, parts.field("a"), ""))
        suf = _on(dash_dot, suf, lambda a: parts.field("b"))

    # a leading "+" stays on a number ("+49")
    plus = (pre_b > 0) & to_bool(pc.ends_with(pre, "+"))
    if plus.any():
        plus &= to_bool(pc.match_substring_regex(core, r"^\p{Nd}"))
        core = _on(plus, core, lambda a: pc.binary_join_element_wise("+", a, ""))
        pre = _on(plus, pre, lambda a: pc.utf8_slice_codeunits(a, 0, -1))

    # the core: most are plain words; the others go through the infix/clitic/unit rules
    work = to_bool(pc.match_substring_regex(core, _CORE_WORK)) | to_bool(
        pc.is_in(core, value_set=pa.array(_NOAPOS_WORDS, tok.type)))
    core = _on(work, core, _core_rules)

    # one word per punctuation mark (runs of dots and emoticons stay together)
    pre_s = _on(_blen(pre) > 1, pre, lambda a: _replace(a, _PIECES_PRE))
    suf_s = _on(_blen(suf) > 1, suf, lambda a: _replace(a, _PIECES_SUF))
    joined = pc.binary_join_element_wise(pre_s, core, suf_s, " ")
    return _on(whole, joined, lambda a: tok.filter(pa.array(whole)))


def split_whitespace(strings: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Non-empty whitespace-separated pieces and the index of the string each comes from."""
    flat, parents, _ = list_parts(pc.utf8_split_whitespace(strings))
    if len(flat):
        nonempty = lengths(flat) > 0  # Arrow keeps "" for leading/trailing whitespace
        if not nonempty.all():
            flat = flat.filter(pa.array(nonempty))
            parents = parents[nonempty]
    return flat, parents


def tokenize(text: pa.Array, split_cjk: bool = True) -> Words:
    """Split every document into words (see the module docstring for the rules)."""
    text = as_string(text)
    n = len(text)
    if split_cjk and n:
        has_cjk = to_bool(pc.match_substring_regex(text, "[" + CJK_CLASS + "]"))
        if has_cjk.any():
            spaced = pc.replace_substring_regex(text, "([" + CJK_CLASS + "])", r" \1 ")
            text = pc.if_else(pa.array(has_cjk), spaced, text)
    tok, tpar = split_whitespace(text)
    if len(tok) == 0:
        return Words(tok, np.zeros(0, np.int64), np.zeros(n + 1, np.int64))
    # pieces made only of letters and digits stay whole, except digit-letter mixes
    # (units: "10km") and clitics written without apostrophe ("dont")
    alnum = to_bool(pc.utf8_is_alnum(tok))
    need = ~alnum | to_bool(pc.is_in(tok, value_set=pa.array(_NOAPOS_WORDS, tok.type)))
    mixed = alnum & ~need
    if mixed.any():
        mixed &= ~to_bool(pc.utf8_is_alpha(tok)) & ~to_bool(pc.utf8_is_numeric(tok))
        if mixed.any():
            idx = np.flatnonzero(mixed)
            need[idx] = to_bool(pc.match_substring_regex(tok.take(pa.array(idx)), _UNIT_TAIL))
    if need.any():
        idx = np.flatnonzero(need)
        pieces, ppar = split_whitespace(_split_piece(tok.take(pa.array(idx))))
        # merge: untouched pieces keep their place, rewritten ones expand into words
        per = np.ones(len(tok), np.int64)
        per[idx] = np.bincount(ppar, minlength=len(idx))
        start = np.zeros(len(tok) + 1, np.int64)
        np.cumsum(per, out=start[1:])
        src = np.empty(start[-1], np.int64)
        keep = np.flatnonzero(~need)
        src[start[keep]] = keep
        # piece k of rewritten token idx[j] goes to start[idx[j]] + rank of k in its token
        rank = np.arange(len(ppar)) - np.repeat(np.r_[0, np.cumsum(per[idx])[:-1]], per[idx])
        src[start[idx[ppar]] + rank] = len(tok) + np.arange(len(ppar))
        words = pa.concat_arrays([tok, pieces.cast(tok.type)]).take(pa.array(src))
        parents = np.repeat(tpar, per)
    else:
        words, parents = tok, tpar
    counts = np.bincount(parents, minlength=n) if len(parents) else np.zeros(n, np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Words(words, parents, offsets)


# ----------------------------------------------------------------------------------------
# n-grams
# ----------------------------------------------------------------------------------------


class NGrams:
    """Rolling uint64 hashes of word n-grams that do not cross document boundaries.

    Word identity is exact string equality (via Arrow dictionary encoding); each distinct
    word gets a random 64-bit value and an n-gram hash is a polynomial over them, so two
    different n-grams collide with probability about 2^-64.
    """

    _BASE = np.uint64(0x100000001B3)

    def __init__(self, words: Words):
        self.words = words
        ids, k = dictionary_ids(words.words)
        rng = np.random.default_rng(0x7E5)
        self._r = rng.integers(0, 2**63, size=max(k, 1), dtype=np.uint64)[ids] * np.uint64(2) + np.uint64(1)
        self._n = 1
        self._h = self._r.copy()
        self.cumlen = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(words.lengths, out=self.cumlen[1:])
        # end (exclusive) of each word's document
        self._doc_end = words.offsets[1:][words.parents] if len(ids) else np.zeros(0, np.int64)
        self._docmix = _mix64(words.parents.astype(np.uint64))

    def keys(self, n: int, positions: np.ndarray) -> np.ndarray:
        """uint64 key of the n-gram at each position, distinct between documents."""
        return self.hashes(n)[positions] ^ self._docmix[positions]

    def advance(self, n: int) -> None:
        """Grow the hashes to n-grams (n must not decrease)."""
        N = len(self._r)
        with np.errstate(over="ignore"):
            while self._n < n:
                k = self._n
                if N > k:
                    h = self._h
                    h[: N - k] = h[: N - k] * self._BASE + self._r[k:]
                self._n += 1

    def valid(self, n: int) -> np.ndarray:
        """Positions where an n-gram starts (it ends inside the same document)."""
        return np.arange(len(self._r)) + n <= self._doc_end

    def hashes(self, n: int) -> np.ndarray:
        self.advance(n)
        return self._h

    def char_len(self, n: int, sep: int) -> np.ndarray:
        """Characters of the n-gram starting at each position, words joined by ``sep`` chars.

        Only meaningful at ``valid(n)`` positions.
        """
        N = len(self._r)
        out = np.zeros(N, np.int64)
        if N >= n:
            out[: N - n + 1] = self.cumlen[n:] - self.cumlen[: N - n + 1] + sep * (n - 1)
        return out


# ----------------------------------------------------------------------------------------
# sentences
# ----------------------------------------------------------------------------------------


def sentence_counts(words: Words) -> np.ndarray:
    """Number of sentences per document, from its words.

    A new sentence starts at a word that is not punctuation when a sentence-terminal word
    (a single ``. ! ? 。 ...``, see :data:`STERM_CLASS`) occurs after the previous
    non-punctuation word; words made only of punctuation (closing quotes, brackets) between
    the two do not matter. A document with at least one word has at least one sentence.
    """
    n = words.n_docs
    if len(words.words) == 0:
        return np.zeros(n, np.int64)
    term = words.full_mask("[" + STERM_CLASS + "]")
    punct = words.full_mask(r"\p{P}+")
    # per document cumulative count of terminal words
    cterm = np.cumsum(term)
    nonp = np.flatnonzero(~punct)
    if len(nonp) == 0:
        return (words.counts > 0).astype(np.int64)
    par = words.parents[nonp]
    # terminal words seen up to (and including) the word before each non-punct word
    before = cterm[nonp] - term[nonp]
    first_word = words.offsets[par]
    # terminal words before the document's first word
    prev_before = cterm[first_word] - term[first_word]
    same_doc = np.zeros(len(nonp), bool)
    same_doc[1:] = par[1:] == par[:-1]
    prev_before[same_doc] = cterm[nonp[:-1][same_doc[1:]]]
    starts = (before > prev_before) & (nonp != first_word)
    out = (words.counts > 0).astype(np.int64)
    out += np.bincount(par[starts], minlength=n).astype(np.int64)
    return out


# whitespace as Python's str.isspace() sees it
_WS_NOT_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
_IRREGULAR_WS = "[ " + _WS_NOT_SPACE + "]{2,}|[" + _WS_NOT_SPACE + "]"


def sentence_counts_text(texts: pa.Array) -> np.ndarray:
    """Sentences per text (see :func:`sentence_counts`).

    Like the reference sentence splitter, whitespace between two words other than a
    single space (two spaces, a tab ...) counts as a (non-punctuation) word there, so
    ``"Why?  Because."`` has three sentences.
    """
    texts = as_string(texts)
    if len(texts) == 0:
        return np.zeros(0, np.int64)
    marked = pc.replace_substring_regex(pc.utf8_trim_whitespace(texts), _IRREGULAR_WS, " \x01 ")
    return sentence_counts(tokenize(marked))
