"""fastText classifier inference over whole Arrow batches, without fastText.

A supervised fastText model is an average of embedding rows followed by a
linear classifier. For one line of text, fastText

1. splits it into tokens on ASCII whitespace and NUL, and appends the
   end-of-line token ``</s>``;
2. collects, for every token, the row of the word (when it is in the
   vocabulary) and the rows of its character n-grams (``minn``..``maxn``
   characters of ``<token>``, hashed with 32-bit FNV-1a into ``bucket``
   buckets, dropped when a quantized model pruned them), and, with
   ``wordNgrams`` > 1, the rows of hashed word n-grams;
3. averages those rows into the hidden vector, and scores labels from it:
   a hierarchical softmax (``hs``, the loss of lid.176), a softmax, or
   one-vs-all sigmoids.

Steps 1 and 3 are the same for every document and vectorise directly. Step 2
is where fastText spends its time, and the work it does is a pure function of
the token: the sum of a token's rows and their number never change. So
:class:`NativeFastText` computes them once per distinct token, for all new
tokens of a batch at once (the n-gram hashing runs as array operations over
the bytes of every token), keeps them in a bounded cache, and turns a batch
into its hidden vectors with one sparse product (documents x cached tokens).
Real text repeats its words, so most of a corpus costs a lookup per distinct
token of a batch and a few multiply-adds per token.

The result equals fastText's, not approximately by design but by
construction: the same tokens, the same hash function (including fastText's
sign extension of bytes >= 0x80), the same pruning, the same tree. The only
difference is floating-point summation order, so probabilities agree to
~1e-5 (tests compare both on real text) and a decision can differ only for a
probability within that distance of a threshold.

Reads fastText's binary format version 12 (every ``.bin``/``.ftz`` saved by
fastText >= 0.2: lid.176.bin/.ftz, GlotLID, models trained by thresher),
dense or product-quantized input and output matrices, pruned or not. Dense
matrices are memory-mapped, not copied.
"""
from __future__ import annotations

import itertools
import mmap
import os
import threading
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.scorers.classifiers.fasttext_util import (
    LABEL_PREFIX,
    FastTextModelError,
    check_model_file,
)
from thresher.scorers.text.arrays import as_string_array

__all__ = ["NativeFastText", "LOSS_NAMES"]

_FNV_OFFSET = np.uint32(2166136261)
_FNV_PRIME = np.uint32(16777619)
_WORD_NGRAM_MULT = np.uint64(116049371)
_KSUB = 256
_EOS = b"</s>"
# std_log(0) = log(1e-5): fastText drops labels scoring below it. It compares in float32; a
# margin of 1e-6 keeps the labels it keeps when the same score is computed in float64.
_LOG_FLOOR = float(np.log(np.float32(1e-5))) - 1e-6

# output layers up to this many weights are applied with einsum (batch-independent);
# larger ones (thousands of labels) with BLAS
_EINSUM_MAX = 1 << 16
# dictionaries up to this size are searched with Arrow's index_in (rebuilt per batch of new
# tokens); bigger ones through a Python dict
_ARROW_VOCAB_MAX = 200_000

try:   # optional compiled n-gram kernel (setup.py); the numpy code gives the same pairs
    from thresher.scorers.classifiers import _ftnative as _KERNEL
except ImportError:   # pragma: no cover - depends on the build
    _KERNEL = None
if os.environ.get("THRESHER_NO_C_KERNEL"):
    _KERNEL = None

LOSS_NAMES = {1: "hs", 2: "ns", 3: "softmax", 4: "ova"}
_SUPERVISED = 3

# token kinds in the cache
_WORD, _SKIP, _EOS_KIND = 0, 1, 2


# Loss::sigmoid of fastText (used by the one-vs-all and negative-sampling losses):
# a 513-entry table over [-8, 8], not the exact function.
_SIGMOID_TABLE_SIZE = 512
_MAX_SIGMOID = 8
_SIGMOID_TABLE = (1.0 / (1.0 + np.exp(-(
    np.arange(_SIGMOID_TABLE_SIZE + 1, dtype=np.float32) * np.float32(2 * _MAX_SIGMOID)
    / np.float32(_SIGMOID_TABLE_SIZE) - np.float32(_MAX_SIGMOID)).astype(np.float64)))).astype(np.float32)


def _table_sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    pos = (x + np.float32(_MAX_SIGMOID)) * np.float32(_SIGMOID_TABLE_SIZE) \
        / np.float32(_MAX_SIGMOID) / np.float32(2)
    i = np.clip(np.nan_to_num(pos, nan=0.0), 0, _SIGMOID_TABLE_SIZE).astype(np.int64)
    out = _SIGMOID_TABLE[i]
    out = np.where(x < -_MAX_SIGMOID, np.float32(0), out)
    return np.where(x > _MAX_SIGMOID, np.float32(1), out)


def _fnv1a(data: bytes) -> int:
    """fastText's Dictionary::hash (FNV-1a over sign-extended bytes), as uint32."""
    h = 2166136261
    for b in data:
        h = ((h ^ (b | 0xFFFFFF00 if b >= 0x80 else b)) * 16777619) & 0xFFFFFFFF
    return h


