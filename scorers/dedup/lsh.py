"""MinHash-LSH near-duplicate detection, framework free (numpy + pyarrow).

The pieces, each a pure function over Arrow or numpy arrays so that the Beam
engine can run them per batch or per partition:

``normalize`` → ``shingles`` → ``signatures`` → ``band_keys`` →
``candidate_pairs`` / ``verified_edges`` → ``union_find`` or ``star_components``
→ ``choose_survivors``; :class:`MinHashDedup` wires them into a ``GlobalStage``.

Hashing scheme (everything is 64-bit integer arithmetic mod 2^64, so numpy and
torch (``scorers/dedup/_minhash_torch.py``) give bit-identical results):

* **Tokens.** Words are the whitespace-split tokens of the normalised text
  (``shingle="word"``) or its Unicode code points (``shingle="char"``). A token
  is hashed to uint64 from its UTF-8 bytes read as little-endian 8-byte chunks:
  ``fmix64(sum_j chunk_j * K_j xor len * L)`` (``fmix64`` is murmur3's
  finaliser, ``K_j`` fixed odd constants). Words are normalised and hashed once
  per distinct word of a batch (``pyarrow.compute.dictionary_encode``), never
  once per occurrence.
* **Shingles.** An n-gram's hash is ``fmix64(sum_k token[i+k] * M_k)`` with
  fixed odd constants ``M_k``. A document with ``0 < L < n`` tokens has exactly
  one shingle, the L-gram of all its tokens (so two short documents are
  duplicates iff they are equal after normalisation). A document with no token
  has no shingle: its signature is all ``0xFFFFFFFF`` and it is never a
  candidate (``n_shingles == 0``).
* **Permutations.** ``h_p(x) = ((a_p * x + b_p) mod 2^64) >> 32`` with ``a_p``
  odd: the multiply-add-shift family (Dietzfelbinger), applied to well-mixed
  64-bit shingle hashes. It needs no 128-bit products (the Mersenne-prime family
  ``(a x + b) mod (2^61 - 1)`` does), which is what makes an exact torch int64
  port possible. ``a_p, b_p`` come from splitmix64 of ``seed``, so a signature
  depends only on (text, parameters, seed) and not on numpy's RNG streams.
* **Signature dtype uint32.** The high 32 bits of the product are the
  well-mixed ones; two different minima agree by accident with probability
  2^-32, far below the estimator's own noise (sd ~0.04 at J = 0.8 with 112
  permutations), and it halves the bytes per document (4 * num_perm).
  ``min`` commutes with the monotone ``>> 32``, so the minimum is taken on the
  64-bit values and shifted once per document.
* **Band keys.** ``fmix64(sum_k sig[j*r + k] * M_k + j * G)`` per band ``j``:
  one uint64 per band. ``bands``/``rows`` default to the pair minimising
  ``w_fp * FP-area + w_fn * FN-area`` of the S-curve (own Simpson integration):
  0.5/0.5 with ``verify=none`` (9 x 12 at 0.8/112), 0.05/0.95 when candidates are
  verified, since then an LSH false positive costs one comparison and a false
  negative is lost (14 x 8 at 0.8/112).

Candidates and verification (:func:`verified_edges`). Rows are grouped by
(band, key) with a numpy sort and run detection. A bucket of up to
``all_pairs_max`` (64) members yields all its pairs, each verified: exact with
respect to the LSH candidates. A larger bucket (one template repeated
thousands of times) would yield k^2/2 pairs, so it is covered by verified
stars instead: the best-priority unattached member becomes a representative,
all unattached members are verified against it, the ones that pass attach, for
up to ``star_rounds`` rounds. Only verified pairs become edges, so precision is
the verifier's; a large bucket can only lose recall (a member similar to another
member but to no representative gets no edge there; other bands often supply
it). ``verify=signature`` (default): fraction of equal signature values >=
threshold. ``verify=jaccard``: Jaccard of the shingle-hash sets carried in the
keys, exact up to ``jaccard_max_shingles`` per document and a bottom-k estimate
beyond. ``verify=none``: every bucket is a star, i.e. plain LSH components.

Clusters are connected components of the verified edges: :func:`union_find`
(vectorised hook-and-compress) or :func:`star_components` (alternating
large-star / small-star rounds; :func:`large_star_map` / ``_reduce`` and
:func:`small_star_map` / ``_reduce`` are the per-round pieces for a distributed
driver). Both label a node with its component's smallest row.

Survivors (:func:`priority_rank`, :func:`choose_survivors`): per cluster the row
with the highest score (``longest``: characters of the original text;
``highest:<col>``/``lowest:<col>``), ties broken by ``xxh64(id)`` and then the id
string. Every choice above (bucket order, representatives, survivor) depends on
content and ids only, so the kept set is the same for any row order or sharding.

Bytes per document (112 permutations, 14 bands): signature 448, band keys 112,
key-table row ~600 with id and counters; with ``verify=jaccard`` add 8 per
distinct shingle up to ``jaccard_max_shingles`` (4 KiB at 512). Shingle hashes
(8 per shingle) exist only inside one batch; edges are 16 bytes per verified pair.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import unicodedata
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.scorers.dedup.components import star_components, union_find
from thresher.scorers.text.arrays import as_string_array

U64 = np.uint64
_M64 = (1 << 64) - 1
SIG_DTYPE = np.uint32
SIG_EMPTY = np.uint32(0xFFFFFFFF)

# ----------------------------------------------------------------------------------------
# 64-bit mixing primitives
# ----------------------------------------------------------------------------------------
FMIX_C1 = 0xFF51AFD7ED558CCD
FMIX_C2 = 0xC4CEB9FE1A85EC53
GOLDEN = 0x9E3779B97F4A7C15


def splitmix64_stream(seed: int, n: int) -> np.ndarray:
    """``n`` uint64 words of the splitmix64 sequence started at ``seed`` (pure Python
    integers, so the values never depend on the numpy version)."""
    out = np.empty(n, dtype=U64)
    s = seed & _M64
    for i in range(n):
        s = (s + GOLDEN) & _M64
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out[i] = z ^ (z >> 31)
    return out


def fmix64(x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """murmur3's 64-bit finaliser, elementwise on a uint64 array (new array unless
    ``out`` is given; ``out=x`` works in place)."""
    if out is None:
        out = np.array(x, dtype=U64, copy=True)
    elif out is not x:
        np.copyto(out, x)
    out ^= out >> U64(33)
    out *= U64(FMIX_C1)
    out ^= out >> U64(33)
    out *= U64(FMIX_C2)
    out ^= out >> U64(33)
    return out


# Fixed tables and constants (independent of the user seed: token and shingle hashes
# are the same for every seed; only the permutations change with it).
_NGRAM_MUL = splitmix64_stream(0x6E6772616D, 64) | U64(1)              # "ngram"
_BAND_MUL = splitmix64_stream(0x62616E64, 256) | U64(1)                # "band"
_LEN_MUL = U64(0x2545F4914F6CDD1D)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b)`` uint64 vectors of the multiply-add-shift family; ``a`` odd."""
    words = splitmix64_stream((seed * GOLDEN + 0x6D696E68617368) & _M64, 2 * num_perm)
    return words[0::2] | U64(1), words[1::2]


