"""Distributed global step of ``ScoreThenSelect`` (``preselect``, ``mates``, …): an exact global
cut without gathering every key on one worker (``global_step: distributed``, or ``auto`` above
:data:`AUTO_MIN_ROWS` input rows or :data:`AUTO_MIN_SHARDS` shards).

Both global steps rank by the stage's ``rank_keys``: a ``uint64`` ``order`` (ascending = best
first: the ranking value with the Gumbel noise, the sign and NaN-last folded in) and the
``id_hash`` tiebreak, so the 128-bit key ``(order, id_hash)`` is the total order of the gather
path (its last tiebreak, for rows equal in both, is the position in the sorted key files:
``(key path, __row)`` here). Only key-file paths, 16-bit histograms, small states and the
decision tables cross the shuffle; every key file is read by one worker at a time.

1. **Histogram** (per key file; rows rejected by an earlier global stage dropped): counts and
   character sums over the top 16 bits of ``order``, combined globally. The totals and the
   stage's ``cut_target`` (top_k: k; top_fraction_docs: the fraction of documents;
   top_fraction_chars: the fraction of characters) give the target; the boundary bucket is
   the one holding the first row whose cumulative weight reaches it.
2. **Refinement**: up to 7 more levels of 16 bits over the 128-bit key, unrolled as Beam
   stages, each a histogram of the rows in the previous boundary bucket (side input: the
   previous level's state); a level whose bucket already holds at most
   :data:`GATHER_MAX_ROWS` rows is done and later levels read nothing.
3. **Boundary**: the rows of the final bucket (at most :data:`GATHER_MAX_ROWS`, except rows
   whose whole 128-bit key ties, i.e. duplicate ids with one score) are gathered on one
   worker, sorted, and the exact boundary row found, with the "stop before the crossing row
   when that lands closer" rule of the fractions.
4. **Decisions**: per key file, the rows after the boundary are rejected with the stage's
   reason (``__shard``, ``__row``, ``reason``); the stats (the gather path's keys plus
   ``global_step: distributed``, ``max_rows_per_task`` and ``boundary_rows``, the rows gathered
   in step 3) are summed from these per-file
   passes and written to ``_global/<id>.json`` before any decision table is released. One
   ``(k, table)`` per key file with rejections (the engine spills them to files by shard).

Mode ``threshold`` needs no global state: each key file is decided alone (pass 4 only).
Memory per worker: one key file (a shard's keys), a dense 65,536-bucket histogram, and the
gathered boundary rows (bounded by :data:`GATHER_MAX_ROWS`).
"""
from __future__ import annotations

import time
from typing import Any, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa

from thresher.pipelines import engine as E
from thresher.pipelines import spill
from thresher.schemas import columns as C

#: gather the boundary bucket on one worker once it holds at most this many rows
GATHER_MAX_ROWS = 1_000_000
#: ``global_step: auto`` takes the distributed path above this many input rows …
AUTO_MIN_ROWS = 1_000_000
#: … or this many shards
AUTO_MIN_SHARDS = 256
DIGIT_BITS = 16
NBUCKETS = 1 << DIGIT_BITS
LEVELS = 128 // DIGIT_BITS
_MASK = np.uint64(NBUCKETS - 1)

DEC_TAG = "dec"
STATS_TAG = "stats"


def _digit(order: np.ndarray, ih: np.ndarray, level: int) -> np.ndarray:
    """The ``level``-th 16-bit digit (0 = most significant) of the 128-bit key (order, id_hash)."""
    src, j = (order, level) if level < 4 else (ih, level - 4)
    return ((src >> np.uint64(48 - DIGIT_BITS * j)) & _MASK).astype(np.int64)


