"""Distributed global steps of the dedup stages: ``minhash_dedup`` (``components: distributed``,
or ``auto`` above :data:`AUTO_MIN_ROWS` rows / :data:`AUTO_MIN_SHARDS` shards) and
``exact_dedup`` (``global_step: distributed`` / ``auto``).

The gather steps read every key table on one worker (in-memory union-find), which is right
while the key tables fit one machine. These variants spread every phase over ``partitions``
Beam keys, chosen from the corpus size (:func:`resolve_partitions`) unless the config sets
it, so a task holds about :data:`ROWS_PER_PARTITION` documents' keys whatever the corpus
size, and they scale out on Dataflow / Spark / Flink by the partition count. Tables never
cross the runner's shuffle: each routed table is written once under ``_work/_shuffle/`` and
only ``(partition, (tag, ref))`` is shuffled (:mod:`thresher.pipelines.spill`). Node ids are
int64 ``shard << 40 | row``.

MinHash:

1. **Nodes**: each key file is read by one worker, rows already rejected by an earlier global
   stage are dropped, and three routed tables are written: band records ``(band, key, node)``
   by band-key partition; signatures (and shingle sets) by node partition; node attributes
   (id, id hash, survivor score) by node partition.
2. **Candidates**: per band partition, buckets of equal (band, key) give all their pairs up
   to ``all_pairs_max`` members (routed by the first node for the signature joins); a larger
   bucket's members, in survivor-priority order, are routed by node for the signature join,
   then by bucket.
3. **Verification**: two partitioned joins attach the signature of each end of a pair; pairs
   whose similarity is below the threshold are dropped. A large bucket is covered on the
   worker holding it by the same greedy verified star cover as the one-worker path
   (``star_rounds`` rounds), so both paths find exactly the same edges.
4. **Components**: alternating large-star / small-star rounds (Kiveris et al. 2014), each a
   reduce, the next round's map and a partitioned shuffle. The graph is unrolled for
   ``distributed_rounds`` rounds; two more rounds check (by an order-free fingerprint of the
   edge set) that nothing changes and fail loudly if it does.
5. **Survivors**: converged edges (node → component minimum) are joined with the node
   attributes; per component the survivor is the member with the highest survivor score,
   then the smallest id hash, then the smallest id — the order of the one-worker step, so both
   give identical decisions.

Exact: key rows are routed by their text hash, so every group of equal texts lands in one
partition, where the stage's own ``compute`` decides it; the partitions' stats are summed.
"""
from __future__ import annotations

import math
import time
from typing import Any, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.pipelines import engine as E
from thresher.pipelines import spill
from thresher.schemas import columns as C
from thresher.scorers.dedup import keys as D

NODE_SHIFT = 40
#: ``auto`` takes the distributed path above this many input rows (the one-worker step's
#: process peaked at 1.9 GB at 200k sample documents and 8.2 GB at 1M) …
AUTO_MIN_ROWS = 250_000
#: … or this many shards
AUTO_MIN_SHARDS = 256
#: partitions chosen from the corpus size: about this many documents per partition
ROWS_PER_PARTITION = 100_000
MIN_PARTITIONS = 16
FP_TAG = "fp"
STATS_TAG = "stats"


def use_distributed(plan: E.Plan, mode: str) -> bool:
    """``auto`` resolved for this run: distributed above :data:`AUTO_MIN_ROWS` input rows or
    :data:`AUTO_MIN_SHARDS` shards."""
    if mode != "auto":
        return mode == "distributed"
    return (sum(int(s.num_rows) for s in plan.shards) > AUTO_MIN_ROWS
            or len(plan.shards) > AUTO_MIN_SHARDS)


def resolve_partitions(plan: E.Plan, configured: Optional[int]) -> int:
    """The configured partition count, else one per :data:`ROWS_PER_PARTITION` input rows
    (at least :data:`MIN_PARTITIONS`)."""
    if configured:
        return int(configured)
    rows = sum(int(s.num_rows) for s in plan.shards)
    return max(MIN_PARTITIONS, math.ceil(rows / ROWS_PER_PARTITION))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: partition routing that does not depend on node order."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def part_of(x: np.ndarray, parts: int) -> np.ndarray:
    return (_mix(x) % np.uint64(parts)).astype(np.int64)