class _Layout:
    """Byte offsets and arrays of one model file, read with numpy views."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as fh:
            self.buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.pos = 0

    def take(self, dtype, count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        out = np.frombuffer(self.buf, dt, count, self.pos)
        self.pos += dt.itemsize * count
        return out

    def scalar(self, dtype):
        return self.take(dtype, 1)[0].item()

    def cstring(self) -> bytes:
        end = self.buf.find(b"\0", self.pos)
        s = self.buf[self.pos:end]
        self.pos = end + 1
        return s


def _read_pq(r: _Layout):
    dim, nsubq, dsub, lastdsub = (int(x) for x in r.take("<i4", 4))
    centroids = r.take("<f4", dim * _KSUB)
    return nsubq, dsub, lastdsub, centroids


def _decode_pq(codes: np.ndarray, nsubq: int, dsub: int, lastdsub: int,
               centroids: np.ndarray, dim: int) -> np.ndarray:
    """Rows of a product-quantized matrix (``codes``: rows x nsubq) as float32."""
    out = np.empty((codes.shape[0], dim), np.float32)
    for s in range(nsubq):
        width = dsub if s < nsubq - 1 else lastdsub
        base = s * _KSUB * dsub
        table = centroids[base: base + _KSUB * width].reshape(_KSUB, width)
        out[:, s * dsub: s * dsub + width] = table[codes[:, s]]
    return out


def _read_matrix(r: _Layout, quantized: bool, path: str, what: str) -> np.ndarray:
    if not quantized:
        m, n = (int(x) for x in r.take("<i8", 2))
        off = r.pos
        r.pos += m * n * 4
        return np.memmap(path, dtype="<f4", mode="r", offset=off, shape=(m, n))
    qnorm = bool(r.scalar("u1"))
    m, n = (int(x) for x in r.take("<i8", 2))
    codesize = int(r.scalar("<i4"))
    codes = r.take("u1", codesize)
    nsubq, dsub, lastdsub, centroids = _read_pq(r)
    if codesize != m * nsubq:
        raise FastTextModelError(path, f"file is corrupt: {what} matrix has {codesize} codes "
                                       f"for {m} rows of {nsubq} sub-quantizers")
    mat = _decode_pq(codes.reshape(m, nsubq), nsubq, dsub, lastdsub, centroids, n)
    if qnorm:
        norm_codes = r.take("u1", m)
        _nsq, _ds, _lds, norm_centroids = _read_pq(r)
        mat *= norm_centroids[norm_codes][:, None]
    return mat


def _huffman_levels(counts: np.ndarray):
    """fastText's hierarchical-softmax tree (HierarchicalSoftmaxLoss::buildTree), by depth.

    Returns a list, root first, of one ``(right_nodes, right_parents, left_nodes,
    left_parents)`` tuple per depth: the tree nodes at that depth reached by
    going right (binary code 1, score += log f) and left (score += log(1 - f)),
    with their parents' internal-node index (parent - labels). Leaves are
    nodes 0..labels-1, the root is node 2 * labels - 2.
    """
    osz = len(counts)
    total = 2 * osz - 1
    parent = np.full(total, -1, np.int64)
    binary = np.zeros(total, bool)
    count = np.full(total, 10 ** 15, np.int64)
    count[:osz] = counts
    leaf, node = osz - 1, osz
    for i in range(osz, total):
        mini = [0, 0]
        for j in range(2):
            if leaf >= 0 and count[leaf] < count[node]:
                mini[j] = leaf
                leaf -= 1
            else:
                mini[j] = node
                node += 1
        count[i] = count[mini[0]] + count[mini[1]]
        parent[mini[0]] = i
        parent[mini[1]] = i
        binary[mini[1]] = True
    depth = np.zeros(total, np.int64)
    for i in range(total - 2, -1, -1):      # parents have higher numbers than children
        depth[i] = depth[parent[i]] + 1
    levels = []
    for d in range(1, int(depth.max()) + 1 if total > 1 else 1):
        at = np.flatnonzero(depth == d)
        r, lft = at[binary[at]], at[~binary[at]]
        levels.append((r, parent[r] - osz, lft, parent[lft] - osz))
    return levels


def _offsets_and_data(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """int64 offsets (starting at 0) and the uint8 bytes of a binary array."""
    wide = pa.types.is_large_binary(arr.type) or pa.types.is_large_string(arr.type)
    n = len(arr)
    bufs = arr.buffers()
    dt = np.dtype(np.int64 if wide else np.int32)
    offs = np.frombuffer(bufs[1], dt, n + 1, arr.offset * dt.itemsize)
    offs = offs.astype(np.int64)
    if bufs[2] is None or offs[-1] == offs[0]:
        data = np.zeros(0, np.uint8)
    else:
        data = np.frombuffer(bufs[2], np.uint8)[offs[0]:offs[-1]]
    return offs - offs[0], data


class NativeFastText:
    """A fastText supervised model, scored over Arrow string arrays.

    ``cache_tokens`` bounds the per-token cache (about 150 bytes per entry
    for lid.176; 0 disables it). Instances are safe to share between threads.
    """

    def __init__(self, path: str, cache_tokens: int = 1_000_000):
        spath = os.fspath(path)
        info = check_model_file(spath)
        if info.get("version") != 12:
            raise FastTextModelError(
                spath, f"file-format version {info.get('version')}: the native engine reads "
                       "version 12 (fastText >= 0.2); use engine: fasttext for older files")
        self.path = spath
        self.cache_tokens = int(cache_tokens)
        r = _Layout(spath)
        r.pos = 8
        a = r.take("<i4", 12)
        (self.dim, _ws, _epoch, _mincount, _neg, self.word_ngrams, self.loss, model,
         self.bucket, self.minn, self.maxn, _lr_update) = (int(x) for x in a)
        r.pos += 8   # t (double)
        if model != _SUPERVISED:
            raise FastTextModelError(
                spath, "is an unsupervised (word-vector) model, not a classifier")
        if self.loss not in LOSS_NAMES:
            raise FastTextModelError(spath, f"file is corrupt: unknown loss {self.loss}")
        size, self.nwords, self.nlabels = (int(x) for x in r.take("<i4", 3))
        _ntokens, prune = (int(x) for x in r.take("<i8", 2))
        words, counts = [], []
        for _ in range(size):
            words.append(r.cstring())
            counts.append(int(r.scalar("<i8")))
            r.pos += 1   # entry type
        self.prune_size = prune
        pruneidx = r.take("<i4", 2 * prune).reshape(-1, 2) if prune > 0 else None
        qin = bool(r.scalar("u1"))
        self.input = _read_matrix(r, qin, spath, "input")
        qout = bool(r.scalar("u1"))
        self.output = np.ascontiguousarray(_read_matrix(r, qout, spath, "output"), np.float32)
        self.quantized = qin
        self.words = words
        self.labels = [w.decode("utf-8", "replace") for w in words[self.nwords:]]
        # the dictionary's entries: an Arrow array for index_in, or a dict for big vocabularies
        small_vocab = size <= _ARROW_VOCAB_MAX
        self._entries = pa.array(words, pa.large_binary()) if small_vocab else None
        self._entry = None if small_vocab else {w: i for i, w in enumerate(words)}
        # bucket -> input row + 1 (0: pruned away); None: every bucket is a row
        if prune >= 0:
            small = self.input.shape[0] < np.iinfo(np.uint16).max
            table = np.zeros(self.bucket, np.uint16 if small else np.int32)
            if prune > 0:
                table[pruneidx[:, 0]] = self.nwords + pruneidx[:, 1] + 1
            self._bucket_rows = table
        else:
            self._bucket_rows = None
        if self.loss == 1:
            self._levels = _huffman_levels(np.asarray(counts[self.nwords:], np.int64))
        # cache: token bytes -> row of (sum of rows..., number of rows), kind, word hash
        self._lock = threading.Lock()
        self._table = _TokenTable()
        self._vec = np.zeros((1024, self.dim + 1), np.float32)
        self._kind = np.zeros(1024, np.int8)
        self._hash = np.zeros(1024, np.int32)
        self._size = 0
        self._ones_buf = np.ones(0, np.float32)
        self.use_kernel = True     # the compiled n-gram kernel when built (same results)
        first = pa.array([b"", _EOS], pa.large_binary())
        vec, kind, whash = self._token_table(first)
        offs, data = _offsets_and_data(first)
        self._append(_token_keys(offs, data) + (offs, data), vec, kind, whash)
        self._eos_row = 1

    # -- public --------------------------------------------------------------------------
    @property
    def loss_name(self) -> str:
        return LOSS_NAMES[self.loss]

    def label_index(self, label: str) -> int:
        """Index of ``label`` (with or without the ``__label__`` prefix), or -1."""
        full = label if label.startswith(LABEL_PREFIX) else LABEL_PREFIX + label
        try:
            return self.labels.index(full)
        except ValueError:
            return -1

    def scores(self, text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Per-row log-probability of every label, as fastText computes them.

        Returns ``(scores [rows, labels], valid [rows] bool)`` (float32 for the
        hierarchical softmax, which fastText sums in float32; float64 else); a row
        is invalid when it contributes no embedding row at all (fastText
        would divide by zero), which cannot happen while ``</s>`` is in the
        vocabulary.
        """
        hidden, valid = self.hidden(text)
        out = self.output if self.loss != 1 else self.output[: max(self.nlabels - 1, 1)]
        if out.size <= _EINSUM_MAX:
            # einsum sums every row in the same order whatever the batch, so a row's
            # scores do not depend on which rows share its batch (BLAS's do, in the last bit)
            logits = np.einsum("nd,ld->nl", hidden, out)
        else:
            logits = hidden @ out.T
        if self.loss == 1:
            return self._tree_scores(logits), valid
        if self.loss == 3:
            z = logits.astype(np.float64)
            z -= z.max(axis=1, keepdims=True) if z.size else 0
            np.exp(z, out=z)
            z /= z.sum(axis=1, keepdims=True)
            s = np.log(z + 1e-5)
        else:   # ns / ova: one sigmoid per label, from fastText's lookup table
            s = np.log(_table_sigmoid(logits).astype(np.float64) + 1e-5)
        return s, valid

    def _tree_scores(self, logits: np.ndarray) -> np.ndarray:
        """Log-probability of every leaf: the root-to-leaf sums of fastText's DFS, in float32."""
        n = logits.shape[0]
        with np.errstate(over="ignore"):
            f = 1.0 / (1.0 + np.exp(-logits.T))               # internal nodes x rows
        lf = np.log(f + np.float32(1e-5))
        lg = np.log(np.float32(1.0) - f + np.float32(1e-5))
        score = np.zeros((2 * self.nlabels - 1, n), np.float32)
        for right, rparent, left, lparent in self._levels:
            score[right] = score[rparent + self.nlabels] + lf[rparent]
            score[left] = score[lparent + self.nlabels] + lg[lparent]
        return score[: self.nlabels].T

    def predict_top(self, text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Top label index (-1: none) and its probability, per row (fastText k=1)."""
        s, valid = self.scores(text)
        n = len(text)
        if n == 0 or s.shape[1] == 0:
            return np.full(n, -1, np.int32), np.zeros(n, np.float32)
        best = s.argmax(axis=1)
        top = s[np.arange(n), best]
        ok = valid & (top >= _LOG_FLOOR)
        idx = np.where(ok, best, -1).astype(np.int32)
        prob = np.where(ok, np.exp(top), 0.0).astype(np.float32)
        return idx, prob

    def label_prob(self, text: pa.Array, label: str) -> np.ndarray:
        """Probability of one label per row, as fastText's ``predict(k=-1)`` reports it."""
        j = self.label_index(label)
        if j < 0:
            shown = ", ".join(x[len(LABEL_PREFIX):] for x in self.labels[:20])
            raise ValueError(f"label {label!r} is not one of the model's labels: {shown}")
        s, valid = self.scores(text)
        col = s[:, j]
        return np.where(valid & (col >= _LOG_FLOOR), np.exp(col), 0.0).astype(np.float32)

    # -- hidden vectors --------------------------------------------------------------------
    def hidden(self, text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """fastText's hidden vector per row (float32 [rows, dim]) and a validity mask."""
        import scipy.sparse as sps

        text = _as_string_array(text)
        n = len(text)
        if n == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, bool)
        if text.null_count:
            text = pc.fill_null(text, "")
        if _has_nul(text):
            text = pc.replace_substring(text, "\0", " ")
        split = pc.ascii_split_whitespace(text)
        offsets = np.asarray(split.offsets, np.int64)
        offsets = offsets - offsets[0]
        tokens = split.flatten()
        with self._lock:   # the cache (and its scratch rows) serve one batch at a time
            has_eos = False
            if len(tokens) == 0:
                rows = np.zeros(0, np.int32)
            else:
                enc = pc.dictionary_encode(tokens)
                dictionary = enc.dictionary.cast(pa.large_binary())
                drows = self._rows(dictionary)
                has_eos = bool((self._kind[drows] == _EOS_KIND).any())
                rows = drows.astype(np.int32)[np.asarray(enc.indices)]
            vec, kind, whash = self._vec, self._kind, self._hash
            ends_with_eos = np.zeros(n, bool)
            if has_eos:
                rows, offsets, ends_with_eos = _cut_at_eos(rows, offsets, kind[rows] == _EOS_KIND)
            if offsets[-1] < np.iinfo(np.int32).max:
                offsets = offsets.astype(np.int32)
            docs = sps.csr_matrix((self._ones(len(rows)), rows, offsets), shape=(n, len(vec)))
            acc = np.asarray(docs @ vec, np.float32)
            acc[~ends_with_eos] += vec[self._eos_row]
            if self.word_ngrams > 1:
                acc += self._word_ngrams(rows, offsets, kind[rows], whash, ends_with_eos)
        count = acc[:, -1]
        valid = count > 0
        hidden = acc[:, :-1] / np.where(valid, count, 1)[:, None]
        return hidden, valid

    def _ones(self, n: int) -> np.ndarray:
        """A read-only float32 array of n ones (the values of the sparse count matrices)."""
        if len(self._ones_buf) < n:
            self._ones_buf = np.ones(max(n, 2 * len(self._ones_buf)), np.float32)
            self._ones_buf.flags.writeable = False
        return self._ones_buf[:n]

    def _word_ngrams(self, rows, offsets, tok_kind, whash, ends_with_eos) -> np.ndarray:
        """Sums and counts of the word n-gram rows of every document (Dictionary::addWordNgrams)."""
        import scipy.sparse as sps

        n = len(offsets) - 1
        doc = np.repeat(np.arange(n), np.diff(offsets))
        words = tok_kind != _SKIP
        h = whash[rows[words]].astype(np.int64)
        d = doc[words]
        # the end-of-line token closes every line that did not end on a literal </s>
        add = np.flatnonzero(~ends_with_eos)
        pos = np.searchsorted(d, add, side="right")
        h = np.insert(h, pos, int(whash[self._eos_row]))
        d = np.insert(d, pos, add)
        length = len(h)
        hu = h.view(np.uint64)
        k_max = self.word_ngrams - 1
        out = np.zeros((length, k_max), np.int64)   # input row + 1, 0: none
        cur = hu.copy()
        for k in range(1, k_max + 1):
            if length <= k:
                break
            same = d[k:] == d[:-k]
            cur = cur[:-1] * _WORD_NGRAM_MULT + hu[k:]
            b = (cur % np.uint64(self.bucket)).astype(np.int64)
            r = self._bucket_row_array(b)
            out[: length - k, k - 1] = np.where(same, r, 0)
        flat = out.ravel()
        nz = np.flatnonzero(flat)
        owner = d[nz // k_max]
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(owner, minlength=n), out=indptr[1:])
        mat = sps.csr_matrix((np.ones(len(nz), np.float32), flat[nz] - 1, indptr),
                             shape=(n, self.input.shape[0]))
        res = np.zeros((n, self.dim + 1), np.float32)
        res[:, :-1] = mat @ self.input
        res[:, -1] = np.diff(indptr)
        return res

    def _bucket_row_array(self, buckets: np.ndarray) -> np.ndarray:
        """Input row + 1 for hashed buckets (0 where pruned)."""
        if self._bucket_rows is None:
            return buckets.astype(np.int64) + self.nwords + 1
        return np.take(self._bucket_rows, buckets)

    # -- per-token cache -------------------------------------------------------------------
    def _rows(self, dictionary: pa.Array) -> np.ndarray:
        """Cache rows of the distinct tokens of a batch, computing the new ones."""
        offs, data = _offsets_and_data(dictionary)
        h1, h2 = _token_keys(offs, data)
        rows = self._table.lookup(h1, h2, offs, data)
        new = np.flatnonzero(rows < 0)
        if len(new) == 0:
            return rows
        fresh = dictionary.take(pa.array(new))
        vec, kind, whash = self._token_table(fresh)
        keep = min(max(self.cache_tokens - self._size, 0), len(new))
        if keep:
            noffs, ndata = _offsets_and_data(fresh[:keep])
            rows[new[:keep]] = self._append((h1[new[:keep]], h2[new[:keep]], noffs, ndata),
                                            vec[:keep], kind[:keep], whash[:keep])
        if keep < len(new):
            # cache full: the rest serve this batch from scratch rows past the cached ones
            rows[new[keep:]] = self._append(None, vec[keep:], kind[keep:], whash[keep:])
        return rows

    def _append(self, keys, vec, kind, whash) -> np.ndarray:
        """Store rows; ``keys`` (h1, h2, offsets, bytes) None: past the cache, this batch only."""
        start = self._size
        end = start + len(vec)
        if end > len(self._kind):
            cap = max(end, 2 * len(self._kind))
            for name in ("_vec", "_kind", "_hash"):
                old = getattr(self, name)
                grown = np.zeros((cap,) + old.shape[1:], old.dtype)
                grown[: len(old)] = old
                setattr(self, name, grown)
        self._vec[start:end] = vec
        self._kind[start:end] = kind
        self._hash[start:end] = whash
        rows = np.arange(start, end)
        if keys is not None:
            h1, h2, offs, data = keys
            self._table.insert(h1, h2, offs, data, rows)
            self._size = end
        return rows

    def _token_table(self, tokens: pa.Array, keys: Optional[list] = None):
        """For distinct tokens: (sum of their input rows + count [u, dim+1], kind, word hash)."""
        import scipy.sparse as sps

        u = len(tokens)
        offs, data = _offsets_and_data(tokens)
        lens = np.diff(offs)
        # dictionary entry of each token (words, labels, </s>)
        if self._entries is not None:
            ent = np.asarray(pc.index_in(tokens, value_set=self._entries).fill_null(-1), np.int64)
        else:
            keys = tokens.to_pylist() if keys is None else keys
            ent = np.fromiter(map(self._entry.get, keys, itertools.repeat(-1)), np.int64, u)
        is_label = ent >= self.nwords
        unknown = ent < 0
        if unknown.any():
            starts = np.asarray(pc.fill_null(pc.starts_with(tokens.cast(pa.large_string()),
                                                            LABEL_PREFIX), False), bool)
            is_label |= unknown & starts
        kind = np.where(is_label | (lens == 0), _SKIP, _WORD).astype(np.int8)
        is_eos = np.asarray(pc.fill_null(pc.equal(tokens, pa.scalar(_EOS, tokens.type)), False), bool)
        kind[is_eos] = _EOS_KIND
        word_id = np.where((ent >= 0) & (ent < self.nwords), ent, -1)
        whash = self._word_hashes(offs, data) if self.word_ngrams > 1 else np.zeros(u, np.int32)

        # character n-grams of "<token>", for word tokens other than </s>
        sub = (kind == _WORD) & ~is_eos & (self.maxn > 0)
        nrows_cols = []   # (token index array, input row + 1 array) pieces, token-sorted
        if sub.all():
            grams_tok, grams_row = self._char_ngrams(offs, data)
        else:
            pick = np.flatnonzero(sub)
            grams_tok, grams_row = self._char_ngrams(*_offsets_and_data(tokens.take(pa.array(pick))))
            grams_tok = pick[grams_tok]
        # word rows (in-vocabulary words, and </s> when it is in the vocabulary)
        has_word = (word_id >= 0) & (kind != _SKIP)
        wt = np.flatnonzero(has_word)
        nrows_cols.append((wt, word_id[wt] + 1))
        nrows_cols.append((grams_tok, grams_row))
        tok = np.concatenate([p[0] for p in nrows_cols])
        row = np.concatenate([p[1] for p in nrows_cols]) - 1
        order = np.argsort(tok, kind="stable")
        tok, row = tok[order], row[order]
        indptr = np.zeros(u + 1, np.int64)
        np.cumsum(np.bincount(tok, minlength=u), out=indptr[1:])
        mat = sps.csr_matrix((np.ones(len(row), np.float32), row, indptr),
                             shape=(u, self.input.shape[0]))
        vec = np.zeros((u, self.dim + 1), np.float32)
        if len(row):
            vec[:, :-1] = mat @ self.input
        vec[:, -1] = np.diff(indptr)
        return vec, kind, whash

    def _char_ngrams(self, offs: np.ndarray, data: np.ndarray):
        """(token, input row + 1) of the kept character n-grams of every token."""
        if self.use_kernel and _KERNEL is not None:
            return self._char_ngrams_kernel(offs, data)
        return self._char_ngrams_numpy(offs, data)

    def _char_ngrams_kernel(self, offs: np.ndarray, data: np.ndarray):
        """The compiled kernel over chunks of about 4 MB of token bytes (bounded memory)."""
        u = len(offs) - 1
        minn = max(self.minn, 1)
        ncol = self.maxn - minn + 1
        table = self._bucket_rows
        if table is None:
            table = np.zeros(0, np.uint16)
        data = np.ascontiguousarray(data, np.uint8)
        toks, rows = [], []
        lo = 0
        while lo < u:
            hi = int(np.searchsorted(offs, offs[lo] + (1 << 22), side="right")) - 1
            hi = min(max(hi, lo + 1), u)
            o = np.ascontiguousarray(offs[lo:hi + 1] - offs[lo], np.int64)
            cap = max((int(o[-1]) + 2 * (hi - lo)) * ncol, 1)
            tok = np.empty(cap, np.int32)
            row = np.empty(cap, np.int32)
            k = _KERNEL.char_ngrams(data[offs[lo]:offs[hi]], o, table, table.itemsize, self.nwords,
                                    self.bucket, minn, self.maxn, tok, row)
            toks.append(tok[:k].astype(np.int64) + lo)
            rows.append(row[:k].astype(np.int64))
            lo = hi
        if not toks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(toks), np.concatenate(rows)

    def _char_ngrams_numpy(self, offs: np.ndarray, data: np.ndarray):
        u = len(offs) - 1
        if u == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        # bytes of "<token>" for every token, back to back
        bo = offs + 2 * np.arange(u + 1)
        total = int(bo[-1])
        buf = np.empty(total + 8, np.uint8)
        inner = np.ones(total, bool)
        inner[bo[:-1]] = False
        inner[bo[1:] - 1] = False
        buf[:total][inner] = data
        buf[bo[:-1]] = 0x3C   # '<'
        buf[bo[1:] - 1] = 0x3E   # '>'
        buf[total:] = 0
        sext = buf.view(np.int8).astype(np.int32).view(np.uint32)
        lead = (buf[:total] & 0xC0) != 0x80
        starts = np.flatnonzero(lead)
        nstart = len(starts)
        nchar = np.add.reduceat(lead, bo[:-1], dtype=np.int64)
        last = np.cumsum(nchar)
        remaining = np.repeat(last, nchar) - np.arange(nstart)   # characters from here to the end
        maxn, minn = self.maxn, max(self.minn, 1)
        sp = np.empty(nstart + maxn + 1, np.int64)
        sp[:nstart] = starts
        sp[nstart:] = total
        clen = np.diff(sp)
        multi = np.flatnonzero(clen[:nstart] > 1)
        h = np.full(nstart, _FNV_OFFSET, np.uint32)
        ncol = maxn - minn + 1
        out = np.zeros((ncol, nstart), np.int32)    # input row + 1 of n-gram (n, start); 0: none
        for n in range(1, maxn + 1):
            cs = sp[n - 1: n - 1 + nstart]
            h ^= sext[cs]
            h *= _FNV_PRIME
            m = multi - (n - 1)
            m = m[m >= 0]
            if len(m):
                cl = clen[m + n - 1]
                base = cs[m]
                for k in (1, 2, 3):
                    sel = cl > k
                    if not sel.any():
                        break
                    m, cl, base = m[sel], cl[sel], base[sel]
                    h[m] = (h[m] ^ sext[base + k]) * _FNV_PRIME
            if n >= minn:
                row = out[n - minn]
                row[:] = self._bucket_row_array(h % np.uint32(self.bucket))
                row *= remaining >= n
                if n == 1:   # a lone '<' or '>' is not an n-gram
                    row[(remaining == np.repeat(nchar, nchar)) | (remaining == 1)] = 0
        flat = out.ravel()
        nz = np.flatnonzero(flat)
        owner = np.repeat(np.arange(u), nchar)
        return owner[nz % nstart], flat[nz].astype(np.int64)

    @staticmethod
    def _word_hashes(offs: np.ndarray, data: np.ndarray) -> np.ndarray:
        """fastText's int32 hash of every token (for word n-grams)."""
        u = len(offs) - 1
        lens = np.diff(offs)
        h = np.full(u, _FNV_OFFSET, np.uint32)
        sext = data.view(np.int8).astype(np.int32).view(np.uint32)
        long_ = lens > 256
        active = np.flatnonzero((lens > 0) & ~long_)
        k = 0
        while len(active):
            h[active] = (h[active] ^ sext[offs[active] + k]) * _FNV_PRIME
            k += 1
            active = active[lens[active] > k]
        for i in np.flatnonzero(long_):
            h[i] = _fnv1a(bytes(data[offs[i]:offs[i + 1]]))
        return h.view(np.int32)

# --------------------------------------------------------------------------------------
# distinct-token table: token bytes -> cache row, all operations over arrays
# --------------------------------------------------------------------------------------

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_M3 = np.uint64(0x165667B19E3779F9)
_SH29, _SH32, _SH33 = np.uint64(29), np.uint64(32), np.uint64(33)
_LONG_TOKEN = 4096     # longer tokens are hashed and compared one by one


def _word_windows(data: np.ndarray) -> np.ndarray:
    """Overlapping 8-byte windows over ``data`` (row i = bytes i..i+7, zero padded)."""
    from numpy.lib.stride_tricks import as_strided

    pad = np.zeros(len(data) + 8, np.uint8)
    pad[: len(data)] = data
    return as_strided(pad, shape=(len(data) + 1, 8), strides=(1, 1), writeable=False)


def _words(windows: np.ndarray, pos: np.ndarray, remaining: np.ndarray) -> np.ndarray:
    """The little-endian 8-byte word at each ``pos``, keeping only ``remaining`` bytes."""
    w = np.ascontiguousarray(windows[pos]).view(np.uint64).ravel()
    short = remaining < 8
    if short.any():
        bits = remaining[short].astype(np.uint64) * np.uint64(8)
        w[short] &= (np.uint64(1) << bits) - np.uint64(1)
    return w


def _token_keys(offs: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes of every token (a lookup key, not an identity:
    :class:`_TokenTable` compares the bytes of every hit)."""
    import hashlib

    lens = np.diff(offs)
    nwords = (lens + 7) // 8
    windows = _word_windows(data)
    with np.errstate(over="ignore"):
        h1 = lens.astype(np.uint64) * _M1 ^ np.uint64(0x243F6A8885A308D3)
        h2 = lens.astype(np.uint64) * _M2 ^ np.uint64(0x13198A2E03707344)
        active = np.flatnonzero((nwords > 0) & (lens <= _LONG_TOKEN))
        k = 0
        while len(active):
            w = _words(windows, offs[active] + 8 * k, lens[active] - 8 * k)
            a = (h1[active] ^ w) * _M1
            a ^= a >> _SH29
            b = (h2[active] + w) * _M2
            b ^= b >> _SH32
            h1[active] = a
            h2[active] = b
            k += 1
            active = active[nwords[active] > k]
        h1 ^= h1 >> _SH33
        h1 *= _M3
        h1 ^= h1 >> _SH33
        h2 ^= h2 >> _SH29
        h2 *= _M1
        h2 ^= h2 >> _SH32
    for i in np.flatnonzero(lens > _LONG_TOKEN):
        dg = hashlib.blake2b(data[offs[i]:offs[i + 1]].tobytes(), digest_size=16).digest()
        h1[i] = int.from_bytes(dg[:8], "little")
        h2[i] = int.from_bytes(dg[8:], "little")
    return h1, h2


class _TokenTable:
    """Open-addressing hash table from token bytes to a row number, in numpy.

    Keys are two 64-bit hashes; every hit is confirmed by comparing the stored
    bytes of the token with the query's, so a hash collision can cost a probe
    but never return another token's row.
    """

    def __init__(self, capacity: int = 1 << 16):
        self._alloc(capacity)
        self.size = 0
        self.data = np.zeros(1 << 16, np.uint8)     # bytes of the stored tokens
        self.offs = np.zeros(1024, np.int64)       # start of token i's bytes
        self.lens = np.zeros(1024, np.int64)
        self.used = 0

    def _alloc(self, capacity: int) -> None:
        self.k1 = np.zeros(capacity, np.uint64)
        self.k2 = np.zeros(capacity, np.uint64)
        self.val = np.full(capacity, -1, np.int64)
        self.mask = np.uint64(capacity - 1)

    def lookup(self, h1, h2, offs, data) -> np.ndarray:
        """Row of every query token, -1 when absent."""
        n = len(h1)
        out = np.full(n, -1, np.int64)
        if self.size == 0 or n == 0:
            return out
        slot = (h1 & self.mask).astype(np.int64)
        pend = np.arange(n)
        cand_q, cand_r = [], []
        while len(pend):
            s = slot[pend]
            v = self.val[s]
            full = v >= 0
            hit = full & (self.k1[s] == h1[pend]) & (self.k2[s] == h2[pend])
            cand_q.append(pend[hit])
            cand_r.append(v[hit])
            go_on = full & ~hit
            pend = pend[go_on]
            slot[pend] = (s[go_on] + 1) & int(self.mask)
        q = np.concatenate(cand_q)
        r = np.concatenate(cand_r)
        same = self._same_bytes(q, r, offs, data)
        out[q[same]] = r[same]
        if not same.all():
            # a true 128-bit collision: resolve those few one by one
            for qi in q[~same]:
                out[qi] = self._scan(int(qi), h1, h2, offs, data)
        return out

    def _scan(self, qi, h1, h2, offs, data) -> int:
        token = data[offs[qi]:offs[qi + 1]].tobytes()
        s = int(h1[qi] & self.mask)
        while self.val[s] >= 0:
            r = int(self.val[s])
            if (self.k1[s] == h1[qi] and self.k2[s] == h2[qi]
                    and self.data[self.offs[r]:self.offs[r] + self.lens[r]].tobytes() == token):
                return r
            s = (s + 1) & int(self.mask)
        return -1

    def _same_bytes(self, q, r, offs, data) -> np.ndarray:
        qlen = offs[q + 1] - offs[q]
        same = qlen == self.lens[r]
        idx = np.flatnonzero(same & (qlen > 0))
        if len(idx) == 0:
            return same
        qwin = _word_windows(data)
        swin = _word_windows(self.data[: self.used])
        k = 0
        nwords = (qlen + 7) // 8
        active = idx
        while len(active):
            rem = qlen[active] - 8 * k
            a = _words(qwin, offs[q[active]] + 8 * k, rem)
            b = _words(swin, self.offs[r[active]] + 8 * k, rem)
            bad = a != b
            same[active[bad]] = False
            k += 1
            active = active[~bad & (nwords[active] > k)]
        return same

    def insert(self, h1, h2, offs, data, rows) -> None:
        """Add tokens (distinct, absent) with their rows."""
        m = len(h1)
        if m == 0:
            return
        if 2 * (self.size + m) > len(self.val):
            self._grow(2 * (self.size + m))
        # keep the bytes for the comparisons
        lens = np.diff(offs)
        need = self.used + int(lens.sum())
        if need > len(self.data):
            grown = np.zeros(max(need, 2 * len(self.data)), np.uint8)
            grown[: self.used] = self.data[: self.used]
            self.data = grown
        top = int(rows.max()) + 1
        if top > len(self.offs):
            cap = max(top, 2 * len(self.offs))
            for name in ("offs", "lens"):
                old = getattr(self, name)
                grown = np.zeros(cap, np.int64)
                grown[: len(old)] = old
                setattr(self, name, grown)
        self.data[self.used: need] = data[offs[0]:offs[-1]]
        self.offs[rows] = self.used + (offs[:-1] - offs[0])
        self.lens[rows] = lens
        self.used = need
        self._place(h1, h2, rows)
        self.size += m

    def _place(self, h1, h2, rows) -> None:
        slot = (h1 & self.mask).astype(np.int64)
        pend = np.arange(len(h1))
        while len(pend):
            s = slot[pend]
            free = self.val[s] < 0
            cand, cs = pend[free], s[free]
            # several tokens may want one free slot: one write wins, read back which
            self.val[cs] = rows[cand]
            won = self.val[cs] == rows[cand]
            self.k1[cs[won]] = h1[cand[won]]
            self.k2[cs[won]] = h2[cand[won]]
            placed = np.zeros(len(h1), bool)
            placed[cand[won]] = True
            pend = pend[~placed[pend]]
            slot[pend] = (slot[pend] + 1) & int(self.mask)

    def _grow(self, need: int) -> None:
        cap = 1 << int(np.ceil(np.log2(max(need, 16))))
        occupied = np.flatnonzero(self.val >= 0)
        k1, k2, val = self.k1[occupied], self.k2[occupied], self.val[occupied]
        self._alloc(cap)
        self._place(k1, k2, val)


def _has_nul(text: pa.Array) -> bool:
    """Whether any row contains a NUL byte (fastText splits tokens on it)."""
    wide = pa.types.is_large_string(text.type)
    bufs = text.buffers()
    if bufs[2] is None or len(text) == 0:
        return False
    dt = np.dtype(np.int64 if wide else np.int32)
    offs = np.frombuffer(bufs[1], dt, len(text) + 1, text.offset * dt.itemsize)
    data = np.frombuffer(bufs[2], np.uint8)[int(offs[0]):int(offs[-1])]
    return bool(len(data)) and not bool(data.all())


def _as_string_array(text) -> pa.Array:
    return as_string_array(text, large_ok=True)


def _cut_at_eos(rows: np.ndarray, offsets: np.ndarray, is_eos: np.ndarray):
    """fastText stops reading a line at a literal ``</s>`` token (which it keeps)."""
    n = len(offsets) - 1
    doc = np.repeat(np.arange(n), np.diff(offsets))
    pos = np.arange(len(rows))
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, doc[is_eos], pos[is_eos])
    keep = pos <= first[doc]
    ends_with_eos = first < np.iinfo(np.int64).max
    new_offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(doc[keep], minlength=n), out=new_offsets[1:])
    return rows[keep], new_offsets, ends_with_eos