def _in_bucket(order: np.ndarray, ih: np.ndarray, level: int, prefix: int) -> np.ndarray:
    """Rows whose key's top ``16 × (level + 1)`` bits equal ``prefix``."""
    bits = DIGIT_BITS * (level + 1)
    if bits <= 64:
        return (order >> np.uint64(64 - bits)) == np.uint64(prefix)
    lo_bits = bits - 64
    hi, lo = prefix >> lo_bits, prefix & ((1 << lo_bits) - 1)
    m = order == np.uint64(hi)
    return m & ((ih >> np.uint64(64 - lo_bits)) == np.uint64(lo)) if lo_bits < 64 else m & (ih == np.uint64(lo))


class _StageFn(beam.DoFn):
    def __init__(self, plan: E.Plan, k: int):
        self.plan, self.k = plan, k

    def setup(self):
        from thresher.pipelines.registry import build_stages
        self.stage = build_stages([self.plan.cfg.stages[self.k]])[0]

    def _keys(self, path: str, prior) -> pa.Table:
        return E.exclude_prior(E.read_keys([path]), list(prior))

    def _ranked(self, path: str, prior):
        keys = self._keys(path, prior)
        order, ih, chars = self.stage.rank_keys(keys)
        return keys, order, ih, chars


def _sparse_hist(digits: np.ndarray, weights: np.ndarray, seconds: float) -> dict:
    c = np.bincount(digits, minlength=NBUCKETS)
    w = np.bincount(digits, weights=weights.astype(np.float64), minlength=NBUCKETS)
    nz = np.flatnonzero(c)
    return {"d": nz, "c": c[nz].astype(np.int64), "w": np.rint(w[nz]).astype(np.int64),
            "rows": int(digits.size), "seconds": seconds}


class HistFn(_StageFn):
    """Level 0 (``state`` None): histogram of every row's first digit, weights = characters.
    Level L > 0: histogram of digit L of the rows in the previous level's boundary bucket,
    weights in the target's unit; nothing once the previous level is done."""

    def __init__(self, plan: E.Plan, k: int, level: int):
        super().__init__(plan, k)
        self.level = level

    def process(self, path: str, state: Optional[dict], *prior):
        t0 = time.perf_counter()
        if self.level and (state is None or state["done"]):
            return
        _, order, ih, chars = self._ranked(path, prior)
        if self.level:
            m = _in_bucket(order, ih, self.level - 1, state["prefix"])
            order, ih, chars = order[m], ih[m], chars[m]
            weights = chars if state["weigh_chars"] else np.ones(order.size, np.int64)
        else:
            weights = chars
        if order.size == 0:
            return
        yield _sparse_hist(_digit(order, ih, self.level), weights, time.perf_counter() - t0)