def _route(table: pa.Table, parts_of_rows: np.ndarray, tag: str):
    """Split a table by partition; yield (partition, (tag, table))."""
    if table.num_rows == 0:
        return
    o = np.argsort(parts_of_rows, kind="stable")
    p = parts_of_rows[o]
    t = table.take(pa.array(o))
    cuts = np.flatnonzero(np.r_[True, p[1:] != p[:-1], True])
    for a, b in zip(cuts[:-1], cuts[1:]):
        yield int(p[a]), (tag, t.slice(a, b - a))


def _np(col) -> np.ndarray:
    return (col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col).to_numpy(zero_copy_only=False)


def _tables(element, tag: Optional[str] = None) -> Optional[pa.Table]:
    """A grouped ``(partition, [(tag, ref), ...])`` → the concatenated table of ``tag``."""
    _, tagged = element
    return spill.concat([t for g, t in spill.load([x for x in tagged if tag is None or x[0] == tag])])


def _bucket_route(band: np.ndarray, key: np.ndarray) -> np.ndarray:
    return key ^ ((band.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15))


class _StageFn(beam.DoFn):
    def __init__(self, plan: E.Plan, k: int, parts: int, step: str):
        self.plan, self.k, self.parts, self.step = plan, k, parts, step

    def setup(self):
        from thresher.pipelines.registry import build_stages
        self.stage = build_stages([self.plan.cfg.stages[self.k]])[0]
        self.threshold = float(self.stage.config.get("threshold") or 0.0)

    def spill(self, routed):
        sid = self.stage.id
        yield from spill.spill(self.plan.out, f"{sid}/{self.step}", routed, metric=sid)


# -- MinHash -------------------------------------------------------------------------------

class NodesFn(_StageFn):
    """Key file → routed band records, signatures and node attributes."""

    def process(self, path: str, *prior):
        yield from self.spill(self._routed(path, prior))

    def _routed(self, path, prior):
        from thresher.scorers.dedup.minhash import _fixed_list_to_numpy
        keys = E.exclude_prior(E.read_keys([path]), list(prior))
        if keys.num_rows == 0 or D.KEY_BANDS not in keys.column_names:
            return
        st = self.stage
        node = (_np(keys[C.SHARD]).astype(np.int64) << NODE_SHIFT) | _np(keys[C.ROW]).astype(np.int64)
        valid = _np(keys[D.KEY_N_SHINGLES]) > 0
        bk = _fixed_list_to_numpy(keys[D.KEY_BANDS], st.bands, np.uint64)
        sig = keys[D.KEY_SIGNATURE]
        score = st.survivor_scores(keys)
        attrs = pa.table({"node": node, "id": keys[D.KEY_ID], "id_hash": keys[D.KEY_ID_HASH],
                          "score": pa.array(score, pa.float64())})
        yield from _route(attrs, part_of(node.astype(np.uint64), self.parts), "attr")
        cols = {"node": node[valid], "sig": sig.filter(pa.array(valid))}
        if st.config["verify"] == "jaccard":
            cols["sh"] = keys[D.KEY_SHINGLES].filter(pa.array(valid))
        sigs = pa.table(cols)
        yield from _route(sigs, part_of(node[valid].astype(np.uint64), self.parts), "sig")
        nv = node[valid]
        # priority of a node inside a bucket: survivor order (score desc, NaN last, id hash)
        sc = np.where(np.isnan(score[valid]), -np.inf, score[valid])
        ih = _np(keys[D.KEY_ID_HASH])[valid]
        for b in range(st.bands):
            key = bk[valid, b]
            band = pa.table({"band": np.full(nv.size, b, np.int16), "key": key, "node": nv,
                             "score": sc, "id_hash": ih})
            yield from _route(band, part_of(_bucket_route(np.full(nv.size, b), key), self.parts), "band")


