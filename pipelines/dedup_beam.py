"""Distributed global step of ``minhash_dedup`` (``components: distributed``).

The default global step gathers every key table on one worker (in-memory
union-find), which is right while the key tables fit one machine. This variant
spreads every phase over ``partitions`` Beam keys, so it scales out on
Dataflow / Spark / Flink by raising the partition count. Only node ids (int64:
``shard << 40 | row``), band keys, signatures and small integers cross the
shuffle, always as a few large Arrow tables per partition, never one element
per document.

1. **Nodes**: each key file is read by one worker, rows already rejected by an
   earlier global stage are dropped, and three routed tables are emitted:
   band records ``(band, key, node)`` by band-key partition; signatures by node
   partition; node attributes (id, id hash, survivor score) by node partition.
2. **Candidates**: per band partition, buckets of equal (band, key) give pairs
   (all pairs up to ``all_pairs_max`` members, else a star to the
   best-priority member), routed by the partition of the first node.
3. **Verification**: two partitioned joins attach the signature of each end;
   pairs whose estimated Jaccard is below the threshold are dropped.
4. **Components**: alternating large-star / small-star rounds (Kiveris et al.
   2014), each a map, a partitioned shuffle and a per-partition reduce. The
   graph is unrolled for ``distributed_rounds`` rounds; a final round checks that
   the edge set no longer changes and fails loudly if it does.
5. **Survivors**: converged edges (node → component minimum) are joined with the
   node attributes; per component the survivor is the member with the highest
   survivor score, then the smallest id hash, then the smallest id — the same
   order as the single-worker step, so both give identical decisions.
"""
from __future__ import annotations

from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.pipelines import engine as E
from thresher.schemas import columns as C
from thresher.scorers.dedup import keys as D

NODE_SHIFT = 40


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


def _concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return None
    return pa.concat_tables(tables).combine_chunks()


def _np(col) -> np.ndarray:
    return (col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col).to_numpy(zero_copy_only=False)


class _StageFn(beam.DoFn):
    def __init__(self, plan: E.Plan, k: int):
        self.plan, self.k = plan, k

    def setup(self):
        from thresher.pipelines.registry import build_stages
        self.stage = build_stages([self.plan.cfg.stages[self.k]])[0]
        c = self.stage.config
        self.parts = int(c.get("partitions", 16))
        self.threshold = float(c["threshold"])


class NodesFn(_StageFn):
    """Key file → routed band records, signatures and node attributes."""

    def process(self, path: str, *prior):
        from thresher.scorers.dedup.minhash import _fixed_list_to_numpy
        keys = E.exclude_rejected(E.read_keys([path]), [d for _, d in prior])
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
        # priority of a node inside a bucket: survivor order (score desc, id hash)
        sc = np.where(np.isnan(score[valid]), -np.inf, score[valid])
        ih = _np(keys[D.KEY_ID_HASH])[valid]
        for b in range(st.bands):
            key = bk[valid, b]
            band = pa.table({"band": np.full(nv.size, b, np.int16), "key": key, "node": nv,
                             "score": sc, "id_hash": ih})
            route_key = key ^ np.uint64((b + 1) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF)
            yield from _route(band, part_of(route_key, self.parts), "band")


class CandidatesFn(_StageFn):
    """Band partition → candidate pairs routed by the partition of the first node."""

    def process(self, element):
        from thresher.scorers.dedup.lsh import (
            _all_pairs,
            _star_pairs,
            _unique_pairs,
        )
        _, tables = element
        t = _concat(list(tables))
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
        small = sz <= c.get("all_pairs_max", 64)
        u1, v1 = _all_pairs(node, st[small], sz[small])
        u2, v2 = _star_pairs(node, st[~small], sz[~small])
        u, v = _unique_pairs(np.concatenate([u1, u2]), np.concatenate([v1, v2]))
        if u.size == 0:
            return
        pairs = pa.table({"u": u, "v": v})
        yield from _route(pairs, part_of(u.astype(np.uint64), self.parts), "pair")


def _attach(pairs: pa.Table, sigs: pa.Table, end: str) -> pa.Table:
    """Attach the signature (and shingle set) of node ``end`` of each pair (inner join on node)."""
    sn = _np(sigs["node"])
    o = np.argsort(sn, kind="stable")
    sn = sn[o]
    ends = _np(pairs[end])
    pos = np.searchsorted(sn, ends)
    pos = np.minimum(pos, max(sn.size - 1, 0))
    ok = (sn.size > 0) & (sn[pos] == ends)
    pairs = pairs.filter(pa.array(ok))
    take = pa.array(o[pos[ok]])
    for col in ("sig", "sh"):
        if col in sigs.column_names:
            pairs = pairs.append_column(f"{col}_{end}", sigs[col].combine_chunks().take(take))
    return pairs


def _join(element, end: str):
    """A partition of tagged pair and signature tables → pairs with ``end``'s signature attached."""
    _, tagged = element
    pairs = _concat([t for tag, t in tagged if tag == "pair"])
    sigs = _concat([t for tag, t in tagged if tag == "sig"])
    if pairs is None or sigs is None:
        return None
    return _attach(pairs, sigs, end)


