"""File-backed shuffle of the global steps: tables go to files under ``_work/_shuffle/``, only
small references cross the runner's shuffle.

Why by hand: Beam's local runner (FnApiRunner) holds every element of a GroupByKey in the
runner process, so a shuffle of Arrow tables makes that one process grow with the corpus (and
Beam's local shuffle is slow, see the design notes); on a cluster the runner's shuffle service
would carry the same bytes. Writing each routed table once, as Parquet row groups next to the
work files, and shuffling ``(partition, (tag, ref))`` keeps every process bounded by what its
task reads, on every runner, and the bytes land on the output's filesystem (local, ``gs://``,
``s3://``), which every worker already reads and writes.

A ref is ``(path, first_row_group, end_row_group)``. A retried bundle writes new files under
new names; only the refs of the attempt the runner commits are ever read, and everything under
``_work/`` is removed after a successful run.
"""
from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.pipelines import io
from thresher.schemas import columns as C
from thresher.schemas import stats as S

SHUFFLE_DIR = "_shuffle"
#: rows per written row group (pyarrow's own cap is 1 Mi rows; a larger table becomes several)
ROW_GROUP_ROWS = 1_000_000

Ref = tuple[str, int, int]


def _counter(name: str):
    try:
        from apache_beam.metrics import Metrics
        return Metrics.counter("thresher.shuffle", name)
    except Exception:  # noqa: BLE001 - outside Beam (a unit test calling the helpers directly)
        return None


def spill_dir(out: str, step: str) -> str:
    return io.join(out, S.WORK_DIR, SHUFFLE_DIR, step.replace("/", "_"))


def _write(path: str, tables: list[pa.Table]) -> list[tuple[int, int]]:
    """Write ``tables`` (one schema) to ``path``; the row-group range of each table."""
    import pyarrow.parquet as pq
    schema = tables[0].schema
    ranges = []
    rg = 0
    with io.open_write(path) as f:
        with pq.ParquetWriter(f, schema, compression="snappy") as w:
            for t in tables:
                lo = rg
                for s in range(0, t.num_rows, ROW_GROUP_ROWS):
                    part = t.slice(s, ROW_GROUP_ROWS)
                    w.write_table(part.cast(schema) if part.schema != schema else part,
                                  row_group_size=max(1, part.num_rows))
                    rg += 1
                ranges.append((lo, rg))
    return ranges


def spill(out: str, step: str, routed: Iterable[tuple[int, tuple[str, pa.Table]]],
          metric: Optional[str] = None) -> Iterator[tuple[int, tuple[str, Ref]]]:
    """``(partition, (tag, table))`` items, e.g. one input element's routed output → one file
    per tag (a row-group range per partition) and ``(partition, (tag, ref))`` per item."""
    by_tag: dict[str, list[tuple[int, pa.Table]]] = defaultdict(list)
    for part, (tag, t) in routed:
        if t is not None and t.num_rows:
            by_tag[tag].append((part, t))
    d = spill_dir(out, step)
    name = uuid.uuid4().hex[:16]
    nbytes = 0
    for tag, items in sorted(by_tag.items()):
        schema = items[0][1].schema
        if any(t.schema != schema for _, t in items):
            schema = pa.unify_schemas([t.schema for _, t in items], promote_options="permissive")
        tables = [t if t.schema == schema else t.cast(schema) for _, t in items]
        path = io.join(d, f"{name}.{tag}.parquet")
        for (part, t), (lo, hi) in zip(items, _write(path, tables)):
            nbytes += t.nbytes
            yield part, (tag, (path, lo, hi))
    c = _counter(metric or step)
    if c is not None and nbytes:
        c.inc(nbytes)


def read_refs(refs: Iterable[Ref]) -> list[pa.Table]:
    """The tables behind ``refs``, in the order given (each file opened once)."""
    import pyarrow.parquet as pq
    refs = [tuple(r) for r in refs]
    by_path: dict[str, set] = defaultdict(set)
    for path, lo, hi in refs:
        by_path[path].add((lo, hi))
    got = {}
    for path in sorted(by_path):
        with io.open_read(path) as f:
            pf = pq.ParquetFile(f)
            for lo, hi in sorted(by_path[path]):
                got[(path, lo, hi)] = pf.read_row_groups(list(range(lo, hi)))
    return [got[r] for r in refs]


def load(tagged: Iterable[tuple[str, Any]]) -> list[tuple[str, pa.Table]]:
    """A grouped value of ``(tag, ref)`` items → ``(tag, table)`` items."""
    tagged = list(tagged)
    return list(zip([t for t, _ in tagged], read_refs([r for _, r in tagged])))


def concat(tables: list[pa.Table]) -> Optional[pa.Table]:
    tables = [t for t in tables if t is not None and t.num_rows]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()


# -- decisions -----------------------------------------------------------------------------

def spill_decisions(out: str, stage_id: str, k: int, table: pa.Table) -> Iterator[tuple[int, tuple[int, Ref]]]:
    """One decision table → one file, a row group (range) per shard; ``(shard, (k, ref))``."""
    if table is None or table.num_rows == 0:
        return
    table = table.take(pc.sort_indices(table, [(C.SHARD, "ascending"), (C.ROW, "ascending")]))
    sh = table[C.SHARD].to_numpy()
    cuts = np.flatnonzero(np.r_[True, sh[1:] != sh[:-1], True])
    slices = [table.slice(a, b - a) for a, b in zip(cuts[:-1], cuts[1:])]
    path = io.join(spill_dir(out, f"decisions_{stage_id}"), f"{uuid.uuid4().hex[:16]}.parquet")
    for a, (lo, hi) in zip(cuts[:-1], _write(path, slices)):
        yield int(sh[a]), (k, (path, lo, hi))
    c = _counter(f"decisions/{stage_id}")
    if c is not None:
        c.inc(table.nbytes)


def load_decisions(items: Iterable[tuple[int, Ref]]) -> list[tuple[int, pa.Table]]:
    """``(k, ref)`` items (a shard's decisions) → ``(k, table)`` pieces, in ``k`` order."""
    items = sorted(items, key=lambda kr: (kr[0], tuple(kr[1])))
    tables = load([(k, r) for k, r in items])
    return [(k, t) for k, t in tables]


def prior_tables(prior: list, shards: Optional[set] = None) -> list[pa.Table]:
    """Decision tables of earlier global stages, from their ``(shard, (k, ref))`` side-input
    lists; only the given shards' pieces when ``shards`` is set."""
    refs = [tuple(r) for lst in prior for s, (_, r) in lst if shards is None or int(s) in shards]
    return read_refs(refs)