class HistCombine(beam.CombineFn):
    """Sparse per-file histograms → one dense (counts, weights) histogram (None if empty)."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, h):
        if acc is None:
            acc = {"c": np.zeros(NBUCKETS, np.int64), "w": np.zeros(NBUCKETS, np.int64), "rows": 0, "seconds": 0.0}
        acc["c"][h["d"]] += h["c"]
        acc["w"][h["d"]] += h["w"]
        acc["rows"] = max(acc["rows"], h["rows"])
        acc["seconds"] += h["seconds"]
        return acc

    def merge_accumulators(self, accs):
        out = None
        for a in accs:
            if a is None:
                continue
            if out is None:
                out = {"c": a["c"].copy(), "w": a["w"].copy(), "rows": a["rows"], "seconds": a["seconds"]}
            else:
                out["c"] += a["c"]
                out["w"] += a["w"]
                out["rows"] = max(out["rows"], a["rows"])
                out["seconds"] += a["seconds"]
        return out

    def extract_output(self, acc):
        return acc


def _pick(state: dict, c: np.ndarray, w: np.ndarray, level: int, cap: int) -> dict:
    """The bucket of this level's histogram holding the first row whose cumulative weight
    reaches the target."""
    cum = state["before_w"] + np.cumsum(w)
    ok = (c > 0) & (cum.astype(np.float64) >= state["target"])
    hit = np.flatnonzero(ok)
    if hit.size == 0:        # cannot happen (the target is at most the total weight); be loud
        raise RuntimeError(f"distributed selection: no boundary at level {level} ({state})")
    d = int(hit[0])
    s = dict(state)
    s["level"] = level
    s["prefix"] = (state["prefix"] << DIGIT_BITS) | d if level else d
    s["before_n"] = state["before_n"] + int(c[:d].sum())
    s["before_w"] = state["before_w"] + int(w[:d].sum())
    s["bucket_n"] = int(c[d])
    s["done"] = s["bucket_n"] <= cap or level == LEVELS - 1
    return s


def _first_state(plan: E.Plan, k: int, cap: int):
    def fn(h):
        from thresher.pipelines.registry import build_stages
        stage = build_stages([plan.cfg.stages[k]])[0]
        c = h["c"] if h else np.zeros(NBUCKETS, np.int64)
        chars = h["w"] if h else np.zeros(NBUCKETS, np.int64)
        n, total = int(c.sum()), int(chars.sum())
        outcome, target, closer, weigh_chars = stage.cut_target(n, total)
        state = {"outcome": outcome, "target": target, "closer": closer, "weigh_chars": weigh_chars,
                 "n": n, "chars": total, "level": 0, "prefix": 0, "before_n": 0, "before_w": 0,
                 "bucket_n": 0, "done": True, "max_rows": h["rows"] if h else 0,
                 "seconds": h["seconds"] if h else 0.0}
        if outcome != "at" or n == 0:
            return state
        return {**_pick(state, c, chars if weigh_chars else c, 0, cap), "max_rows": state["max_rows"]}
    return fn


def _next_state(level: int, cap: int):
    def fn(h, state):
        if state["done"] or h is None:
            return state
        s = _pick(state, h["c"], h["w"], level, cap)
        s["max_rows"] = max(state["max_rows"], h["rows"])
        s["seconds"] = state["seconds"] + h["seconds"]
        return s
    return fn


class BucketRowsFn(_StageFn):
    """The rows of the final boundary bucket of one key file: (order, id_hash, path, row, weight)."""

    def process(self, path: str, state: dict, *prior):
        if state["outcome"] != "at":
            return
        t0 = time.perf_counter()
        keys, order, ih, chars = self._ranked(path, prior)
        m = _in_bucket(order, ih, state["level"], state["prefix"])
        if not m.any():
            return
        rows = keys[C.ROW].to_numpy().astype(np.int64)[m]
        w = chars[m] if state["weigh_chars"] else np.ones(int(m.sum()), np.int64)
        yield {"order": order[m], "ih": ih[m], "path": path, "row": rows, "w": w,
               "seconds": time.perf_counter() - t0}


def _cut(parts: list, state: dict) -> dict:
    """The exact boundary from the gathered bucket rows: the key of the row that crosses the
    target and whether it is kept."""
    if state["outcome"] != "at":
        return {"kind": state["outcome"], "gathered": 0, "seconds": state["seconds"]}
    parts = sorted(parts, key=lambda p: p["path"])
    order = np.concatenate([p["order"] for p in parts])
    ih = np.concatenate([p["ih"] for p in parts])
    pidx = np.concatenate([np.full(p["row"].size, i, np.int64) for i, p in enumerate(parts)])
    row = np.concatenate([p["row"] for p in parts])
    w = np.concatenate([p["w"] for p in parts])
    if order.size != state["bucket_n"]:
        raise RuntimeError(f"distributed selection: the boundary bucket holds {order.size} rows, "
                           f"its histogram {state['bucket_n']}")
    o = np.lexsort((row, pidx, ih, order))
    cum = state["before_w"] + np.cumsum(w[o])
    target = state["target"]
    i = int(np.flatnonzero(cum.astype(np.float64) >= target)[0])
    kk = state["before_n"] + i + 1
    inclusive = True
    if state["closer"] and kk > 1:
        after, before = float(cum[i]), float(cum[i] - w[o[i]])
        if abs(before - target) < abs(after - target):
            inclusive = False
    r = o[i]
    return {"kind": "key", "order": int(order[r]), "ih": int(ih[r]), "path": parts[int(pidx[r])]["path"],
            "row": int(row[r]), "inclusive": inclusive, "kept": kk if inclusive else kk - 1,
            "gathered": int(order.size),
            "seconds": state["seconds"] + sum(p["seconds"] for p in parts)}


def _keep_mask(order: np.ndarray, ih: np.ndarray, rows: np.ndarray, path: str, cut: dict) -> np.ndarray:
    if cut["kind"] == "all":
        return np.ones(order.size, bool)
    if cut["kind"] == "none":
        return np.zeros(order.size, bool)
    O, H = np.uint64(cut["order"]), np.uint64(cut["ih"])
    if path < cut["path"]:
        tie_lt, tie_eq = np.ones(order.size, bool), np.zeros(order.size, bool)
    elif path > cut["path"]:
        tie_lt = tie_eq = np.zeros(order.size, bool)
    else:
        tie_lt, tie_eq = rows < cut["row"], rows == cut["row"]
    same = (order == O) & (ih == H)
    lt = (order < O) | ((order == O) & (ih < H)) | (same & tie_lt)
    return lt | (same & tie_eq) if cut["inclusive"] else lt


class DecideFn(_StageFn):
    """One key file → its rejected rows (tagged ``dec``) and its part of the stats (``stats``).
    ``cut`` None: mode threshold, decided on the file alone."""

    def process(self, path: str, cut: Optional[dict], *prior):
        t0 = time.perf_counter()
        st = self.stage
        keys = self._keys(path, prior)
        n = keys.num_rows
        last = None
        if cut is None:
            scores = keys[st.score_column].to_numpy().astype(np.float64) if n else np.zeros(0)
            chars = keys["_chars"].to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
            keep = st.threshold_mask(scores)
        else:
            order, ih, chars = st.rank_keys(keys)
            rows = keys[C.ROW].to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
            keep = _keep_mask(order, ih, rows, path, cut)
            if keep.any():
                last = int(order[keep].max())
        rej = np.flatnonzero(~keep)
        if rej.size:
            take = pa.array(rej)
            for item in spill.spill_decisions(self.plan.out, st.id, self.k, pa.table({
                    C.SHARD: keys[C.SHARD].take(take).combine_chunks(),
                    C.ROW: keys[C.ROW].take(take).combine_chunks(),
                    C.REASON: pa.array([st.reason(st.reject_rule)] * rej.size, pa.string())})):
                yield beam.pvalue.TaggedOutput(DEC_TAG, item)
        yield beam.pvalue.TaggedOutput(STATS_TAG, {
            "docs": n, "chars": int(chars.sum()), "selected_docs": int(keep.sum()),
            "selected_chars": int(chars[keep].sum()), "last": last, "rows": n,
            "seconds": time.perf_counter() - t0})


class StatsCombine(beam.CombineFn):
    def create_accumulator(self):
        return {"docs": 0, "chars": 0, "selected_docs": 0, "selected_chars": 0, "last": None, "rows": 0,
                "seconds": 0.0}

    def add_input(self, acc, x):
        return self.merge_accumulators([acc, x])

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            for key in ("docs", "chars", "selected_docs", "selected_chars", "seconds"):
                out[key] += a[key]
            out["rows"] = max(out["rows"], a["rows"])
            if a["last"] is not None and (out["last"] is None or a["last"] > out["last"]):
                out["last"] = a["last"]
        return out

    def extract_output(self, acc):
        return acc


def _write_stats(plan: E.Plan, k: int):
    def fn(tot, cut):
        from thresher.pipelines import io
        from thresher.pipelines.registry import build_stages
        from thresher.schemas import stats as S
        stage = build_stages([plan.cfg.stages[k]])[0]
        thr = stage.config["threshold"] if cut is None else stage.reported_cut(tot["last"])
        stats = stage.selection_stats(tot["docs"], tot["chars"], tot["selected_docs"], tot["selected_chars"], thr)
        rejected = tot["docs"] - tot["selected_docs"]
        gathered = 0 if cut is None else cut["gathered"]
        seconds = tot["seconds"] + (0.0 if cut is None else cut["seconds"])
        io.write_json(io.join(plan.out, S.GLOBAL_DIR, f"{stage.id}.json"), {
            "stage": stage.id, "fingerprint": plan.fingerprint, "keys": tot["docs"],
            "decisions": rejected, "rejected": rejected, "seconds": seconds, **stats,
            "global_step": "distributed",
            # the largest key table one task of this step held: a key file, or the gathered boundary rows
            "max_rows_per_task": max(tot["rows"], gathered), "boundary_rows": gathered})
        return True
    return fn


def use_distributed(plan: E.Plan, stage) -> bool:
    """``global_step`` resolved for this run: ``auto`` is distributed above
    :data:`AUTO_MIN_ROWS` input rows or :data:`AUTO_MIN_SHARDS` shards."""
    mode = stage.config.get("global_step", "gather")
    if mode != "auto":
        return mode == "distributed"
    return (sum(int(s.num_rows) for s in plan.shards) > AUTO_MIN_ROWS
            or len(plan.shards) > AUTO_MIN_SHARDS)


def distributed_select(plan: E.Plan, k: int, key_paths, prior: list) -> Any:
    """The global step of a ScoreThenSelect stage: key-file paths → ``(shard, (k, ref))``
    decision refs (the gather path below the ``auto`` size)."""
    from thresher.pipelines.registry import build_stages
    stages = build_stages(plan.cfg.stages)
    stage = stages[k]
    sid = stage.id

    def side():
        return [beam.pvalue.AsList(d) for d in prior]

    if not use_distributed(plan, stage):
        from thresher.pipelines.transforms import gather_step
        return gather_step(plan, k, key_paths, prior, sid)
    cap = int(GATHER_MAX_ROWS)
    key_paths = key_paths | f"{sid}/Paths" >> beam.Reshuffle()
    if stage.mode == "threshold":
        cut = None
        cut_side = None
    else:
        h0 = (key_paths | f"{sid}/Hist0" >> beam.ParDo(HistFn(plan, k, 0), None, *side())
              | f"{sid}/Sum0" >> beam.CombineGlobally(HistCombine()))
        state = h0 | f"{sid}/Level0" >> beam.Map(_first_state(plan, k, cap))
        for level in range(1, LEVELS):
            h = (key_paths | f"{sid}/Hist{level}" >> beam.ParDo(HistFn(plan, k, level),
                                                               beam.pvalue.AsSingleton(state), *side())
                 | f"{sid}/Sum{level}" >> beam.CombineGlobally(HistCombine()))
            state = h | f"{sid}/Level{level}" >> beam.Map(_next_state(level, cap), beam.pvalue.AsSingleton(state))
        bucket = (key_paths | f"{sid}/BucketRows" >> beam.ParDo(BucketRowsFn(plan, k),
                                                                beam.pvalue.AsSingleton(state), *side())
                  | f"{sid}/GatherBucket" >> beam.combiners.ToList())
        cut = bucket | f"{sid}/Boundary" >> beam.Map(_cut, beam.pvalue.AsSingleton(state))
        cut_side = beam.pvalue.AsSingleton(cut)
    res = key_paths | f"{sid}/Decide" >> beam.ParDo(DecideFn(plan, k), cut_side, *side()).with_outputs(
        DEC_TAG, STATS_TAG)
    total = res[STATS_TAG] | f"{sid}/SumStats" >> beam.CombineGlobally(StatsCombine())
    if cut is None:
        written = total | f"{sid}/WriteStats" >> beam.Map(_write_stats(plan, k), None)
    else:
        written = total | f"{sid}/WriteStats" >> beam.Map(_write_stats(plan, k), beam.pvalue.AsSingleton(cut))
    return res[DEC_TAG] | f"{sid}/AfterStats" >> beam.Map(lambda kd, ok: kd, beam.pvalue.AsSingleton(written))