class JoinFirstFn(_StageFn):
    def process(self, element):
        pairs = _join(element, "u")
        if pairs is None:
            return
        yield from _route(pairs, part_of(_np(pairs["v"]).astype(np.uint64), self.parts), "pair")


class VerifyFn(_StageFn):
    def process(self, element):
        from thresher.scorers.dedup.minhash import _fixed_list_to_numpy
        pairs = _join(element, "v")
        if pairs is None:
            return
        c = self.stage.config
        n = pairs.num_rows
        if c["verify"] == "none":
            keep = np.ones(n, dtype=bool)
        elif c["verify"] == "jaccard":
            from thresher.scorers.dedup.lsh import exact_jaccard
            both = pa.concat_arrays([pairs["sh_u"].combine_chunks(), pairs["sh_v"].combine_chunks()])
            both = both.cast(pa.large_list(pa.uint64()))
            offs = both.offsets.to_numpy().astype(np.int64)
            vals = both.values.to_numpy()[offs[0]:offs[-1]]
            idx = np.arange(n, dtype=np.int64)
            keep = exact_jaccard(vals, offs - offs[0], idx, idx + n, cap=c["jaccard_max_shingles"]) >= self.threshold
        else:
            P = int(c["num_perm"])
            su = _fixed_list_to_numpy(pairs["sig_u"], P, np.uint32)
            sv = _fixed_list_to_numpy(pairs["sig_v"], P, np.uint32)
            keep = (su == sv).mean(axis=1) >= self.threshold
        if keep.any():
            yield pa.table({"u": _np(pairs["u"])[keep], "v": _np(pairs["v"])[keep]})


def _route_arcs(parts: int):
    def fn(t: pa.Table):
        yield from _route(t, part_of(_np(t["a"]).astype(np.uint64), parts), "arc")
    return fn


def _star_round(edges, parts: int, label: str, kind: str):
    from thresher.scorers.dedup import components as M
    mapper = M.large_star_map if kind == "large" else M.small_star_map
    reducer = M.large_star_reduce if kind == "large" else M.small_star_reduce

    def map_fn(t: pa.Table):
        a, b = mapper(_np(t["u"]).astype(np.int64), _np(t["v"]).astype(np.int64))
        return pa.table({"a": a, "b": b})

    def reduce_fn(element):
        _, tagged = element
        t = _concat([x for _, x in tagged])
        if t is None:
            return
        x, y = reducer(_np(t["a"]), _np(t["b"]))
        if x.size:
            yield pa.table({"u": x, "v": y})

    return (edges
            | f"{label}Map" >> beam.Map(map_fn)
            | f"{label}Route" >> beam.FlatMap(_route_arcs(parts))
            | f"{label}Shuffle" >> beam.GroupByKey()
            | f"{label}Reduce" >> beam.FlatMap(reduce_fn))


def _fingerprint(tables) -> tuple[int, int]:
    from thresher.scorers.dedup.components import edges_checksum
    n, h = 0, 0
    for t in tables:
        c, s = edges_checksum(_np(t["u"]), _np(t["v"]))
        n += c
        h = (h + s) & 0xFFFFFFFFFFFFFFFF
    return n, h


class SurvivorsFn(_StageFn):
    """Per node partition: attach component labels to node attributes, route by label."""

    def process(self, element):
        _, tagged = element
        attrs = _concat([t for tag, t in tagged if tag == "attr"])
        lab = _concat([t for tag, t in tagged if tag == "label"])
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
    def process(self, element):
        _, tagged = element
        t = _concat([x for _, x in tagged])
        if t is None:
            return
        label = _np(t["label"])
        score = _np(t["score"])
        key = np.where(np.isnan(score), np.inf, -score)
        ih = _np(t["id_hash"])
        ids = t["id"].combine_chunks()
        idl = np.array(ids.to_pylist(), dtype=object)
        o = np.lexsort((idl, ih, key, label))
        label, node, ids_sorted = label[o], _np(t["node"])[o], idl[o]
        first = np.r_[True, label[1:] != label[:-1]]
        grp = np.cumsum(first) - 1
        sizes = np.bincount(grp)
        size = sizes[grp]
        surv = ids_sorted[np.flatnonzero(first)][grp]
        m = size >= 2
        removed = m & ~first
        reason = self.stage.reason(D.RULE_NEAR_DUPLICATE)
        yield pa.table({
            C.SHARD: pa.array((node[m] >> NODE_SHIFT).astype(np.int32), pa.int32()),
            C.ROW: pa.array(node[m] & ((1 << NODE_SHIFT) - 1), pa.int64()),
            C.REASON: pa.array(np.where(removed[m], reason, None).tolist(), pa.string()),
            C.DUPLICATE_OF: pa.array(np.where(removed[m], surv[m], None).tolist(), pa.string()),
            D.CLUSTER_ID: pa.array(surv[m].tolist(), pa.string()),
            D.CLUSTER_SIZE: pa.array(size[m].astype(np.int32), pa.int32()),
        })