class CandidatesFn(_StageFn):
    """Band partition → all pairs of the small buckets (routed by the first node) and the
    members of the large ones (``bigm``: band, key, position in priority order, node; routed
    by node for the signature join)."""

    def process(self, element):
        yield from self.spill(self._routed(element))

    def _routed(self, element):
        from thresher.scorers.dedup.lsh import _all_pairs, _star_pairs, _unique_pairs
        t = _tables(element)
        if t is None:
            return
        c = self.stage.config
        band, key, node = _np(t["band"]), _np(t["key"]), _np(t["node"])
        score, ih = _np(t["score"]), _np(t["id_hash"])
        # sort by bucket, then survivor priority (score desc, id hash asc, node)
        o = np.lexsort((node, ih, -score, key, band))
        band, key, node = band[o], key[o], node[o]
        newb = np.r_[True, (band[1:] != band[:-1]) | (key[1:] != key[:-1])]
        st = np.flatnonzero(newb)
        sz = np.diff(np.r_[st, node.size])
        multi = sz >= 2
        st, sz = st[multi], sz[multi]
        if c["verify"] == "none":
            # plain LSH: every bucket is a star, no verification (as the one-worker path)
            u, v = _star_pairs(node, st, sz)
            u, v = _unique_pairs(u, v)
            if u.size:
                yield from _route(pa.table({"u": u, "v": v}), part_of(u.astype(np.uint64), self.parts), "pair")
            return
        small = sz <= c["all_pairs_max"]
        u, v = _unique_pairs(*_all_pairs(node, st[small], sz[small]))
        if u.size:
            yield from _route(pa.table({"u": u, "v": v}), part_of(u.astype(np.uint64), self.parts), "pair")
        bst, bsz = st[~small], sz[~small]
        if bst.size:
            idx = np.repeat(bst, bsz) + (np.arange(bsz.sum()) - np.repeat(np.cumsum(bsz) - bsz, bsz))
            pos = idx - np.repeat(bst, bsz)
            big = pa.table({"band": band[idx], "key": key[idx], "pos": pos.astype(np.int64), "node": node[idx]})
            yield from _route(big, part_of(node[idx].astype(np.uint64), self.parts), "bigm")


def _attach(rows: pa.Table, sigs: pa.Table, end: str) -> pa.Table:
    """Attach the signature (and shingle set) of node ``end`` of each row (inner join on node)."""
    sn = _np(sigs["node"])
    o = np.argsort(sn, kind="stable")
    sn = sn[o]
    ends = _np(rows[end])
    pos = np.searchsorted(sn, ends)
    pos = np.minimum(pos, max(sn.size - 1, 0))
    ok = (sn.size > 0) & (sn[pos] == ends)
    rows = rows.filter(pa.array(ok))
    take = pa.array(o[pos[ok]])
    for col in ("sig", "sh"):
        if col in sigs.column_names:
            rows = rows.append_column(f"{col}_{end}", sigs[col].combine_chunks().take(take))
    return rows


class JoinFirstFn(_StageFn):
    """Node partition: pairs get their first end's signature, routed by the second end."""

    def process(self, element):
        yield from self.spill(self._routed(element))

    def _routed(self, element):
        pairs, sigs = _tables(element, "pair"), _tables(element, "sig")
        if pairs is None or sigs is None:
            return
        pairs = _attach(pairs, sigs, "u")
        yield from _route(pairs, part_of(_np(pairs["v"]).astype(np.uint64), self.parts), "pair")


def _passes(stage, threshold: float, su, sv, shu=None, shv=None) -> np.ndarray:
    """Verification of pairs given both ends' signatures (and shingle sets)."""
    from thresher.scorers.dedup.minhash import _fixed_list_to_numpy
    c = stage.config
    n = len(su)
    if c["verify"] == "none":
        return np.ones(n, dtype=bool)
    if c["verify"] == "jaccard":
        from thresher.scorers.dedup.lsh import exact_jaccard
        both = pa.concat_arrays([shu, shv]).cast(pa.large_list(pa.uint64()))
        offs = both.offsets.to_numpy().astype(np.int64)
        vals = both.values.to_numpy()[offs[0]:offs[-1]]
        idx = np.arange(n, dtype=np.int64)
        return exact_jaccard(vals, offs - offs[0], idx, idx + n, cap=c["jaccard_max_shingles"]) >= threshold
    P = int(c["num_perm"])
    a = _fixed_list_to_numpy(su, P, np.uint32)
    b = _fixed_list_to_numpy(sv, P, np.uint32)
    return (a == b).mean(axis=1) >= threshold


def _chunked(col) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _edges_to_arcs(u: np.ndarray, v: np.ndarray, parts: int):
    """Verified edges → the first components round's arcs (small-star map), routed."""
    from thresher.scorers.dedup import components as M
    a, b = M.small_star_map(u.astype(np.int64), v.astype(np.int64))
    if a.size:
        yield from _route(pa.table({"a": a, "b": b}), part_of(a.astype(np.uint64), parts), "arc")


