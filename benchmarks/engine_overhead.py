"""Engine overhead: read → trivial scoring stage → write, thresher vs a plain pyarrow loop.

    python benchmarks/engine_overhead.py [--docs 200000] [--shards 8] [--repeats 3]

Builds shards from the real corpora in ../shared/corpora (texts repeated with a
suffix to reach --docs), then times on the same shards:
  * plain loop: pyarrow read, the `length` stage's kernels, filter, write kept/rejected (zstd)
    in one process, and the same loop in a 2-process pool;
  * thresher: `length` stage through Beam (FnApiRunner), 1 worker in_memory and 2 workers
    multi_processing, including stats/manifests/reconciliation.
Prints docs/s for each and the ratios. Medians over --repeats.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import tempfile
import time
from multiprocessing import Pool

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPORA = os.path.join(os.path.dirname(ROOT), "shared", "corpora")


def build(dirname: str, docs: int, shards: int) -> None:
    texts = []
    for name in ("wiki_summaries", "handbook", "fortunes", "web_sample", "style_paragraphs"):
        texts.extend(pq.read_table(os.path.join(CORPORA, f"{name}.parquet"), columns=["text"])["text"].to_pylist())
    reps = -(-docs // len(texts))
    rows = [t if r == 0 else f"{t}\n({r})" for r in range(reps) for t in texts][:docs]
    rng = np.random.default_rng(0)
    rng.shuffle(rows)
    cuts = np.linspace(0, docs, shards + 1).astype(int)
    os.makedirs(dirname, exist_ok=True)
    for i in range(shards):
        part = rows[cuts[i]:cuts[i + 1]]
        pq.write_table(pa.table({"id": [f"d{cuts[i] + j}" for j in range(len(part))], "text": part}),
                       os.path.join(dirname, f"part-{i:03d}.parquet"), compression="zstd", row_group_size=5000)


def plain_shard(args) -> int:
    path, out = args
    pf = pq.ParquetFile(path, memory_map=True)
    kept_w = rej_w = None
    n = 0
    for b in pf.iter_batches(batch_size=2000):
        t = pa.Table.from_batches([b])
        text = t["text"].combine_chunks()
        chars = pc.utf8_length(text).cast(pa.int64())
        words = pc.list_value_length(pc.utf8_split_whitespace(text)).cast(pa.int64())
        lines = pc.add(pc.count_substring(text, "\n").cast(pa.int64()), 1)
        t = t.append_column("length_chars", chars).append_column("length_words", words) \
             .append_column("length_lines", lines)
        mask = pc.greater_equal(chars, 0)
        k, r = t.filter(mask), t.filter(pc.invert(mask))
        if kept_w is None:
            kept_w = pq.ParquetWriter(os.path.join(out, "k-" + os.path.basename(path)), k.schema, compression="zstd")
            rej_w = pq.ParquetWriter(os.path.join(out, "r-" + os.path.basename(path)), r.schema, compression="zstd")
        kept_w.write_table(k)
        rej_w.write_table(r)
        n += t.num_rows
    kept_w.close()
    rej_w.close()
    return n


def run_plain(paths, out, procs: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    t0 = time.perf_counter()
    if procs == 1:
        for p in paths:
            plain_shard((p, out))
    else:
        with Pool(procs) as pool:
            pool.map(plain_shard, [(p, out) for p in paths])
    return time.perf_counter() - t0


def run_thresher(inp, out, workers: int) -> float:
    from thresher.pipelines.api import run
    shutil.rmtree(out, ignore_errors=True)
    mode = "multi_processing" if workers > 1 else "in_memory"
    t0 = time.perf_counter()
    stats = run({"input": {"path": inp, "id_column": "id"}, "output": out, "stages": [{"name": "length"}],
                 "pipeline_options": {"direct_num_workers": workers, "direct_running_mode": mode}},
                progress=False)
    dt = time.perf_counter() - t0
    assert stats["reconciled"]
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    import logging
    logging.getLogger().setLevel(logging.ERROR)
    work = a.workdir or tempfile.mkdtemp(prefix="thresher-bench-")
    inp = os.path.join(work, "in")
    if not glob.glob(os.path.join(inp, "*.parquet")):
        build(inp, a.docs, a.shards)
    paths = sorted(glob.glob(os.path.join(inp, "*.parquet")))
    n = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    mb = sum(os.path.getsize(p) for p in paths) / 1e6
    print(f"corpus: {n:,} docs in {len(paths)} shards ({mb:.0f} MB zstd) · {os.cpu_count()} cores")
    res = {}
    for name, fn in [("plain pyarrow loop, 1 process", lambda: run_plain(paths, os.path.join(work, "p1"), 1)),
                     ("plain pyarrow loop, 2 processes", lambda: run_plain(paths, os.path.join(work, "p2"), 2)),
                     ("thresher, 1 worker (in_memory)", lambda: run_thresher(inp, os.path.join(work, "t1"), 1)),
                     ("thresher, 2 workers (multi_processing)", lambda: run_thresher(inp, os.path.join(work, "t2"), 2))]:
        ts = [fn() for _ in range(a.repeats)]
        res[name] = statistics.median(ts)
        print(f"{name:<42} {res[name]:7.2f} s  {n / res[name]:>10,.0f} docs/s   (runs: {', '.join(f'{t:.2f}' for t in ts)})")
    base1 = res["plain pyarrow loop, 1 process"]
    base2 = res["plain pyarrow loop, 2 processes"]
    print(f"\nratio thresher 1 worker / plain 1 process:    {base1 / res['thresher, 1 worker (in_memory)']:.2f}")
    print(f"ratio thresher 2 workers / plain 2 processes: {base2 / res['thresher, 2 workers (multi_processing)']:.2f}")
    print(f"ratio thresher 2 workers / plain 1 process:   {base1 / res['thresher, 2 workers (multi_processing)']:.2f}")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
