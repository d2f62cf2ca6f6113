"""``minhash_dedup``: the MinHash-LSH near-duplicate stage (see :mod:`thresher.scorers.dedup.lsh`)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.schemas import columns as C
from thresher.scorers.base import Column, Decisions, GlobalStage, Param, ParamError, between, one_of
from thresher.scorers.dedup import keys as D
from thresher.scorers.dedup.components import star_components, union_find
from thresher.scorers.dedup.lsh import (
    _BAND_MUL,
    SIG_DTYPE,
    U64,
    Normalization,
    _as_string_array,
    _chunks_by_bytes,
    band_keys,
    optimal_bands_rows,
    permutations,
    resolve_device,
    shingle_hashes,
    signatures_from_shingles,
    text_tokens,
    unique_shingle_sets,
    verified_edges,
)
from thresher.scorers.registry import register


# ----------------------------------------------------------------------------------------
# Survivors
# ----------------------------------------------------------------------------------------
def id_hashes(ids: Any) -> np.ndarray:
    """``xxh64(id.encode("utf-8"), seed=0)`` per id, as uint64 (the stable tie-break)."""
    import xxhash
    ids = _as_string_array(ids)
    f = xxhash.xxh64_intdigest
    return np.fromiter((f(s) for s in ids.cast(pa.binary()).to_pylist()), dtype=U64, count=len(ids))


def priority_rank(score: np.ndarray, id_hash: np.ndarray, ids: Optional[Sequence[str]] = None) -> np.ndarray:
    """Rank of every row in survivor preference order (0 = most preferred): higher
    ``score`` first (NaN last), then smaller ``id_hash``, then smaller id string.
    The order depends only on the rows' contents and ids, never on their positions."""
    score = np.asarray(score, dtype=np.float64)
    key = np.where(np.isnan(score), np.inf, -score)
    order = np.lexsort((id_hash, key))
    if ids is not None and len(order) > 1:
        ks, hs = key[order], id_hash[order]
        eq = (ks[1:] == ks[:-1]) & (hs[1:] == hs[:-1])
        if eq.any():
            # resolve each run of equal (score, id_hash) by the id string
            idl = ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else list(ids)
            for r in np.split(np.arange(len(order)), np.flatnonzero(~eq) + 1):
                if len(r) > 1:
                    seg = order[r]
                    order[r] = seg[np.argsort([idl[i] for i in seg], kind="stable")]
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def choose_survivors(labels: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each row, the row index of its cluster's survivor (the member of lowest
    ``rank``, see :func:`priority_rank`)."""
    n = len(labels)
    best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, labels, rank)
    inv = np.empty(n, dtype=np.int64)
    inv[rank] = np.arange(n)
    return inv[best[labels]]



# ----------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------
def _check_survivor(v: str) -> Optional[str]:
    if v in ("longest", "shortest"):
        return None
    if v.startswith(("highest:", "lowest:")) and len(v.split(":", 1)[1]) > 0:
        return None
    return f"must be longest, shortest, highest:<column> or lowest:<column>, got {v!r}"


def _positive_or_none(v):
    return None if v is None or v >= 1 else f"must be >= 1, got {v}"


@register
class MinHashDedup(GlobalStage):
    """Near-duplicate removal with MinHash-LSH (see the module docstring)."""

    name = "minhash_dedup"
    doc = ("Near-duplicate removal: MinHash signatures of word (or character) n-grams, "
           "LSH banding, verification, connected components, one deterministic survivor "
           "per cluster.")
    reasons = {D.RULE_NEAR_DUPLICATE: "in a cluster of near-duplicates whose survivor is `duplicate_of`"}
    default_order = 80
    cpu_ns_per_byte = 55  # benchmarks/results (filters.txt, langid.txt, dedup_100k.json)
    columns = (
        Column(D.CLUSTER_ID, pa.string(), "id of the cluster's surviving document (rows in clusters of 2 or more)"),
        Column(D.CLUSTER_SIZE, pa.int32(), "documents in the cluster"),
    )
    params = {
        "shingle": Param(str, "word", "word | char n-grams", one_of("word", "char")),
        "ngram": Param(int, 5, "n-gram length (words or characters)", between(1, 64)),
        "num_perm": Param(int, 112, "signature length (permutations)", between(1, 1024)),
        "threshold": Param(float, 0.8, "Jaccard similarity that makes a near-duplicate",
                           between(0.01, 0.99)),
        "bands": Param(int, None, "LSH bands (derived from threshold when null)",
                       _positive_or_none, nullable=True),
        "rows": Param(int, None, "LSH rows per band (derived when null)",
                      _positive_or_none, nullable=True),
        "fp_weight": Param(float, None, "false-positive weight of the band/row derivation "
                           "(default 0.5 with verify=none, else 0.05)", between(0.0, 1.0),
                           nullable=True),
        "seed": Param(int, 1, "permutation seed", between(0, (1 << 63) - 1)),
        "verify": Param(str, "jaccard", "jaccard (exact, on the smallest jaccard_max_shingles shingle "
                        "hashes) | signature (estimated from signatures) | none",
                        one_of("signature", "jaccard", "none")),
        "survivor": Param(str, "longest", "longest | shortest | highest:<col> | lowest:<col>",
                          _check_survivor),
        "components": Param(str, "auto", "auto (distributed above 250k input rows or 256 shards, else "
                            "unionfind) | unionfind (one worker) | star (one worker, large/small-star "
                            "rounds) | distributed (Beam: partitioned candidates, verification and "
                            "star rounds; identical decisions)", one_of("auto", "unionfind", "star", "distributed")),
        "partitions": Param(int, None, "distributed: shuffle partitions (null: one per 100k input rows, "
                            "at least 16)", _positive_or_none, nullable=True),
        "distributed_rounds": Param(int, 12, "components=distributed: large/small-star rounds unrolled "
                                    "in the Beam graph (a final round checks convergence)", between(1, 200)),
        "all_pairs_max": Param(int, 64, "buckets up to this size verify all pairs; larger "
                               "ones are covered by verified stars", between(2, 100000)),
        "star_rounds": Param(int, 8, "star-cover rounds for large buckets", between(1, 1000)),
        "jaccard_max_shingles": Param(int, 512, "verify=jaccard keeps at most this many (the "
                                      "smallest) shingle hashes per document: exact Jaccard up "
                                      "to this size, bottom-k estimate beyond", between(1, 1 << 30),
                                      nullable=True),
        "nfkc": Param(bool, True, "Unicode NFKC normalisation"),
        "casefold": Param(bool, True, "case folding"),
        "collapse_whitespace": Param(bool, True, "collapse whitespace runs"),
        "strip_punct": Param(bool, False, "replace punctuation with spaces"),
        "device": Param(str, "auto", "auto | cpu | cuda (signatures)",
                        one_of("auto", "cpu", "cuda")),
    }

    @classmethod
    def check_params(cls, p: dict[str, Any], prefix: str) -> None:
        if (p["bands"] is None) != (p["rows"] is None):
            missing = "rows" if p["rows"] is None else "bands"
            raise ParamError(prefix + missing, "bands and rows must be given together (or neither)")
        if p["bands"] is not None and p["bands"] * p["rows"] > p["num_perm"]:
            raise ParamError(prefix + "bands",
                             f"bands*rows = {p['bands'] * p['rows']} exceeds num_perm = {p['num_perm']}")
        if p["rows"] is not None and p["rows"] > len(_BAND_MUL):
            raise ParamError(prefix + "rows", f"must be <= {len(_BAND_MUL)}")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        c = self.config
        if c["bands"] is None:
            fpw = c["fp_weight"]
            if fpw is None:
                # with verification an LSH false positive costs one comparison while a
                # false negative is lost for good, so recall weighs more: 0.05/0.95
                # gives 14 x 8 at threshold 0.8 with 112 permutations
                fpw = 0.5 if c["verify"] == "none" else 0.05
            self.bands, self.rows = optimal_bands_rows(c["threshold"], c["num_perm"], fpw, 1.0 - fpw)
        else:
            self.bands, self.rows = c["bands"], c["rows"]
        self.norm = Normalization(c["nfkc"], c["casefold"], c["collapse_whitespace"], c["strip_punct"])
        self.a, self.b = permutations(c["num_perm"], c["seed"])
        surv = c["survivor"]
        self.score_column = surv.split(":", 1)[1] if ":" in surv else None
        #: set to a dict to accumulate CPU seconds per phase of keys() and compute()
        self.timings: Optional[dict] = None

    # -- per batch ------------------------------------------------------------------------
    def key_schema(self) -> pa.Schema:
        return D.key_schema(self.bands, self.config["num_perm"],
                            with_shingles=self.config["verify"] == "jaccard",
                            with_score=self.score_column is not None)

    def keys(self, text: pa.Array, batch: pa.Table, ids: pa.Array) -> pa.Table:
        c = self.config
        text = _as_string_array(text)
        n = len(text)
        P = c["num_perm"]
        dev = resolve_device(c["device"])
        sig = np.empty((n, P), dtype=SIG_DTYPE)
        cnt = np.empty(n, dtype=np.int64)
        want_sets = c["verify"] == "jaccard"
        set_vals, set_lens = [], []
        clock = _PhaseClock(self.timings)
        for i, part in _chunks_by_bytes(text):
            tok, doc_off = text_tokens(part, c["shingle"], self.norm)
            clock.lap("tokens")
            if dev == "cpu" or want_sets:
                sh, so = shingle_hashes(tok, doc_off, c["ngram"])
                clock.lap("shingles")
            if dev == "cpu":
                s = signatures_from_shingles(sh, so, self.a, self.b)
                k = np.diff(so)
            else:
                from thresher.scorers.dedup import _minhash_torch as minhash_gpu
                s, k = minhash_gpu.signatures_from_tokens(tok, doc_off, c["ngram"], self.a, self.b,
                                                          device=dev)
            sig[i:i + len(part)] = s
            cnt[i:i + len(part)] = k
            clock.lap("signatures")
            if want_sets:
                sv, soff = unique_shingle_sets(sh, so, c["jaccard_max_shingles"])
                set_vals.append(sv)
                set_lens.append(np.diff(soff))
                clock.lap("shingle_sets")
        bk = band_keys(sig, self.bands, self.rows)
        clock.lap("band_keys")
        ids = _as_string_array(ids)
        cols = {
            D.KEY_ID: ids,
            D.KEY_ID_HASH: pa.array(id_hashes(ids), pa.uint64()),
            D.KEY_N_CHARS: pc.cast(pc.utf8_length(text), pa.int64()),
            D.KEY_N_SHINGLES: pa.array(cnt.astype(np.int32), pa.int32()),
            D.KEY_BANDS: pa.FixedSizeListArray.from_arrays(pa.array(bk.ravel(), pa.uint64()), self.bands),
            D.KEY_SIGNATURE: pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel(), pa.uint32()), P),
        }
        if self.score_column is not None:
            if self.score_column not in batch.column_names:
                raise KeyError(f"survivor column {self.score_column!r} is not in the batch")
            cols[D.KEY_SCORE] = pc.cast(batch[self.score_column], pa.float64())
        if want_sets:
            vals = np.concatenate(set_vals) if set_vals else np.zeros(0, U64)
            offs = np.zeros(n + 1, np.int64)
            np.cumsum(np.concatenate(set_lens) if set_lens else np.zeros(0, np.int64), out=offs[1:])
            cols[D.KEY_SHINGLES] = pa.LargeListArray.from_arrays(
                pa.array(offs, pa.int64()), pa.array(vals, pa.uint64())).cast(pa.list_(pa.uint64()))
        clock.lap("key_table")
        return pa.table(cols, schema=self.key_schema())

    # -- global ---------------------------------------------------------------------------
    def survivor_scores(self, keys: pa.Table) -> np.ndarray:
        surv = self.config["survivor"]
        if surv in ("longest", "shortest"):
            s = keys[D.KEY_N_CHARS].to_numpy().astype(np.float64)
            return s if surv == "longest" else -s
        s = pc.fill_null(keys[D.KEY_SCORE], float("nan")).to_numpy().astype(np.float64)
        return s if surv.startswith("highest:") else -s

    def preflight(self, ctx) -> None:
        surv = self.config["survivor"]
        if ":" in surv:
            col = surv.split(":", 1)[1]
            if col not in ctx.columns:
                from thresher.schemas.config import did_you_mean
                raise ParamError("survivor", f"column {col!r} is neither an input column nor written by an earlier "
                                             f"stage{did_you_mean(col, ctx.columns)}")
            t = ctx.input_schema.field(col).type if col in ctx.input_schema.names else None
            if t is not None and not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                raise ParamError("survivor", f"column {col!r} has type {t}; survivor scores must be numeric")

    def distributed_step(self) -> Optional[str]:
        # auto is resolved by the builder, which knows the corpus size (below it: the gather step)
        return ("thresher.pipelines.dedup_beam:build" if self.config["components"] in ("auto", "distributed")
                else None)

    def compute(self, keys: pa.Table, timings: Optional[dict] = None) -> Decisions:
        """Decisions for the whole corpus from the concatenated key tables (plus the
        engine's ``__shard``/``__row``). ``timings``: optional dict that receives CPU
        seconds per phase."""
        c = self.config
        clock = _PhaseClock(self.timings if timings is None else timings)
        n = keys.num_rows
        ids = keys[D.KEY_ID]
        sig = _fixed_list_to_numpy(keys[D.KEY_SIGNATURE], c["num_perm"], np.uint32)
        bk = _fixed_list_to_numpy(keys[D.KEY_BANDS], self.bands, np.uint64)
        n_sh = keys[D.KEY_N_SHINGLES].to_numpy()
        clock.lap("load_keys")
        rank = priority_rank(self.survivor_scores(keys), keys[D.KEY_ID_HASH].to_numpy(), ids)
        clock.lap("survivors")
        sets = None
        if c["verify"] == "jaccard":
            col = keys[D.KEY_SHINGLES]
            col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
            col = col.cast(pa.large_list(pa.uint64()))
            offs = col.offsets.to_numpy().astype(np.int64)
            vals = col.values.to_numpy()[offs[0]: offs[-1]]
            sets = (vals, offs - offs[0])
            clock.lap("load_keys")
        u, v = verified_edges(bk, c["threshold"], verify=c["verify"], sig=sig,
                              shingle_values=None if sets is None else sets[0],
                              shingle_offsets=None if sets is None else sets[1],
                              valid=n_sh > 0, priority=rank, all_pairs_max=c["all_pairs_max"],
                              star_rounds=c["star_rounds"], jaccard_cap=c["jaccard_max_shingles"])
        clock.lap("candidates+verify")
        labels = star_components(n, u, v) if c["components"] == "star" else union_find(n, u, v)  # auto: gather
        clock.lap("components")
        out = decisions(labels, rank, ids, keys[C.SHARD], keys[C.ROW], self.reason(D.RULE_NEAR_DUPLICATE))
        clock.lap("survivors")
        if clock.sink is not None:
            clock.sink["edges"] = clock.sink.get("edges", 0) + len(u)
        removed = int(pc.sum(pc.is_valid(out[C.REASON])).as_py() or 0) if out.num_rows else 0
        return Decisions(out, {"documents": n, "verified_edges": int(len(u)), "in_clusters": out.num_rows,
                               "removed": removed, "bands": self.bands, "rows": self.rows})


class _PhaseClock:
    """Accumulates process CPU seconds per phase into ``sink`` (no-op when None)."""

    def __init__(self, sink: Optional[dict]):
        import time
        self.sink = sink
        self._now = time.process_time
        self.t = self._now() if sink is not None else 0.0

    def lap(self, phase: str) -> None:
        if self.sink is not None:
            t = self._now()
            self.sink[phase] = self.sink.get(phase, 0.0) + t - self.t
            self.t = t


def decisions(labels: np.ndarray, rank: np.ndarray, ids: Any, shard: Any, row: Any,
              reason: str) -> pa.Table:
    """The decision table for every row in a cluster of size >= 2, ordered by
    (__shard, __row): survivors keep (reason null), others are removed with
    ``reason`` and ``duplicate_of`` = survivor id."""
    n = len(labels)
    sizes = np.bincount(labels, minlength=n)
    member = np.flatnonzero(sizes[labels] >= 2)
    surv = choose_survivors(labels, rank)[member]
    ids = _as_string_array(ids)
    shard = _as_numpy(shard)[member]
    row = _as_numpy(row)[member]
    o = np.lexsort((row, shard))
    member, surv, shard, row = member[o], surv[o], shard[o], row[o]
    removed = surv != member
    surv_ids = ids.take(pa.array(surv, pa.int64()))
    removed_arr = pa.array(removed, pa.bool_())
    reason_arr = pc.if_else(removed_arr, pa.scalar(reason, pa.string()), pa.scalar(None, pa.string()))
    return pa.table({
        C.SHARD: pa.array(shard.astype(np.int32), pa.int32()),
        C.ROW: pa.array(row.astype(np.int64), pa.int64()),
        C.REASON: reason_arr,
        C.DUPLICATE_OF: pc.if_else(removed_arr, surv_ids, pa.scalar(None, pa.string())),
        D.CLUSTER_ID: surv_ids,
        D.CLUSTER_SIZE: pa.array(sizes[labels[member]].astype(np.int32), pa.int32()),
    })


def _as_numpy(a: Any) -> np.ndarray:
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks()
    return a.to_numpy() if isinstance(a, pa.Array) else np.asarray(a)


def _fixed_list_to_numpy(col: Any, width: int, dtype) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    flat = col.flatten()
    return flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(-1, width)