# ----------------------------------------------------------------------------------------
# Normalisation (pyarrow.compute, vectorised)
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Normalization:
    nfkc: bool = True               # Unicode compatibility normalisation (see normalize)
    casefold: bool = True           # lower-case + the common full-casefold expansions
    collapse_whitespace: bool = True  # runs of whitespace -> one space, trimmed
    strip_punct: bool = False       # Unicode punctuation (\p{P}) -> space


def _as_string_array(text: Any) -> pa.Array:
    return as_string_array(text, fill_null=True)


def normalize(text: Any, norm: Normalization = Normalization()) -> pa.Array:
    """Normalised copy of a string array.

    ``nfkc``: Unicode compatibility normalisation, produced in the decomposed form
    (NFKD). Two strings are NFKC-equal iff they are NFKD-equal, so duplicate
    detection is the same; NFKD is used because pyarrow 25's ``utf8_normalize``
    returns decomposed text for "NFC"/"NFKC" too (fixed in pyarrow 26), and
    hashes must not change with the pyarrow version. ``casefold``:
    ``utf8_lower`` plus ß→ss and ς→σ (pyarrow has no full case fold; these are
    the folds that matter in the corpora we target)."""
    text = _as_string_array(text)
    if norm.nfkc:
        text = pc.utf8_normalize(text, "NFKD")
    if norm.casefold:
        text = pc.utf8_lower(text)
        text = pc.replace_substring(text, "ß", "ss")
        text = pc.replace_substring(text, "ς", "σ")
    if norm.strip_punct:
        text = pc.replace_substring_regex(text, r"\p{P}+", " ")
    if norm.collapse_whitespace:
        # RE2's \s is ASCII only; add what Python's str.isspace() also counts
        text = pc.utf8_trim_whitespace(
            pc.replace_substring_regex(text, r"[\s\x{1c}-\x{1f}\x{85}\p{Z}]+", " "))
    return text


def normalize_py(s: str, norm: Normalization = Normalization()) -> str:
    """Reference (per-string Python) version of :func:`normalize`, for tests."""
    import re
    if norm.nfkc:
        s = unicodedata.normalize("NFKD", s)
    if norm.casefold:
        s = s.lower().replace("ß", "ss").replace("ς", "σ")
    if norm.strip_punct:
        s = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in s)
    if norm.collapse_whitespace:
        s = re.sub(r"\s+", " ", s).strip()
    return s