class VerifyFn(_StageFn):
    """Node partition: pairs get their second end's signature and are verified."""

    def process(self, element):
        yield from self.spill(self._routed(element))

    def _routed(self, element):
        pairs, sigs = _tables(element, "pair"), _tables(element, "sig")
        if pairs is None:
            return
        if self.stage.config["verify"] == "none":
            keep = np.ones(pairs.num_rows, bool)
        else:
            if sigs is None:
                return
            pairs = _attach(pairs, sigs, "v")
            jac = self.stage.config["verify"] == "jaccard"
            keep = _passes(self.stage, self.threshold, _chunked(pairs["sig_u"]), _chunked(pairs["sig_v"]),
                           _chunked(pairs["sh_u"]) if jac else None, _chunked(pairs["sh_v"]) if jac else None)
        yield from _edges_to_arcs(_np(pairs["u"])[keep], _np(pairs["v"])[keep], self.parts)


class AttachBigFn(_StageFn):
    """Node partition: members of large buckets get their signatures, routed by bucket."""

    def process(self, element):
        yield from self.spill(self._routed(element))

    def _routed(self, element):
        mem, sigs = _tables(element, "bigm"), _tables(element, "sig")
        if mem is None or sigs is None:
            return
        mem = _attach(mem, sigs, "node")
        r = _bucket_route(_np(mem["band"]), _np(mem["key"]))
        yield from _route(mem, part_of(r, self.parts), "bigs")


class CoverFn(_StageFn):
    """Bucket partition: the greedy verified star cover of each large bucket (the one-worker
    path's :func:`~thresher.scorers.dedup.lsh._cover_big_buckets`, on this worker's buckets)."""

    def process(self, element):
        yield from self.spill(self._routed(element))

    def _routed(self, element):
        from thresher.scorers.dedup.lsh import _cover_big_buckets
        t = _tables(element, "bigs")
        if t is None:
            return
        band, key, pos = _np(t["band"]), _np(t["key"]), _np(t["pos"])
        o = np.lexsort((pos, key, band))
        t = t.take(pa.array(o))
        band, key, node = band[o], key[o], _np(t["node"])
        bucket = np.cumsum(np.r_[True, (band[1:] != band[:-1]) | (key[1:] != key[:-1])]) - 1
        jac = self.stage.config["verify"] == "jaccard"
        sig = _chunked(t["sig_node"])
        sh = _chunked(t["sh_node"]) if jac else None

        def passes(cu, cv):
            iu, iv = pa.array(cu), pa.array(cv)
            return _passes(self.stage, self.threshold, sig.take(iu), sig.take(iv),
                           sh.take(iu) if jac else None, sh.take(iv) if jac else None)

        lu, lv = _cover_big_buckets(np.arange(node.size, dtype=np.int64), bucket, passes,
                                    int(self.stage.config["star_rounds"]))
        yield from _edges_to_arcs(node[lu], node[lv], self.parts)


class StarFn(_StageFn):
    """One components round on a partition of arcs: the ``kind`` reduce, then (``nxt``) the
    next round's map and routing. ``fp``: also the order-free fingerprint of this round's
    edges (tagged ``fp``); ``labels``: also the edges and their roots routed by node for
    the survivor join."""

    def __init__(self, plan, k, parts, step, kind: str, nxt: Optional[str], fp: bool, labels: bool):
        super().__init__(plan, k, parts, step)
        self.kind, self.nxt, self.fp, self.labels = kind, nxt, fp, labels

    def process(self, element):
        from thresher.scorers.dedup import components as M
        t = _tables(element, "arc")
        if t is None:
            return
        reducer = M.large_star_reduce if self.kind == "large" else M.small_star_reduce
        x, y = reducer(_np(t["a"]).astype(np.int64), _np(t["b"]).astype(np.int64))
        if self.fp:
            yield beam.pvalue.TaggedOutput(FP_TAG, M.edges_checksum(x, y))
        if x.size == 0:
            return
        yield from self.spill(self._routed(x, y))

    def _routed(self, x, y):
        from thresher.scorers.dedup import components as M
        if self.labels:
            yield from _route(pa.table({"u": x, "v": y}), part_of(x.astype(np.uint64), self.parts), "label")
            r = np.unique(y)
            yield from _route(pa.table({"u": r, "v": r}), part_of(r.astype(np.uint64), self.parts), "label")
        if self.nxt:
            mapper = M.large_star_map if self.nxt == "large" else M.small_star_map
            a, b = mapper(x, y)
            yield from _route(pa.table({"a": a, "b": b}), part_of(a.astype(np.uint64), self.parts), "arc")


