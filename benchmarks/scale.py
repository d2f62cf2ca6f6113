"""Scale: the default pipeline on growing sample corpora, one fresh `thresher run` per size.

    python benchmarks/scale.py                              # 250k and 1M documents
    python benchmarks/scale.py --sizes 4000000              # the slow size (about an hour here)
    python benchmarks/scale.py --sizes 20000 --json out.json

The corpus of N documents is N / 250,000 chunks of the built-in sample corpus (``thresher
sample``'s generator, chunk i with seed 1000 + i and its ids prefixed ``c<i>-``; each chunk has
its own planted exact and near duplicates, boilerplate, spam and short documents), written once
under ``--root`` as shards of 50,000 documents and reused by every size (the 1M corpus is the
250k corpus plus three chunks). Each size runs ``thresher run --input DIR`` (the default
pipeline, the local runner's own worker choice) in a fresh process, and prints:

* wall time, documents/s, CPU seconds (the run's process tree, from ``getrusage`` of the
  waited children);
* the peak RSS of every process of the run (the kernel's ``VmHWM``, sampled every 0.25 s
  while the process lives), by role: ``launcher`` (the ``thresher`` process, which is also the
  local runner), ``worker`` (Beam's SDK worker processes), ``other``;
* bytes written to ``_work/`` at peak (``stats.json``'s ``work_bytes_peak``), the bytes each
  global stage's shuffle spilled (``shuffle_bytes``: Arrow bytes of the routed tables, measured
  by the transforms' counters; what crosses the runner itself is only references), and the
  output bytes (``kept/`` + ``rejected/``).

Nothing is estimated: every number is read from the run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHUNK = 250_000
SHARD_DOCS = 50_000


def _chunk_dir(root: Path, i: int, docs: int) -> Path:
    return root / "chunks" / f"c{i:03d}-{docs}"


def make_chunk(root: Path, i: int, docs: int) -> Path:
    """Chunk ``i`` of the corpus (``docs`` documents), written once."""
    d = _chunk_dir(root, i, docs)
    if (d / "DONE").exists():
        return d
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from thresher.pipelines.sample import generate
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    t, _ = generate(docs, seed=1000 + i)
    t = t.set_column(t.schema.get_field_index("id"), "id", pc.binary_join_element_wise(f"c{i}-", t["id"], ""))
    for s in range(0, t.num_rows, SHARD_DOCS):
        pq.write_table(t.slice(s, SHARD_DOCS), d / f"c{i:03d}-shard-{s // SHARD_DOCS:03d}.parquet",
                       compression="zstd", row_group_size=5000)
    del pa
    (d / "DONE").write_text("ok")
    return d


def corpus(root: Path, n: int, jobs: int = 2) -> Path:
    """A directory of symlinks to the shards of the first chunks, ``n`` documents in all."""
    sizes = [min(CHUNK, n - c) for c in range(0, n, CHUNK)]
    todo = [(i, s) for i, s in enumerate(sizes) if not (_chunk_dir(root, i, s) / "DONE").exists()]
    if todo:
        print(f"generating {len(todo)} chunk(s) of the sample corpus ({jobs} at a time)", flush=True)
        procs: list[subprocess.Popen] = []
        for i, s in todo:
            procs.append(subprocess.Popen([sys.executable, __file__, "--make-chunk", str(i), str(s),
                                           "--root", str(root)]))
            while sum(p.poll() is None for p in procs) >= jobs:
                time.sleep(0.5)
        for p in procs:
            if p.wait() != 0:
                raise SystemExit("chunk generation failed")
    d = root / f"in-{n}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for i, s in enumerate(sizes):
        for f in sorted(_chunk_dir(root, i, s).glob("*.parquet")):
            os.symlink(f, d / f.name)
    return d


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _role(cmd: list[str]) -> str:
    s = " ".join(cmd)
    if "sdk_worker_main" in s or "worker_pool_main" in s:
        return "worker"
    if "thresher" in s and " run " in f" {s} ":
        return "launcher"
    return "other"


class Sampler(threading.Thread):
    """Peak RSS (VmHWM) of every process in the tree under ``pid``."""

    def __init__(self, pid: int, every: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peaks: dict[int, dict] = {}
        self.stop = threading.Event()

    def run(self):
        import psutil
        root = psutil.Process(self.pid)
        while not self.stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            for p in procs:
                kb = _hwm_kb(p.pid)
                if not kb:
                    continue
                e = self.peaks.get(p.pid)
                if e is None:
                    try:
                        cmd = p.cmdline()
                    except psutil.Error:
                        cmd = []
                    e = self.peaks[p.pid] = {"role": _role(cmd), "peak_mb": 0.0}
                e["peak_mb"] = max(e["peak_mb"], kb / 1024)
            time.sleep(self.every)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(root: Path, n: int, thresher: str) -> dict:
    inp = corpus(root, n)
    out = root / f"out-{n}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [thresher, "run", "--input", str(inp), "--output", str(out)]
    print(f"[{n:,} docs] {' '.join(cmd)}", flush=True)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(p.pid)
    sampler.start()
    log = p.communicate()[0]
    wall = time.time() - t0
    sampler.stop.set()
    sampler.join()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"run failed ({p.returncode}):\n{log[-3000:]}")
    stats = json.loads((out / "stats.json").read_text())
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    procs = sorted(sampler.peaks.values(), key=lambda e: -e["peak_mb"])
    by_role: dict[str, list[float]] = {}
    for e in procs:
        by_role.setdefault(e["role"], []).append(round(e["peak_mb"], 1))
    res = {
        "docs": stats["input_rows"], "shards": stats["shards"], "wall_s": round(wall, 1),
        "docs_per_s": round(stats["input_rows"] / wall, 1), "cpu_s": round(cpu, 1),
        "max_rss_mb": round(procs[0]["peak_mb"], 1) if procs else None, "peak_rss_mb_by_role": by_role,
        "work_bytes_peak": stats.get("work_bytes_peak"), "work_bytes_kept": stats.get("work_bytes_kept"),
        "shuffle_bytes": stats.get("shuffle_bytes"),
        "output_bytes": _du(out / "kept") + _du(out / "rejected"),
        "input_bytes": sum(f.stat().st_size for f in inp.glob("*.parquet")),
        "kept_rows": stats["kept_rows"], "reconciled": stats["reconciled"],
        "stage_seconds": {s["id"]: s["seconds"] for s in stats["stages"]},
        "global_modes": {s["id"]: (s.get("global") or {}).get("mode") or (s.get("global") or {}).get("global_step")
                         or "gather" for s in stats["stages"] if s.get("kind") == "global"},
        "log_tail": [x for x in log.splitlines() if "local runner" in x or "intermediates" in x],
    }
    print(json.dumps(res), flush=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="250000,1000000")
    ap.add_argument("--root", default=str(ROOT / "bench-out" / "scale"))
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--thresher", default=str(Path(sys.executable).with_name("thresher")))
    ap.add_argument("--make-chunk", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    root = Path(args.root)
    if args.make_chunk:
        make_chunk(root, *args.make_chunk)
        return
    sizes = [int(x) for x in args.sizes.split(",")]
    machine = f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    results = {"machine": machine, "sizes": {}}
    for n in sizes:
        results["sizes"][str(n)] = measure(root, n, args.thresher)
    print()
    print(f"machine: {machine}")
    print(f"{'docs':>10} {'wall s':>8} {'docs/s':>8} {'CPU s':>8} {'max RSS MB':>11} {'_work peak MB':>14} "
          f"{'shuffle MB':>11} {'output MB':>10}  peak RSS per process (MB)")
    for n, r in results["sizes"].items():
        sh = sum((r["shuffle_bytes"] or {}).values()) / 1e6
        print(f"{int(n):>10,} {r['wall_s']:>8.1f} {r['docs_per_s']:>8.0f} {r['cpu_s']:>8.1f} {r['max_rss_mb']:>11.0f} "
              f"{(r['work_bytes_peak'] or 0) / 1e6:>14.0f} {sh:>11.0f} {r['output_bytes'] / 1e6:>10.0f}  "
              f"{r['peak_rss_mb_by_role']}")
    if len(sizes) > 1:
        a, b = results["sizes"][str(sizes[0])], results["sizes"][str(sizes[-1])]
        print(f"{sizes[-1]:,} vs {sizes[0]:,}: wall ×{b['wall_s'] / a['wall_s']:.2f} "
              f"(documents ×{sizes[-1] / sizes[0]:.0f}), largest process ×{b['max_rss_mb'] / a['max_rss_mb']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
