"""MinHash near-dedup speed and quality: thresher vs datasketch, rensa and datatrove.

    python benchmarks/dedup.py                      # 100k docs, all systems
    python benchmarks/dedup.py --docs 20000 --systems thresher,rensa

One invocation builds (or reuses) the near-duplicate corpus of
``benchmarks/neardup_data.py`` (real text, planted near-duplicates, exact
ground truth), then runs every system in its own fresh process on the same
Parquet shards with the same shingling (word 5-grams), 112 permutations =
14 bands x 8 rows and threshold 0.8, and reports:

* docs per CPU-second: documents / (user + system CPU of the worker process and
  its children, from ``resource.getrusage``), measured from after the imports to
  the end of clustering, so reading the Parquet text is included and
  interpreter start-up is not;
* peak RSS of the worker (``ru_maxrss``);
* documents removed (cluster members that are not the one kept per cluster);
* pairwise precision / recall / F1 against the truth clusters (see
  ``neardup_data.pairwise_prf``), and throughput ratios to datatrove.

Peers are run as their documentation suggests, without a verification step
(none of them verifies by default); clusters are the connected components of
their LSH candidate pairs. ``thresher-none`` (verify=none, 14 x 8) does the
same work as they do; ``thresher`` is the stage core at its defaults (exact-Jaccard verification),
``thresher-signature`` verifies with signature estimates only. ``thresher-pipeline`` is the whole
stage as users run it (Beam, reading, minhash_dedup with defaults, writing kept/rejected,
reconciliation; ``-2w`` with two worker processes, CPU of children included; ``-auto`` with the
local runner's own choice of worker processes, which the summary compares with the best of the two). datasketch and rensa receive the same normalised
5-gram strings as thresher hashes (NFKC, lower case, whitespace split; a
document of fewer than 5 words is one shingle of all its words; empty ones
are skipped), built in Python, which is part of their cost. datatrove runs its
own 4-stage pipeline (signatures → buckets → cluster → filter) with its word
tokenizer and a text normalisation configured as close to ours as it allows
(lower case, whitespace; no punctuation, digit or diacritic folding), from the
separate virtualenv ``/work/bench-venv`` (``--datatrove-python``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

NGRAM, NUM_PERM, BANDS, ROWS, THRESHOLD, SEED = 5, 112, 14, 8, 0.8, 1


# ------------------------------------------------------------------------------------------
# measurement helpers (used inside the workers)
# ------------------------------------------------------------------------------------------
def _cpu() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _peak_rss_mb() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(s, c) / 1024.0


def _shards(data: Path) -> list[Path]:
    return sorted((data / "corpus").glob("part-*.parquet"))


def py_shingles(text: str, n: int = NGRAM) -> list[str]:
    """The peers' shingles: same normalisation and n-gram rule as thresher's default."""
    import unicodedata
    words = unicodedata.normalize("NFKC", text).lower().replace("ß", "ss").replace("ς", "σ").split()
    if not words:
        return []
    if len(words) < n:
        return [" ".join(words)]
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def _components_from_pairs(n: int, u, v):
    """Cluster labels from candidate pairs: thresher's union-find, the same for every peer
    (only the datasketch and rensa workers call it; the datatrove worker clusters itself)."""
    import numpy as np

    from thresher.scorers.dedup.components import union_find
    return union_find(n, np.asarray(u, np.int64), np.asarray(v, np.int64))


# ------------------------------------------------------------------------------------------
# workers: each prints one JSON line and writes <out>/pred.parquet (id, cluster)
# ------------------------------------------------------------------------------------------
def worker_thresher(data: Path, out: Path, variant: str) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from thresher.schemas import columns as C
    from thresher.scorers.dedup.minhash import MinHashDedup

    params = dict(ngram=NGRAM, num_perm=NUM_PERM, threshold=THRESHOLD, seed=SEED, device="cpu")
    if variant == "cuda":
        params["device"] = "cuda"
    elif variant != "default":
        params["verify"] = variant
    if variant == "none":
        params.update(bands=BANDS, rows=ROWS)
    t0, w0 = _cpu(), time.time()
    stage = MinHashDedup(**params)
    stage.timings = {}
    parts = []
    n_read = 0
    for s, path in enumerate(_shards(data)):
        pf = pq.ParquetFile(path)
        row = 0
        for batch in pf.iter_batches(batch_size=5000, columns=["id", "text"]):
            tb = pa.Table.from_batches([batch])
            st = time.process_time()
            k = stage.keys(tb["text"], tb, tb["id"])
            k = k.append_column(C.SHARD, pa.array(np.full(len(k), s, np.int32)))
            k = k.append_column(C.ROW, pa.array(np.arange(row, row + len(k), dtype=np.int64)))
            parts.append(k)
            row += len(k)
            n_read += len(k)
            stage.timings["read+keys_total"] = stage.timings.get("read+keys_total", 0) + time.process_time() - st
    keys = pa.concat_tables(parts)
    key_bytes = keys.nbytes
    dec = stage.compute(keys).table
    cpu, wall = _cpu() - t0, time.time() - w0
    # fingerprint of all signatures, in shard/row order (compares CPU and GPU runs)
    import xxhash
    fp = xxhash.xxh64()
    for chunk in keys["signature"].chunks:
        fp.update(np.ascontiguousarray(chunk.flatten().to_numpy()).tobytes())
    sig_checksum = fp.hexdigest()
    # predicted clusters: cluster_id for clustered rows, own id otherwise
    cid = dict(zip(zip(dec[C.SHARD].to_pylist(), dec[C.ROW].to_pylist()), dec["cluster_id"].to_pylist()))
    ids = keys["id"].to_pylist()
    sh, rw = keys[C.SHARD].to_pylist(), keys[C.ROW].to_pylist()
    cluster = [cid.get((a, b), i) for a, b, i in zip(sh, rw, ids)]
    pq.write_table(pa.table({"id": ids, "cluster": cluster}), out / "pred.parquet")
    removed = int(pc.sum(pc.is_valid(dec["reason"])).as_py() or 0)
    nsh = keys["n_shingles"].to_numpy().astype(np.int64)
    t = stage.timings
    return {
        "docs": n_read, "cpu_s": cpu, "wall_s": wall, "peak_rss_mb": _peak_rss_mb(),
        "removed": removed, "bands": stage.bands, "rows": stage.rows, "sig_checksum": sig_checksum,
        "phases_cpu_s": {k: round(v, 3) for k, v in t.items() if isinstance(v, float)},
        "edges": int(t.get("edges", 0)),
        "bytes_per_doc": {
            "key_table_total": key_bytes / n_read,
            "signature": 4 * NUM_PERM,
            "band_keys": 8 * stage.bands,
            "shingle_sets(verify=jaccard)": (keys["shingles"].nbytes / n_read) if "shingles" in keys.column_names else 0,
            "shingle_hashes_transient": 8 * float(nsh.mean()),
            "verified_edges": 16 * int(t.get("edges", 0)) / n_read,
        },
        "shingles_per_doc": float(nsh.mean()),
    }


def _read_texts(data: Path):
    import pyarrow.parquet as pq
    ids, texts = [], []
    for path in _shards(data):
        t = pq.read_table(path, columns=["id", "text"])
        ids += t["id"].to_pylist()
        texts += t["text"].to_pylist()
    return ids, texts


def _write_pred(out: Path, ids, labels) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"id": ids, "cluster": [ids[int(x)] for x in labels]}), out / "pred.parquet")


def _removed(labels) -> int:
    import numpy as np
    return int(len(labels) - len(np.unique(labels)))


def worker_datasketch(data: Path, out: Path) -> dict:
    from datasketch import MinHash, MinHashLSH
    t0, w0 = _cpu(), time.time()
    ids, texts = _read_texts(data)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=(BANDS, ROWS))
    mhs = []
    for i, text in enumerate(texts):
        sh = py_shingles(text)
        if not sh:
            mhs.append(None)
            continue
        m = MinHash(num_perm=NUM_PERM, seed=SEED)
        m.update_batch([s.encode("utf-8") for s in sh])
        lsh.insert(i, m, check_duplication=False)
        mhs.append(m)
    u, v = [], []
    for i, m in enumerate(mhs):
        if m is None:
            continue
        for j in lsh.query(m):
            if j > i:
                u.append(i)
                v.append(j)
    labels = _components_from_pairs(len(texts), u, v)
    cpu, wall = _cpu() - t0, time.time() - w0
    _write_pred(out, ids, labels)
    return {"docs": len(texts), "cpu_s": cpu, "wall_s": wall, "peak_rss_mb": _peak_rss_mb(),
            "removed": _removed(labels), "candidate_pairs": len(u), "version": _version("datasketch")}


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def worker_rensa(data: Path, out: Path) -> dict:
    import rensa
    t0, w0 = _cpu(), time.time()
    ids, texts = _read_texts(data)
    sets = [py_shingles(t) for t in texts]
    keep = [i for i, s in enumerate(sets) if s]
    mhs = rensa.RMinHash.from_token_sets([sets[i] for i in keep], NUM_PERM, SEED)
    lsh = rensa.RMinHashLSH(THRESHOLD, NUM_PERM, BANDS)
    lsh.insert_many(mhs, 0)
    res = lsh.query_all(mhs)
    u, v = [], []
    for a, cands in enumerate(res):
        for b in cands:
            if b > a:
                u.append(keep[a])
                v.append(keep[b])
    labels = _components_from_pairs(len(texts), u, v)
    cpu, wall = _cpu() - t0, time.time() - w0
    _write_pred(out, ids, labels)
    return {"docs": len(texts), "cpu_s": cpu, "wall_s": wall, "peak_rss_mb": _peak_rss_mb(),
            "removed": _removed(labels), "candidate_pairs": len(u),
            "version": _version("rensa")}


def worker_datatrove(data: Path, out: Path) -> dict:
    """Runs in the datatrove virtualenv; must not import thresher."""
    import logging

    import pyarrow as pa
    import pyarrow.parquet as pq
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.text import TextNormConfig
    logging.disable(logging.WARNING)
    try:
        from loguru import logger
        logger.remove()
    except Exception:
        pass
    work = out / "dt"
    shutil.rmtree(work, ignore_errors=True)
    cfg = MinhashConfig(n_grams=NGRAM, num_buckets=BANDS, hashes_per_bucket=ROWS, seed=SEED,
                        norm_config=TextNormConfig(lowercase=True, norm_whitespace=True,
                                                   remove_punctuation=False,
                                                   norm_unicode_diacritics=False,
                                                   norm_numbers=False))
    collected: list[tuple[str, int]] = []

    def collect(docs, rank: int = 0, world_size: int = 1):
        for d in docs:
            collected.append((d.id, d.metadata.get("minhash_cluster_id", -1)))
            yield d

    reader = ParquetReader(str(data / "corpus"), glob_pattern="*.parquet", text_key="text", id_key="id")
    t0, w0 = _cpu(), time.time()
    kw = dict(workers=1, skip_completed=False)
    LocalPipelineExecutor([reader, MinhashDedupSignature(str(work / "sigs"), config=cfg)],
                          tasks=1, logging_dir=str(work / "log1"), **kw).run()
    LocalPipelineExecutor([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=cfg)],
                          tasks=BANDS, logging_dir=str(work / "log2"), **kw).run()
    LocalPipelineExecutor([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=cfg,
                                               save_cluster_id=True)],
                          tasks=1, logging_dir=str(work / "log3"), **kw).run()
    LocalPipelineExecutor([reader,
                           MinhashDedupFilter(str(work / "remove"), load_cluster_ids=True,
                                              exclusion_writer=JsonlWriter(str(work / "removed"))),
                           collect],
                          tasks=1, logging_dir=str(work / "log4"), **kw).run()
    cpu, wall = _cpu() - t0, time.time() - w0
    # kept docs come from `collect`; removed ones from the exclusion writer
    import gzip
    for f in sorted((work / "removed").glob("*")):
        op = gzip.open if f.suffix == ".gz" else open
        with op(f, "rt") as fh:
            for line in fh:
                d = json.loads(line)
                collected.append((d["id"], d.get("metadata", {}).get("minhash_cluster_id", -1)))
    removed = sum(1 for f in (work / "removed").glob("*") for _ in (gzip.open if f.suffix == ".gz" else open)(f, "rt"))
    ids = [c[0] for c in collected]
    cluster = [f"dt{c[1]}" if c[1] != -1 else c[0] for c in collected]
    pq.write_table(pa.table({"id": ids, "cluster": cluster}), out / "pred.parquet")
    return {"docs": len(ids), "cpu_s": cpu, "wall_s": wall, "peak_rss_mb": _peak_rss_mb(),
            "removed": removed, "version": _version("datatrove")}


def worker_pipeline(data: Path, out: Path, workers: int) -> dict:
    """The whole thresher stage as users run it: Beam pipeline reading the Parquet
    shards, minhash_dedup (defaults: word 5-grams, 14 x 8, exact-Jaccard
    verification, union-find), writing kept/ and rejected/, reconciling counts."""
    import logging

    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq
    logging.getLogger().setLevel(logging.ERROR)
    from thresher.pipelines.api import run
    t0, w0 = _cpu(), time.time()
    res_dir = out / "pipeline"
    shutil.rmtree(res_dir, ignore_errors=True)
    cfg = {"input": {"path": str(data / "corpus"), "id_column": "id"}, "output": str(res_dir),
           "stages": [{"name": "minhash_dedup", "ngram": NGRAM, "num_perm": NUM_PERM, "bands": BANDS,
                       "rows": ROWS, "threshold": THRESHOLD, "seed": SEED, "device": "cpu"}]}
    if workers:      # None: the local runner's own choice (api.local_workers)
        mode = "multi_processing" if workers > 1 else "in_memory"
        cfg["pipeline_options"] = {"direct_num_workers": workers, "direct_running_mode": mode}
    chosen = []
    stats = run(cfg, progress=False, log=chosen.append)
    cpu, wall = _cpu() - t0, time.time() - w0
    assert stats["reconciled"]
    con = duckdb.connect()
    rows = con.execute(f"select id, coalesce(cluster_id, id) from read_parquet(['{res_dir}/kept/*.parquet', "
                       f"'{res_dir}/rejected/*.parquet'])").fetchall()
    pq.write_table(pa.table({"id": [r[0] for r in rows], "cluster": [r[1] for r in rows]}), out / "pred.parquet")
    return {"docs": stats["input_rows"], "cpu_s": cpu, "wall_s": wall, "peak_rss_mb": _peak_rss_mb(),
            "removed": stats["rejected_rows"], "bands": BANDS, "rows": ROWS,
            "workers": workers or next((x for x in chosen if x.startswith("local runner")), "default")}


WORKERS = {"thresher": lambda d, o: worker_thresher(d, o, "default"),
           "thresher-pipeline": lambda d, o: worker_pipeline(d, o, 1),
           "thresher-pipeline-2w": lambda d, o: worker_pipeline(d, o, 2),
           "thresher-pipeline-auto": lambda d, o: worker_pipeline(d, o, None),
           "thresher-jaccard": lambda d, o: worker_thresher(d, o, "jaccard"),
           "thresher-signature": lambda d, o: worker_thresher(d, o, "signature"),
           "thresher-none": lambda d, o: worker_thresher(d, o, "none"),
           "thresher-cuda": lambda d, o: worker_thresher(d, o, "cuda"),
           "datasketch": worker_datasketch,
           "rensa": worker_rensa,
           "datatrove": worker_datatrove}


# ------------------------------------------------------------------------------------------
# orchestrator
# ------------------------------------------------------------------------------------------
def ensure_data(docs: int, root: Path, rebuild: bool) -> Path:
    data = root / f"neardup-{docs}"
    if rebuild or not (data / "truth.parquet").exists() or not (data / "meta.json").exists():
        cmd = [sys.executable, str(HERE / "neardup_data.py"), "--docs", str(docs), "--out", str(data)]
        print("building corpus:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return data


def run_worker(system: str, data: Path, out: Path, python: str, timeout: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [python, str(Path(__file__).resolve()), "--worker", system, "--data", str(data), "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1",
                            "TOKENIZERS_PARALLELISM": "false"})
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout)[-2000:]}
    line = [x for x in p.stdout.splitlines() if x.startswith("{")][-1]
    return json.loads(line)


def score(data: Path, pred_path: Path) -> dict:
    import neardup_data as ND
    import numpy as np
    import pyarrow.parquet as pq
    truth = pq.read_table(data / "truth.parquet")
    pred = pq.read_table(pred_path)
    order = {i: k for k, i in enumerate(truth["id"].to_pylist())}
    idx = np.array([order[i] for i in pred["id"].to_pylist()])
    t_lab = np.unique(np.array(truth["truth_cluster"].to_pylist(), dtype=object), return_inverse=True)[1]
    p_lab = np.unique(np.array(pred["cluster"].to_pylist(), dtype=object), return_inverse=True)[1]
    return ND.pairwise_prf(p_lab, t_lab[idx])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--systems", default="thresher-pipeline,thresher-pipeline-2w,thresher-pipeline-auto,"
                                         "thresher,thresher-signature,thresher-none,"
                                         "datasketch,rensa,datatrove")
    ap.add_argument("--root", default=str(ROOT / "bench-out"))
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--datatrove-python", default="/work/bench-venv/bin/python")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        res = WORKERS[args.worker](Path(args.data), Path(args.out))
        print(json.dumps(res))
        return

    root = Path(args.root)
    data = ensure_data(args.docs, root, args.rebuild)
    meta = json.loads((data / "meta.json").read_text())
    results = {}
    for system in [s.strip() for s in args.systems.split(",") if s.strip()]:
        python = args.datatrove_python if system == "datatrove" else sys.executable
        if system == "datatrove" and not Path(python).exists():
            results[system] = {"error": f"{python} not found"}
            continue
        out = root / "dedup-results" / f"{args.docs}" / system
        print(f"running {system} ...", flush=True)
        r = run_worker(system, data, out, python, args.timeout)
        if "error" not in r:
            r.update(score(data, out / "pred.parquet"))
            r["docs_per_cpu_s"] = r["docs"] / r["cpu_s"]
        results[system] = r
        print(json.dumps({system: r}), flush=True)

    base = results.get("datatrove", {}).get("docs_per_cpu_s")
    print()
    print(f"corpus: {meta['docs']} docs, {meta['chars'] / 1e6:.1f}M chars, truth: "
          f"{meta['truth']['truth_clusters_ge2']} clusters, {meta['truth']['truth_removable']} removable; "
          f"machine: {os.cpu_count()} cores (shared)")
    hdr = f"{'system':18s} {'docs/CPU-s':>11s} {'x datatrove':>11s} {'CPU s':>8s} {'wall s':>8s} {'RSS MB':>8s} {'removed':>8s} {'P':>7s} {'R':>7s} {'F1':>7s}"
    print(hdr)
    print("-" * len(hdr))
    for system, r in results.items():
        if "error" in r:
            print(f"{system:18s} ERROR {r['error'][-300:]}")
            continue
        ratio = f"{r['docs_per_cpu_s'] / base:.1f}" if base else "-"
        print(f"{system:18s} {r['docs_per_cpu_s']:11.0f} {ratio:>11s} {r['cpu_s']:8.1f} {r['wall_s']:8.1f} "
              f"{r['peak_rss_mb']:8.0f} {r['removed']:8d} {r['precision']:7.4f} {r['recall']:7.4f} {r['f1']:7.4f}")
    two = [results.get(k) for k in ("thresher-pipeline", "thresher-pipeline-2w")]
    auto = results.get("thresher-pipeline-auto")
    if auto and all(r and "error" not in r for r in two + [auto]):
        best_cpu, best_wall = min(r["cpu_s"] for r in two), min(r["wall_s"] for r in two)
        print(f"\nworker choice ({auto['workers']}): CPU {auto['cpu_s']:.1f} s = {auto['cpu_s'] / best_cpu:.2f}x "
              f"the best of 1 and 2 workers ({best_cpu:.1f} s); wall {auto['wall_s']:.1f} s = "
              f"{auto['wall_s'] / best_wall:.2f}x the best ({best_wall:.1f} s)")
    for system, r in results.items():
        if system.startswith("thresher") and "phases_cpu_s" in r:
            print(f"\n{system} phases (CPU s): " + ", ".join(f"{k}={v}" for k, v in r["phases_cpu_s"].items()))
            print(f"{system} bytes/doc: " + ", ".join(f"{k}={v:.0f}" for k, v in r["bytes_per_doc"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