class FingerprintSum(beam.CombineFn):
    def create_accumulator(self):
        return (0, 0)

    def add_input(self, acc, x):
        return acc[0] + int(x[0]), (acc[1] + int(x[1])) & 0xFFFFFFFFFFFFFFFF

    def merge_accumulators(self, accs):
        n, h = 0, 0
        for a, b in accs:
            n, h = n + a, (h + b) & 0xFFFFFFFFFFFFFFFF
        return n, h

    def extract_output(self, acc):
        return acc


def _check_converged(last, again):
    if tuple(last) != tuple(again):
        raise RuntimeError("minhash_dedup: connected components did not converge within "
                           "distributed_rounds rounds; raise distributed_rounds")
    return True


class SurvivorsFn(_StageFn):
    """Node partition: attach component labels to node attributes, route by label."""

    def process(self, element, converged):
        yield from self.spill(self._routed(element))

    def _routed(self, element):
        attrs, lab = _tables(element, "attr"), _tables(element, "label")
        if attrs is None or lab is None:
            return
        ln = _np(lab["u"])
        o = np.argsort(ln, kind="stable")
        ln, lv = ln[o], _np(lab["v"])[o]
        an = _np(attrs["node"])
        pos = np.minimum(np.searchsorted(ln, an), ln.size - 1)
        keep = ln[pos] == an       # nodes in a component of two or more (roots carry (root, root))
        label = lv[pos]
        t = attrs.filter(pa.array(keep)).append_column("label", pa.array(label[keep]))
        yield from _route(t, part_of(label[keep].astype(np.uint64), self.parts), "member")


class DecideFn(_StageFn):
    """Label partition → the decisions of its clusters, spilled by shard (``(shard, (k, ref))``),
    and its counts (tagged ``stats``)."""

    def process(self, element):
        t0 = time.perf_counter()
        t = _tables(element, "member")
        if t is None:
            return
        label = _np(t["label"])
        score = _np(t["score"])
        key = np.where(np.isnan(score), np.inf, -score)
        ih = _np(t["id_hash"])
        idl = np.array(t["id"].combine_chunks().to_pylist(), dtype=object)
        o = np.lexsort((idl, ih, key, label))
        label, node, ids_sorted = label[o], _np(t["node"])[o], idl[o]
        first = np.r_[True, label[1:] != label[:-1]]
        grp = np.cumsum(first) - 1
        size = np.bincount(grp)[grp]
        surv = ids_sorted[np.flatnonzero(first)][grp]
        m = size >= 2
        removed = m & ~first
        reason = self.stage.reason(D.RULE_NEAR_DUPLICATE)
        dec = pa.table({
            C.SHARD: pa.array((node[m] >> NODE_SHIFT).astype(np.int32), pa.int32()),
            C.ROW: pa.array(node[m] & ((1 << NODE_SHIFT) - 1), pa.int64()),
            C.REASON: pa.array(np.where(removed[m], reason, None).tolist(), pa.string()),
            C.DUPLICATE_OF: pa.array(np.where(removed[m], surv[m], None).tolist(), pa.string()),
            D.CLUSTER_ID: pa.array(surv[m].tolist(), pa.string()),
            D.CLUSTER_SIZE: pa.array(size[m].astype(np.int32), pa.int32()),
        })
        yield from spill.spill_decisions(self.plan.out, self.stage.id, self.k, dec)
        yield beam.pvalue.TaggedOutput(STATS_TAG, {"decisions": dec.num_rows, "rejected": int(removed.sum()),
                                                   "clusters": int(first[m].sum()),
                                                   "seconds": time.perf_counter() - t0})