def _merge_decisions(k: int, plan: E.Plan):
    def fn(tables):
        import time
        t0 = time.perf_counter()
        tables = [t for t in tables if t.num_rows]
        if tables:
            dec = pa.concat_tables(tables)
            dec = dec.take(pc.sort_indices(dec, [(C.SHARD, "ascending"), (C.ROW, "ascending")]))
        else:
            from thresher.scorers.dedup.minhash import decisions
            dec = decisions(np.zeros(0, np.int64), np.zeros(0, np.int64), pa.array([], pa.string()),
                            np.zeros(0, np.int32), np.zeros(0, np.int64), "x")
        from thresher.pipelines import io
        from thresher.schemas import stats as S
        stage_id = plan.cfg.stages[k].id
        io.write_json(io.join(plan.out, S.GLOBAL_DIR, f"{stage_id}.json"), {
            "stage": stage_id, "fingerprint": plan.fingerprint, "mode": "distributed",
            "decisions": dec.num_rows,
            "rejected": int(pc.sum(pc.is_valid(dec[C.REASON])).as_py() or 0),
            "seconds": time.perf_counter() - t0})
        return k, dec
    return fn


def _check_converged(last, again):
    if _fingerprint(last) != _fingerprint(again):
        raise RuntimeError("minhash_dedup: connected components did not converge within "
                           "distributed_rounds rounds; raise distributed_rounds")
    return True


def build(plan: E.Plan, k: int, key_paths, prior: list) -> Any:
    """The distributed global step: key-file paths → one (k, decision table)."""
    from thresher.pipelines.registry import build_stages
    stage = build_stages([plan.cfg.stages[k]])[0]
    parts = int(stage.config.get("partitions", 16))
    rounds = int(stage.config.get("distributed_rounds", 12))
    sid = stage.id
    side = [beam.pvalue.AsSingleton(d) for d in prior]
    routed = key_paths | f"{sid}/Nodes" >> beam.ParDo(NodesFn(plan, k), *side)
    bands = routed | f"{sid}/Bands" >> beam.Filter(lambda e: e[1][0] == "band") \
        | f"{sid}/BandTables" >> beam.Map(lambda e: (e[0], e[1][1]))
    sigs = routed | f"{sid}/Sigs" >> beam.Filter(lambda e: e[1][0] == "sig")
    attrs = routed | f"{sid}/Attrs" >> beam.Filter(lambda e: e[1][0] == "attr")
    pairs = (bands | f"{sid}/BandShuffle" >> beam.GroupByKey()
             | f"{sid}/Candidates" >> beam.ParDo(CandidatesFn(plan, k)))
    j1 = ((pairs, sigs) | f"{sid}/FlatJ1" >> beam.Flatten() | f"{sid}/ShuffleJ1" >> beam.GroupByKey()
          | f"{sid}/AttachU" >> beam.ParDo(JoinFirstFn(plan, k)))
    edges = ((j1, sigs) | f"{sid}/FlatJ2" >> beam.Flatten() | f"{sid}/ShuffleJ2" >> beam.GroupByKey()
             | f"{sid}/Verify" >> beam.ParDo(VerifyFn(plan, k)))
    cur = _star_round(edges, parts, f"{sid}/Init", "small")
    for r in range(rounds):
        cur = _star_round(_star_round(cur, parts, f"{sid}/R{r}L", "large"), parts, f"{sid}/R{r}S", "small")
    check = _star_round(_star_round(cur, parts, f"{sid}/CheckL", "large"), parts, f"{sid}/CheckS", "small")
    done = (check | f"{sid}/CheckAll" >> beam.combiners.ToList()
            | f"{sid}/Converged" >> beam.Map(_check_converged, beam.pvalue.AsList(cur)))
    labels = (cur | f"{sid}/GateLabels" >> beam.Map(lambda t, ok: t, beam.pvalue.AsSingleton(done))
              | f"{sid}/RouteLabels" >> beam.FlatMap(
                  lambda t: _route(t, part_of(_np(t["u"]).astype(np.uint64), parts), "label")))
    roots = (cur | f"{sid}/Roots" >> beam.FlatMap(
        lambda t: _route(pa.table({"u": np.unique(_np(t["v"])), "v": np.unique(_np(t["v"]))}),
                         part_of(np.unique(_np(t["v"])).astype(np.uint64), parts), "label")))
    members = ((attrs, labels, roots) | f"{sid}/FlatMembers" >> beam.Flatten()
               | f"{sid}/ShuffleMembers" >> beam.GroupByKey()
               | f"{sid}/Members" >> beam.ParDo(SurvivorsFn(plan, k)))
    dec = (members | f"{sid}/ShuffleClusters" >> beam.GroupByKey()
           | f"{sid}/Decide" >> beam.ParDo(DecideFn(plan, k))
           | f"{sid}/AllDecisions" >> beam.combiners.ToList()
           | f"{sid}/Merge" >> beam.Map(_merge_decisions(k, plan)))
    return dec