# ----------------------------------------------------------------------------------------
# Token and shingle hashing
# ----------------------------------------------------------------------------------------
def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 relative to the data view, data uint8) of a string array."""
    off_t = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    off = np.frombuffer(bufs[1], dtype=off_t)[arr.offset: arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    data = data[off[0]: off[-1]]
    return off - off[0], data


def _padded(data: np.ndarray) -> np.ndarray:
    """``data`` followed by 8 zero bytes (so that 8-byte loads never run off the end)."""
    out = np.zeros(len(data) + 8, dtype=np.uint8)
    out[: len(data)] = data
    return out


def _load_u64(padded: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Little-endian uint64 made of the 8 bytes at each byte position ``pos``
    (unaligned loads through a 1-byte-stride view; ``padded`` from :func:`_padded`)."""
    view = np.ndarray(shape=(len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    return view[pos]


def _chunk_mul(n: int) -> np.ndarray:
    """Odd multipliers of the 8-byte chunks 0..n-1 of a string (vectorised splitmix)."""
    j = np.arange(n, dtype=U64)
    return fmix64(j * U64(GOLDEN) + U64(0x6368756E6B)) | U64(1)


def _hash_segments(data: np.ndarray, off: np.ndarray, padded: Optional[np.ndarray] = None,
                   starts: Optional[np.ndarray] = None) -> np.ndarray:
    """uint64 hash of each byte segment ``data[off[i]:off[i+1]]`` (or, with
    ``starts``, of ``data[starts[i]:starts[i] + len_i]`` where ``len_i = off[i+1]-off[i]``).

    The segment is read as little-endian 8-byte chunks ``c_j`` (the last one
    zero-padded); ``h = fmix64(sum_j c_j * K_j  xor  len * L)`` with fixed odd
    ``K_j``: a few vectorised passes per chunk position, none per byte."""
    lens = np.diff(off)
    if starts is None:
        starts = off[:-1]
    if padded is None:
        padded = _padded(data)
    out = np.zeros(len(lens), dtype=U64)
    nz = np.flatnonzero(lens > 0)
    if len(nz):
        ln, st = lens[nz], starts[nz]
        maxch = int((ln.max() + 7) // 8)
        K = _chunk_mul(maxch)
        acc = _load_u64(padded, st)
        acc &= _TAIL_MASK[np.minimum(ln, 8)]
        acc *= K[0]
        # chunk positions 1.. for the (fewer and fewer) segments that reach them
        j = 1
        live = np.flatnonzero(ln > 8)
        while len(live) and j < 8:
            c = _load_u64(padded, st[live] + 8 * j)
            c &= _TAIL_MASK[np.minimum(ln[live] - 8 * j, 8)]
            c *= K[j]
            acc[live] += c
            j += 1
            live = live[ln[live] > 8 * j]
        if len(live):
            # segments longer than 64 bytes: all their remaining chunks at once
            rest = (ln[live] - 8 * j + 7) // 8
            jj = np.arange(int(rest.sum()), dtype=np.int64) - np.repeat(np.cumsum(rest) - rest, rest) + j
            c = _load_u64(padded, np.repeat(st[live], rest) + 8 * jj)
            c &= _TAIL_MASK[np.minimum(np.repeat(ln[live], rest) - 8 * jj, 8)]
            c *= K[jj]
            acc[live] += np.add.reduceat(c, np.cumsum(rest) - rest)
        out[nz] = acc
    out ^= lens.astype(U64) * _LEN_MUL
    return fmix64(out, out=out)


# mask keeping the low ``k`` bytes of a uint64, k = 0..8
_TAIL_MASK = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=U64)



def hash_strings(arr: Any) -> np.ndarray:
    """Vectorised uint64 hash of every string of an Arrow string array (null → "")."""
    arr = _as_string_array(arr)
    off, data = _string_buffers(arr)
    return _hash_segments(data, off)


def _split_words(text: pa.Array, unicode_ws: bool = True,
                 drop_empty: bool = True) -> tuple[pa.Array, np.ndarray]:
    """Whitespace-separated tokens (flat string array; non-empty unless
    ``drop_empty`` is False) and per-document token offsets ``int64[N+1]``."""
    lists = (pc.utf8_split_whitespace if unicode_ws else pc.ascii_split_whitespace)(text)
    doc_off = lists.offsets.to_numpy().astype(np.int64)
    doc_off -= doc_off[0]
    words = lists.flatten()
    # the split kernels yield "" for empty input and for leading/trailing whitespace:
    # drop empty tokens and re-derive the offsets
    wl = np.diff(_string_buffers(words)[0]) if drop_empty else np.ones(0)
    if len(wl) and not wl.all():
        nonempty = wl > 0
        cs = np.zeros(len(wl) + 1, np.int64)
        np.cumsum(nonempty, out=cs[1:])
        doc_off = cs[doc_off]
        words = words.filter(pa.array(nonempty))
    return words, doc_off


def _ragged_index(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[i], starts[i] + counts[i])`` over i."""
    total = int(counts.sum())
    base = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return base + np.arange(total, dtype=np.int64)


def tokens(norm_text: pa.Array, mode: str = "word") -> tuple[np.ndarray, np.ndarray]:
    """Token hashes of already-normalised text: ``(hashes uint64[T], doc_offsets
    int64[N+1])``. Words are split on Unicode whitespace and hashed once per
    distinct word; ``char`` tokens are code points."""
    norm_text = _as_string_array(norm_text)
    if mode == "word":
        words, doc_off = _split_words(norm_text)
        if len(words) == 0:
            return np.zeros(0, U64), doc_off
        enc = pc.dictionary_encode(words)
        return hash_strings(enc.dictionary)[enc.indices.to_numpy()], doc_off
    if mode == "char":
        off, data = _string_buffers(norm_text)
        # code-point starts are the bytes that are not UTF-8 continuation bytes
        starts = np.flatnonzero((data & 0xC0) != 0x80)
        cp_off = np.append(starts, len(data)).astype(np.int64)
        doc_off = np.searchsorted(starts, off, side="left").astype(np.int64)
        return _hash_segments(data, cp_off), doc_off
    raise ValueError(f"unknown shingle mode {mode!r}")


def text_tokens(text: Any, mode: str = "word",
                norm: Normalization = Normalization()) -> tuple[np.ndarray, np.ndarray]:
    """Token hashes of raw text; equal to ``tokens(normalize(text, norm), mode)``.

    Word mode normalises each *distinct* raw word once instead of the whole text:
    split on ASCII whitespace, ``dictionary_encode`` (pyarrow's C++ hash table),
    normalise the dictionary, re-split it on Unicode whitespace (NFKC turns NBSP
    and the other compatibility spaces into spaces, punctuation stripping makes
    spaces), hash the resulting tokens and expand them back per occurrence.
    Normalisation acts within a whitespace-delimited word, so this equals
    normalising the whole text (``collapse_whitespace`` has no effect on words).
    (A byte-level numpy split with an ASCII fast path was measured no faster than
    this on English text and slower on multilingual text.)"""
    text = _as_string_array(text)
    if mode != "word":
        return tokens(normalize(text, norm), mode)
    # empty "words" (leading/trailing whitespace) are kept here and dropped below:
    # they are one dictionary entry, cheaper than filtering every word
    words, doc_off = _split_words(text, unicode_ws=False, drop_empty=False)
    if len(words) == 0:
        return np.zeros(0, U64), doc_off
    enc = pc.dictionary_encode(words)
    idx = enc.indices.to_numpy()
    nd = normalize(enc.dictionary, dataclasses.replace(norm, collapse_whitespace=False))
    dwords, d_off = _split_words(nd)
    dhash = hash_strings(dwords)
    per_entry = np.diff(d_off)              # tokens each distinct raw word becomes
    if (per_entry == 1).all():
        return dhash[idx], doc_off
    occ = per_entry[idx]
    cs = np.zeros(len(occ) + 1, np.int64)
    if (per_entry <= 1).all():
        # only empty entries: drop their occurrences
        keep = occ == 1
        np.cumsum(keep, out=cs[1:])
        first = np.minimum(d_off[:-1], max(len(dhash) - 1, 0))
        return dhash[first[idx[keep]]] if len(dhash) else np.zeros(0, U64), cs[doc_off]
    # some raw words normalise to several tokens (or none)
    np.cumsum(occ, out=cs[1:])
    return dhash[_ragged_index(d_off[:-1][idx], occ)], cs[doc_off]


def shingle_hashes(tok: np.ndarray, doc_off: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n-gram hashes from token hashes: ``(shingles uint64[S], offsets int64[N+1])``.

    A document with L >= n tokens has L - n + 1 shingles, one with 0 < L < n has one
    (all its tokens), an empty one has none."""
    if n < 1 or n > len(_NGRAM_MUL):
        raise ValueError(f"ngram must be in 1..{len(_NGRAM_MUL)}")
    lens = np.diff(doc_off)
    counts = np.where(lens >= n, lens - n + 1, np.minimum(lens, 1))
    sh_off = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(counts, out=sh_off[1:])
    T = len(tok)
    # full n-grams at every token position (positions near a document end are junk
    # and are never selected below)
    acc = np.zeros(T, dtype=U64)
    tmp = np.empty(T, dtype=U64)
    for k in range(n):
        if k >= T:
            break
        np.multiply(tok[k:], _NGRAM_MUL[k], out=tmp[: T - k])
        acc[: T - k] += tmp[: T - k]
    # start position of each shingle
    first = sh_off[:-1]
    pos = np.arange(sh_off[-1], dtype=np.int64) - np.repeat(first, counts) + np.repeat(doc_off[:-1], counts)
    sh = acc[pos]
    short = np.flatnonzero((lens > 0) & (lens < n))
    if len(short):
        # one partial n-gram over the L < n tokens of the document
        s_acc = np.zeros(len(short), dtype=U64)
        st = doc_off[short]
        for k in range(n - 1):
            m = lens[short] > k
            s_acc[m] += tok[st[m] + k] * _NGRAM_MUL[k]
        sh[first[short]] = s_acc
    return fmix64(sh, out=sh), sh_off


def _shingles_one_chunk(text: pa.Array, mode: str, n: int,
                        norm: Normalization) -> tuple[np.ndarray, np.ndarray]:
    tok, doc_off = text_tokens(text, mode, norm)
    return shingle_hashes(tok, doc_off, n)


# ----------------------------------------------------------------------------------------
# Signatures
# ----------------------------------------------------------------------------------------
_BLOCK = 384   # shingles per block: keeps the (block x num_perm) uint64 matrix in L2
_BIG = 2 * _BLOCK   # documents with more shingles are reduced on their own, in slices


def signatures_from_shingles(sh: np.ndarray, sh_off: np.ndarray, a: np.ndarray,
                             b: np.ndarray) -> np.ndarray:
    """MinHash signatures ``uint32[N, P]`` from shingle hashes and per-document offsets.

    Consecutive documents are grouped into blocks of about ``_BLOCK`` shingles; for
    each block the ``(shingles x P)`` matrix ``a*x+b`` is built with one broadcast
    multiply-add and reduced per document with ``np.minimum.reduceat``: no Python
    loop per shingle or per permutation. Long documents are reduced in slices, so
    memory stays bounded whatever the document size."""
    N = len(sh_off) - 1
    P = len(a)
    out = np.full((N, P), SIG_EMPTY, dtype=SIG_DTYPE)
    counts = np.diff(sh_off)
    mins = np.empty((N, P), dtype=U64)
    docs = np.flatnonzero((counts > 0) & (counts <= _BIG))
    if len(docs):
        starts = sh_off[docs]
        ends = sh_off[docs + 1]
        # blocks: small documents whose first shingle falls in the same _BLOCK window.
        # A long document between two small ones is more than _BLOCK shingles long,
        # so they land in different windows and each block's shingles are contiguous.
        blk = (starts - starts[0]) // _BLOCK
        cut = np.flatnonzero(np.diff(blk)) + 1
        bounds = np.concatenate([[0], cut, [len(docs)]])
        buf = np.empty((_BLOCK + _BIG, P), dtype=U64)
        small = np.empty((len(docs), P), dtype=U64)
        for i in range(len(bounds) - 1):
            d0, d1 = bounds[i], bounds[i + 1]
            s0, s1 = starts[d0], ends[d1 - 1]
            V = buf[: s1 - s0]
            np.multiply(sh[s0:s1, None], a[None, :], out=V)
            V += b
            np.minimum.reduceat(V, starts[d0:d1] - s0, axis=0, out=small[d0:d1])
        mins[docs] = small
    for d in np.flatnonzero(counts > _BIG):
        acc = np.full(P, np.iinfo(np.uint64).max, dtype=U64)
        for s0 in range(sh_off[d], sh_off[d + 1], 4 * _BLOCK):
            s1 = min(s0 + 4 * _BLOCK, sh_off[d + 1])
            V = sh[s0:s1, None] * a[None, :]
            V += b
            np.minimum(acc, V.min(axis=0), out=acc)
        mins[d] = acc
    nonempty = counts > 0
    out[nonempty] = (mins[nonempty] >> U64(32)).astype(SIG_DTYPE)
    return out


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``uint64[N, bands]``: one hash per band of ``rows`` signature values."""
    N, P = sig.shape
    if bands * rows > P:
        raise ValueError(f"bands*rows = {bands * rows} > num_perm = {P}")
    if rows > len(_BAND_MUL):
        raise ValueError(f"rows must be <= {len(_BAND_MUL)}")
    x = sig[:, : bands * rows].reshape(N, bands, rows).astype(U64)
    x *= _BAND_MUL[:rows]
    acc = x.sum(axis=2, dtype=U64)
    acc += np.arange(bands, dtype=U64) * U64(GOLDEN)
    return fmix64(acc, out=acc)


# ----------------------------------------------------------------------------------------
# LSH parameters
# ----------------------------------------------------------------------------------------
def lsh_error_integrals(threshold: float, bands: np.ndarray, rows: np.ndarray,
                        steps: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive, false-negative) areas for banding (b, r): the integral of
    ``P(s) = 1 - (1 - s^r)^b`` over [0, t] and of ``1 - P(s)`` over [t, 1],
    by composite Simpson's rule with ``steps`` (even) intervals on each side."""
    t = float(threshold)
    bands = np.asarray(bands, dtype=np.float64)[..., None]
    rows = np.asarray(rows, dtype=np.float64)[..., None]
    w = np.ones(steps + 1)
    w[1:-1:2] = 4.0
    w[2:-1:2] = 2.0

    def simpson(lo, hi, f):
        s = np.linspace(lo, hi, steps + 1)
        return (hi - lo) / (3.0 * steps) * (f(s) * w).sum(axis=-1)

    fp = simpson(0.0, t, lambda s: 1.0 - (1.0 - s ** rows) ** bands)
    fn = simpson(t, 1.0, lambda s: (1.0 - s ** rows) ** bands)
    return fp, fn


def optimal_bands_rows(threshold: float, num_perm: int, fp_weight: float = 0.5,
                       fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising
    ``fp_weight * FP-area + fn_weight * FN-area`` (ties: more bands, then fewer rows)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError("threshold must be in (0, 1)")
    bs, rs = [], []
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            bs.append(b)
            rs.append(r)
    bs, rs = np.array(bs), np.array(rs)
    fp, fn = lsh_error_integrals(threshold, bs, rs)
    err = fp_weight * fp + fn_weight * fn
    best = np.lexsort((rs, -bs, np.round(err, 12)))[0]
    return int(bs[best]), int(rs[best])


def collision_probability(s: float | np.ndarray, bands: int, rows: int):
    """Probability that two documents of Jaccard ``s`` share at least one band."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


# ----------------------------------------------------------------------------------------
# Candidates and verification
# ----------------------------------------------------------------------------------------
def _buckets(keys: np.ndarray, nodes: np.ndarray, order_key: Optional[np.ndarray]):
    """Group ``nodes`` by ``keys``. Returns (members, bucket starts, bucket sizes) for
    the buckets of two or more nodes, members listed bucket by bucket and, inside a
    bucket, by ``order_key`` (then node)."""
    o = np.argsort(keys, kind="stable")
    k = keys[o]
    same = k[1:] == k[:-1]
    if not same.any():
        return nodes[:0], np.zeros(0, np.int64), np.zeros(0, np.int64)
    # keep only positions inside a run of equal keys
    inrun = np.zeros(len(k), dtype=bool)
    inrun[1:] |= same
    inrun[:-1] |= same
    o, k = o[inrun], k[inrun]
    first = np.concatenate([[True], k[1:] != k[:-1]])
    st = np.flatnonzero(first)
    sz = np.diff(np.append(st, len(k)))
    mem = nodes[o]
    if order_key is not None:
        bucket = np.cumsum(first) - 1
        mem = mem[np.lexsort((mem, order_key[o], bucket))]
    return mem, st, sz


def _all_pairs(members: np.ndarray, st: np.ndarray, sz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair inside each bucket ``members[st:st+sz]``, vectorised."""
    if len(st) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # element at rank p in a bucket of size s pairs with ranks p+1..s-1
    idx = np.repeat(st, sz) + (np.arange(sz.sum()) - np.repeat(np.cumsum(sz) - sz, sz))
    rank = idx - np.repeat(st, sz)
    size = np.repeat(sz, sz)
    npart = size - 1 - rank
    left = np.repeat(idx, npart)
    step = np.arange(npart.sum()) - np.repeat(np.cumsum(npart) - npart, npart) + 1
    right = left + step
    return members[left], members[right]


def _star_pairs(members: np.ndarray, st: np.ndarray, sz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each bucket member paired with the bucket's first member."""
    if len(st) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rep = np.repeat(members[st], sz - 1)
    keep = np.ones(sz.sum(), dtype=bool)
    keep[np.cumsum(sz) - sz] = False
    full = members[np.repeat(st, sz) + (np.arange(sz.sum()) - np.repeat(np.cumsum(sz) - sz, sz))]
    return rep, full[keep]


def _unique_pairs(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deduplicate undirected pairs (returned sorted, with u < v); drop self-pairs."""
    a, b = np.minimum(u, v).astype(np.int64), np.maximum(u, v).astype(np.int64)
    keep = a != b
    a, b = a[keep], b[keep]
    if len(a) == 0:
        return a, b
    if int(b.max()) < (1 << 31):
        # pack both 31-bit indices into one int64: one 1-D unique instead of a row unique
        key = np.unique((a << 31) | b)
        return key >> 31, key & ((1 << 31) - 1)
    p = np.unique(np.stack([a, b], axis=1), axis=0)
    return p[:, 0], p[:, 1]


def candidate_pairs(bkeys: np.ndarray, valid: Optional[np.ndarray] = None,
                    priority: Optional[np.ndarray] = None,
                    all_pairs_max: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs from band keys ``uint64[N, bands]``, grouped per
    (band, key) with a numpy sort and run detection.

    A bucket of size <= ``all_pairs_max`` yields all its pairs; a larger bucket
    yields a star: every member paired with the member of best ``priority``
    (lowest value; row index when None). Returns deduplicated ``(u, v)`` int64
    row indices with ``u < v``. Rows with ``valid == False`` are never candidates."""
    N, nb = bkeys.shape
    nodes = np.arange(N, dtype=np.int64)
    if valid is not None:
        nodes = nodes[valid]
    us, vs = [], []
    for j in range(nb):
        k = bkeys[nodes, j]
        ok = None if priority is None else priority[nodes]
        mem, st, sz = _buckets(k, nodes, ok)
        small = sz <= all_pairs_max
        u, v = _all_pairs(mem, st[small], sz[small])
        us.append(u)
        vs.append(v)
        u, v = _star_pairs(mem, st[~small], sz[~small])
        us.append(u)
        vs.append(v)
    return _unique_pairs(np.concatenate(us), np.concatenate(vs))


def signature_similarity(sig: np.ndarray, u: np.ndarray, v: np.ndarray,
                         chunk: int = 1 << 16) -> np.ndarray:
    """Estimated Jaccard (fraction of equal signature values) of each pair, float32."""
    out = np.empty(len(u), dtype=np.float32)
    P = sig.shape[1]
    for s in range(0, len(u), chunk):
        eq = sig[u[s:s + chunk]] == sig[v[s:s + chunk]]
        out[s:s + chunk] = eq.sum(axis=1) / np.float32(P)
    return out


def exact_jaccard(values: np.ndarray, offsets: np.ndarray, u: np.ndarray, v: np.ndarray,
                  cap: Optional[int] = None, chunk_elems: int = 1 << 22) -> np.ndarray:
    """Jaccard similarity of sorted-unique uint64 sets (CSR ``values``/``offsets``) for
    each pair (u[i], v[i]), vectorised per chunk of pairs; empty vs empty = 0.

    Exact, unless ``cap`` is given and a set holds ``cap`` values: such a set is taken
    to be the bottom-``cap`` sketch of a larger set, and the similarity is computed
    over the values up to ``tau = min(max of each capped set)``, which both sketches
    know completely (the bottom-k estimator; still exact when no set is capped)."""
    out = np.zeros(len(u), dtype=np.float64)
    lens = np.diff(offsets)
    sizes = lens[u] + lens[v]
    i = 0
    while i < len(u):
        # take as many pairs as fit in chunk_elems gathered values (at least one)
        cs = np.cumsum(sizes[i:])
        j = i + min(max(1, int(np.searchsorted(cs, chunk_elems, side="right"))), 1 << 23)
        uu, vv = u[i:j], v[i:j]
        lu, lv = lens[uu], lens[vv]
        segl = np.stack([lu, lv], axis=1).ravel()
        segs = np.stack([offsets[uu], offsets[vv]], axis=1).ravel()
        pair = np.repeat(np.arange(j - i), lu + lv)
        vals = values[_ragged_index(segs, segl)]
        if cap is not None:
            top = np.full(j - i, np.iinfo(np.uint64).max, dtype=U64)
            for ls, seg in ((lu, offsets[uu]), (lv, offsets[vv])):
                capped = ls >= cap
                top[capped] = np.minimum(top[capped], values[seg[capped] + ls[capped] - 1])
            known = vals <= top[pair]
            vals, pair = vals[known], pair[known]
        # one sort of (pair index << 40 | top 40 bits of the value): a value present in
        # both sets shows up as two equal neighbours (distinct shingle hashes of one pair
        # collide in 40 bits with probability 2^-40)
        key = (pair.astype(U64) << U64(40)) | (vals >> U64(24))
        key.sort()
        dup = key[1:] == key[:-1]
        inter = np.bincount((key[1:][dup] >> U64(40)).astype(np.int64), minlength=j - i)
        union = np.bincount(pair, minlength=j - i) - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i:j] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        i = j
    return out


def verify_pairs(u: np.ndarray, v: np.ndarray, threshold: float, *, method: str = "signature",
           sig: Optional[np.ndarray] = None, shingle_values: Optional[np.ndarray] = None,
           shingle_offsets: Optional[np.ndarray] = None,
           jaccard_cap: Optional[int] = None) -> np.ndarray:
    """Boolean mask: which candidate pairs (u[i], v[i]) are near-duplicates.
    ``method="signature"``: fraction of equal signature values >= threshold;
    ``"jaccard"``: (capped, see :func:`exact_jaccard`) Jaccard of the shingle-hash
    sets >= threshold; ``"none"``: every pair."""
    if method == "none":
        return np.ones(len(u), dtype=bool)
    if method == "jaccard":
        return exact_jaccard(shingle_values, shingle_offsets, u, v, cap=jaccard_cap) >= threshold
    if method == "signature":
        return signature_similarity(sig, u, v) >= threshold
    raise ValueError(f"verify must be signature|jaccard|none, got {method!r}")


verify = verify_pairs   # the name the Beam wiring uses


def verified_edges(bkeys: np.ndarray, threshold: float, *, verify: str = "signature",
                   sig: Optional[np.ndarray] = None,
                   shingle_values: Optional[np.ndarray] = None,
                   shingle_offsets: Optional[np.ndarray] = None,
                   valid: Optional[np.ndarray] = None,
                   priority: Optional[np.ndarray] = None,
                   all_pairs_max: int = 64, star_rounds: int = 8,
                   jaccard_cap: Optional[int] = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Edges of the near-duplicate graph: candidate pairs that pass verification.

    ``verify="none"``: every bucket becomes a star (member → best-priority member),
    which gives exactly the connected components of "shares a band" (pure LSH).

    ``verify="signature"|"jaccard"``: buckets of size <= ``all_pairs_max`` yield
    all their pairs and each is verified (estimated Jaccard from signatures, or
    exact Jaccard of shingle sets, >= threshold). A larger bucket is covered
    greedily: in each of up to ``star_rounds`` rounds the best-priority member not
    yet attached becomes a representative, every unattached member is verified
    against it, and those that pass are attached. Edges are emitted only for
    verified pairs, so precision is that of the verifier; what large buckets can
    lose is recall (a member similar to another member but to no representative
    gets no edge from this bucket; it can still get one from another band).
    Pairs found in several bands are verified once."""
    if verify not in ("signature", "jaccard", "none"):
        raise ValueError(f"verify must be signature|jaccard|none, got {verify!r}")
    N, nb = bkeys.shape
    nodes = np.arange(N, dtype=np.int64)
    if valid is not None:
        nodes = nodes[valid]
    if priority is None:
        priority = np.arange(N, dtype=np.int64)

    def passes(u, v):
        return verify_pairs(u, v, threshold, method=verify, sig=sig,
                            shingle_values=shingle_values, shingle_offsets=shingle_offsets,
                            jaccard_cap=jaccard_cap)

    us, vs = [], []
    big_mem, big_bucket = [], []
    nbig = 0
    for j in range(nb):
        mem, st, sz = _buckets(bkeys[nodes, j], nodes, priority[nodes])
        if verify == "none":
            u, v = _star_pairs(mem, st, sz)
            us.append(u)
            vs.append(v)
            continue
        small = sz <= all_pairs_max
        u, v = _all_pairs(mem, st[small], sz[small])
        us.append(u)
        vs.append(v)
        if (~small).any():
            bst, bsz = st[~small], sz[~small]
            idx = np.repeat(bst, bsz) + (np.arange(bsz.sum()) - np.repeat(np.cumsum(bsz) - bsz, bsz))
            big_mem.append(mem[idx])
            big_bucket.append(np.repeat(np.arange(nbig, nbig + len(bst)), bsz))
            nbig += len(bst)
    u, v = _unique_pairs(np.concatenate(us), np.concatenate(vs))
    if verify == "none":
        return u, v
    keep = passes(u, v)
    eu, ev = [u[keep]], [v[keep]]
    if nbig:
        bu, bv = _cover_big_buckets(np.concatenate(big_mem), np.concatenate(big_bucket),
                                    passes, star_rounds)
        eu.append(bu)
        ev.append(bv)
    return _unique_pairs(np.concatenate(eu), np.concatenate(ev))


def _cover_big_buckets(mem: np.ndarray, bucket: np.ndarray, passes,
                       rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy star cover of large buckets (members already in priority order inside
    each bucket), all buckets advanced together, one round at a time."""
    eu, ev = [], []
    alive = np.ones(len(mem), dtype=bool)
    for _ in range(rounds):
        pos = np.flatnonzero(alive)
        if len(pos) == 0:
            break
        b = bucket[pos]
        first = np.concatenate([[True], b[1:] != b[:-1]])
        rep_pos = pos[first]
        # representative of each alive member: the first alive member of its bucket
        grp = np.cumsum(first) - 1
        rep = mem[rep_pos][grp]
        others = ~first
        cu, cv = rep[others], mem[pos[others]]
        ok = passes(cu, cv) if len(cu) else np.zeros(0, bool)
        eu.append(cu[ok])
        ev.append(cv[ok])
        alive[rep_pos] = False
        alive[pos[others][ok]] = False
    if not eu:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(eu), np.concatenate(ev)



# ----------------------------------------------------------------------------------------
# Whole-corpus helpers (also used by the benchmark and by tests)
# ----------------------------------------------------------------------------------------
def _chunks_by_bytes(text: pa.Array, max_bytes: int = 4 << 20):
    """Slices of a string array of at most ~max_bytes of text (at least one row)."""
    off, _ = _string_buffers(text)
    n = len(text)
    i = 0
    while i < n:
        j = int(np.searchsorted(off, off[i] + max_bytes, side="right")) - 1
        j = min(max(j, i + 1), n)
        yield i, text.slice(i, j - i)
        i = j


def shingles(texts: Any, *, shingle: str = "word", ngram: int = 5,
             norm: Normalization = Normalization()) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of raw texts: ``(uint64[S], offsets int64[N+1])``."""
    text = _as_string_array(texts)
    vals, offs = [], [np.zeros(1, np.int64)]
    base = 0
    for _, part in _chunks_by_bytes(text):
        sh, so = _shingles_one_chunk(part, shingle, ngram, norm)
        vals.append(sh)
        offs.append(so[1:] + base)
        base += so[-1]
    return (np.concatenate(vals) if vals else np.zeros(0, U64)), np.concatenate(offs)


_SET_BITS = 44   # shingle-set values keep the top 44 bits of each shingle hash


def unique_shingle_sets(sh: np.ndarray, sh_off: np.ndarray,
                        cap: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-document sorted unique shingle hashes (CSR ``values``, ``offsets``); with
    ``cap``, only the ``cap`` smallest of each document (its bottom-k sketch).

    Values keep the top 44 bits of each 64-bit shingle hash (low 20 bits zeroed):
    that lets one ``np.sort`` of ``doc << 44 | hash >> 20`` replace a two-key
    lexsort; two distinct shingles of one document pair collide with
    probability 2^-44."""
    counts = np.diff(sh_off)
    n = len(counts)
    low = U64(64 - _SET_BITS)
    if n < (1 << (64 - _SET_BITS)):
        key = (np.repeat(np.arange(n, dtype=U64), counts) << U64(_SET_BITS)) | (sh >> low)
        key.sort()
        keep = np.ones(len(key), dtype=bool)
        keep[1:] = key[1:] != key[:-1]
        key = key[keep]
        d = (key >> U64(_SET_BITS)).astype(np.int64)
        s = key << low
    else:
        doc = np.repeat(np.arange(n), counts)
        v = (sh >> low) << low
        o = np.lexsort((v, doc))
        s, d = v[o], doc[o]
        keep = np.ones(len(s), dtype=bool)
        keep[1:] = (s[1:] != s[:-1]) | (d[1:] != d[:-1])
        s, d = s[keep], d[keep]
    per_doc = np.bincount(d, minlength=n)
    if cap is not None and len(per_doc) and per_doc.max() > cap:
        first = np.cumsum(per_doc) - per_doc
        rank = np.arange(len(s)) - np.repeat(first, per_doc)
        s = s[rank < cap]
        per_doc = np.minimum(per_doc, cap)
    off = np.zeros(n + 1, np.int64)
    np.cumsum(per_doc, out=off[1:])
    return s, off


def signatures(texts: Any, *, num_perm: int = 112, seed: int = 1, shingle: str = "word",
               ngram: int = 5, norm: Normalization = Normalization(),
               device: str = "cpu", return_counts: bool = False):
    """MinHash signatures ``uint32[N, num_perm]`` of raw texts (normalise, shingle,
    hash). ``device`` = cpu (numpy) | cuda (torch, bit-identical) | auto.
    With ``return_counts`` also returns the shingle count per document (int64)."""
    text = _as_string_array(texts)
    a, b = permutations(num_perm, seed)
    dev = resolve_device(device)
    out = np.empty((len(text), num_perm), dtype=SIG_DTYPE)
    counts = np.empty(len(text), dtype=np.int64)
    for i, part in _chunks_by_bytes(text):
        if dev == "cpu":
            sh, so = _shingles_one_chunk(part, shingle, ngram, norm)
            out[i:i + len(part)] = signatures_from_shingles(sh, so, a, b)
            counts[i:i + len(part)] = np.diff(so)
        else:
            from thresher.scorers.dedup import _minhash_torch as minhash_gpu
            tok, doc_off = text_tokens(part, shingle, norm)
            sig, cnt = minhash_gpu.signatures_from_tokens(tok, doc_off, ngram, a, b, device=dev)
            out[i:i + len(part)] = sig
            counts[i:i + len(part)] = cnt
    return (out, counts) if return_counts else out


@functools.cache
def _cuda_available() -> bool:
    import shutil
    if not (os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia")
            or shutil.which("nvidia-smi")):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``. ``cuda`` without one
    raises. (No torch import unless a GPU driver is present.)"""
    if device == "cpu":
        return "cpu"
    if device == "auto":
        return "cuda" if _cuda_available() else "cpu"
    if device.startswith("cuda"):
        if not _cuda_available():
            raise RuntimeError("device=cuda requested but torch sees no CUDA device")
        return device
    if device == "torch-cpu":     # the torch code path on CPU (tests, debugging)
        return device
    raise ValueError(f"device must be auto|cpu|cuda, got {device!r}")


def dedup_clusters(sig: np.ndarray, n_shingles: np.ndarray, *, threshold: float, bands: int,
                   rows: int, verify: str = "signature",
                   shingle_sets: Optional[tuple[np.ndarray, np.ndarray]] = None,
                   priority: Optional[np.ndarray] = None, components: str = "unionfind",
                   all_pairs_max: int = 64, star_rounds: int = 8,
                   jaccard_cap: Optional[int] = None,
                   timings: Optional[dict] = None) -> np.ndarray:
    """Cluster labels (component minimum row) for all rows, from signatures."""
    import time
    t0 = time.process_time()
    bk = band_keys(sig, bands, rows)
    t1 = time.process_time()
    sv, so = shingle_sets if shingle_sets is not None else (None, None)
    u, v = verified_edges(bk, threshold, verify=verify, sig=sig, shingle_values=sv,
                          shingle_offsets=so, valid=np.asarray(n_shingles) > 0,
                          priority=priority, all_pairs_max=all_pairs_max,
                          star_rounds=star_rounds, jaccard_cap=jaccard_cap)
    t2 = time.process_time()
    if components == "star":
        labels = star_components(len(sig), u, v)
    else:
        labels = union_find(len(sig), u, v)
    t3 = time.process_time()
    if timings is not None:
        timings["band_keys"] = timings.get("band_keys", 0.0) + t1 - t0
        timings["candidates+verify"] = timings.get("candidates+verify", 0.0) + t2 - t1
        timings["components"] = timings.get("components", 0.0) + t3 - t2
        timings["edges"] = len(u)
    return labels