class CountSum(beam.CombineFn):
    """Sums dicts of numbers (missing keys count as 0)."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, x):
        out = dict(acc)
        for key, v in x.items():
            out[key] = out.get(key, 0) + v
        return out

    def merge_accumulators(self, accs):
        out: dict = {}
        for a in accs:
            out = self.add_input(out, a)
        return out

    def extract_output(self, acc):
        return acc


def _write_stats(plan: E.Plan, k: int, extra: dict):
    def fn(tot):
        from thresher.pipelines import io
        from thresher.schemas import stats as S
        stage_id = plan.cfg.stages[k].id
        body = {"stage": stage_id, "fingerprint": plan.fingerprint}
        body.update({key: tot.get(key, 0) for key in ("decisions", "rejected")})
        body.update({key: v for key, v in tot.items() if key not in body})
        body.update(extra)
        io.write_json(io.join(plan.out, S.GLOBAL_DIR, f"{stage_id}.json"), body)
        return True
    return fn


def _gated(refs, written, label: str):
    """Release the decision refs once ``_global/<id>.json`` is written (refs only wait)."""
    return refs | label >> beam.Map(lambda r, ok: r, beam.pvalue.AsSingleton(written))


def build(plan: E.Plan, k: int, key_paths, prior: list) -> Any:
    """The distributed MinHash global step: key-file paths → ``(shard, (k, ref))`` decisions."""
    from thresher.pipelines.registry import build_stages
    stage = build_stages([plan.cfg.stages[k]])[0]
    sid = stage.id
    if not use_distributed(plan, stage.config.get("components", "distributed")):
        from thresher.pipelines.transforms import gather_step
        return gather_step(plan, k, key_paths, prior, sid)
    parts = resolve_partitions(plan, stage.config.get("partitions"))
    rounds = int(stage.config.get("distributed_rounds", 12))
    side = [beam.pvalue.AsList(d) for d in prior]

    def fn(cls, step, *a):
        return cls(plan, k, parts, step, *a)

    def of(pc_, tag, label):
        return pc_ | label >> beam.Filter(lambda e, tag=tag: e[1][0] == tag)

    routed = key_paths | f"{sid}/Nodes" >> beam.ParDo(fn(NodesFn, "nodes"), *side)
    sigs = of(routed, "sig", f"{sid}/Sigs")
    attrs = of(routed, "attr", f"{sid}/Attrs")
    cands = (of(routed, "band", f"{sid}/Bands") | f"{sid}/BandShuffle" >> beam.GroupByKey()
             | f"{sid}/Candidates" >> beam.ParDo(fn(CandidatesFn, "candidates")))
    pairs = of(cands, "pair", f"{sid}/Pairs")
    bigm = of(cands, "bigm", f"{sid}/BigMembers")
    j1 = ((pairs, sigs) | f"{sid}/FlatJ1" >> beam.Flatten() | f"{sid}/ShuffleJ1" >> beam.GroupByKey()
          | f"{sid}/AttachU" >> beam.ParDo(fn(JoinFirstFn, "join_u")))
    arcs_small = ((j1, sigs) | f"{sid}/FlatJ2" >> beam.Flatten() | f"{sid}/ShuffleJ2" >> beam.GroupByKey()
                  | f"{sid}/Verify" >> beam.ParDo(fn(VerifyFn, "verify")))
    bigs = ((bigm, sigs) | f"{sid}/FlatBig" >> beam.Flatten() | f"{sid}/ShuffleBig" >> beam.GroupByKey()
            | f"{sid}/AttachBig" >> beam.ParDo(fn(AttachBigFn, "attach_big")))
    arcs_big = (bigs | f"{sid}/ShuffleBuckets" >> beam.GroupByKey()
                | f"{sid}/CoverBig" >> beam.ParDo(fn(CoverFn, "cover_big")))
    arcs = (arcs_small, arcs_big) | f"{sid}/Edges" >> beam.Flatten()
    # rounds: init small, `rounds` × (large, small), then a check pair (large, small)
    kinds = ["small"] + ["large", "small"] * rounds + ["large", "small"]
    cur_i = 2 * rounds
    fps, labels = {}, None
    for i, kind in enumerate(kinds):
        nxt = kinds[i + 1] if i + 1 < len(kinds) else None
        res = (arcs | f"{sid}/Star{i}Shuffle" >> beam.GroupByKey()
               | f"{sid}/Star{i}" >> beam.ParDo(fn(StarFn, f"star{i}", kind, nxt, i in (cur_i, len(kinds) - 1),
                                                   i == cur_i)).with_outputs(FP_TAG, main="out"))
        if i in (cur_i, len(kinds) - 1):
            fps[i] = res[FP_TAG] | f"{sid}/Fingerprint{i}" >> beam.CombineGlobally(FingerprintSum())
        if i == cur_i:
            labels = of(res["out"], "label", f"{sid}/Labels")
        arcs = of(res["out"], "arc", f"{sid}/Arcs{i}")
    done = fps[cur_i] | f"{sid}/Converged" >> beam.Map(_check_converged,
                                                        beam.pvalue.AsSingleton(fps[len(kinds) - 1]))
    members = ((attrs, labels) | f"{sid}/FlatMembers" >> beam.Flatten()
               | f"{sid}/ShuffleMembers" >> beam.GroupByKey()
               | f"{sid}/Members" >> beam.ParDo(fn(SurvivorsFn, "members"), beam.pvalue.AsSingleton(done)))
    res = (members | f"{sid}/ShuffleClusters" >> beam.GroupByKey()
           | f"{sid}/Decide" >> beam.ParDo(fn(DecideFn, "decide")).with_outputs(STATS_TAG, main="dec"))
    written = (res[STATS_TAG] | f"{sid}/SumStats" >> beam.CombineGlobally(CountSum())
               | f"{sid}/WriteStats" >> beam.Map(_write_stats(plan, k, {"mode": "distributed",
                                                                         "partitions": parts})))
    return _gated(res["dec"], written, f"{sid}/AfterStats")


# -- exact ---------------------------------------------------------------------------------

class ExactRouteFn(_StageFn):
    """Key file → key rows routed by their text hash."""

    def process(self, path: str, *prior):
        keys = E.exclude_prior(E.read_keys([path]), list(prior))
        if keys.num_rows == 0 or self.stage.hash_column not in keys.column_names:
            return
        from thresher.scorers.dedup.lsh import hash_strings
        h = hash_strings(_chunked(keys[self.stage.hash_column]))
        yield from self.spill(_route(keys, part_of(h, self.parts), "keys"))


class ExactDecideFn(_StageFn):
    """Hash partition → the stage's own decisions for its groups, spilled by shard."""

    def process(self, element):
        t0 = time.perf_counter()
        keys = _tables(element, "keys")
        if keys is None:
            return
        dec = self.stage.compute(keys)
        yield from spill.spill_decisions(self.plan.out, self.stage.id, self.k, dec.table)
        rejected = int(pc.sum(pc.is_valid(dec.table[C.REASON])).as_py() or 0) if dec.table.num_rows else 0
        yield beam.pvalue.TaggedOutput(STATS_TAG, {"keys": keys.num_rows, "decisions": dec.table.num_rows,
                                                   "rejected": rejected, **dec.stats,
                                                   "max_rows_per_task": keys.num_rows,
                                                   "seconds": time.perf_counter() - t0})


class _MaxRows(CountSum):
    def add_input(self, acc, x):
        m = max(acc.get("max_rows_per_task", 0), x.get("max_rows_per_task", 0))
        out = super().add_input(acc, x)
        out["max_rows_per_task"] = m
        return out


def build_exact(plan: E.Plan, k: int, key_paths, prior: list) -> Any:
    """The distributed exact-dedup global step: key-file paths → ``(shard, (k, ref))``."""
    from thresher.pipelines.registry import build_stages
    stage = build_stages([plan.cfg.stages[k]])[0]
    sid = stage.id
    if not use_distributed(plan, stage.config.get("global_step", "distributed")):
        from thresher.pipelines.transforms import gather_step
        return gather_step(plan, k, key_paths, prior, sid)
    parts = resolve_partitions(plan, stage.config.get("partitions"))
    side = [beam.pvalue.AsList(d) for d in prior]
    res = (key_paths | f"{sid}/Route" >> beam.ParDo(ExactRouteFn(plan, k, parts, "route"), *side)
           | f"{sid}/Shuffle" >> beam.GroupByKey()
           | f"{sid}/Decide" >> beam.ParDo(ExactDecideFn(plan, k, parts, "decide")).with_outputs(
               STATS_TAG, main="dec"))
    written = (res[STATS_TAG] | f"{sid}/SumStats" >> beam.CombineGlobally(_MaxRows())
               | f"{sid}/WriteStats" >> beam.Map(_write_stats(plan, k, {"global_step": "distributed",
                                                                         "partitions": parts})))
    return _gated(res["dec"], written, f"{sid}/AfterStats")
