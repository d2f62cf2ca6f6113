"""Bundle what the GPU run (benchmarks/effect/gpu.yaml) reads into bench-out/gpu-bundle/.

Run here after ``thresher experiment benchmarks/effect/default.yaml`` and ``.../selection.yaml``:
copies the pool and eval sets and writes each model-free arm's kept documents (id, text) from those
runs as one Parquet file, so the GPU machine trains on exactly the selections measured on CPU and
needs no Beam or fastText. Prints the bundle's size (the device call carries at most 64 MiB).
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ARMS = {  # arm in gpu.yaml: the CPU run whose kept output it is
    "default": "bench-out/effect/default/arms/default/run/kept",
    "preselect": "bench-out/effect/selection/arms/preselect/run/kept",
    "default_preselect": "bench-out/effect/selection/arms/default_preselect/run/kept",
}
DATA = ["pool/pool.parquet", "eval/wiki_en.parquet", "eval/wiki_other.parquet"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="bench-out/effect/data")
    ap.add_argument("--out", default="bench-out/gpu-bundle")
    a = ap.parse_args(argv)
    missing = [p for p in [os.path.join(a.data, d) for d in DATA] if not os.path.exists(p)]
    missing += [d for d in ARMS.values() if not glob.glob(os.path.join(d, "*.parquet"))]
    if missing:
        print(f"gpu_bundle: missing {missing[0]} (run build_pool.py, default.yaml and selection.yaml first)",
              file=sys.stderr)
        return 2
    shutil.rmtree(a.out, ignore_errors=True)
    for d in DATA:
        os.makedirs(os.path.dirname(os.path.join(a.out, "data", d)), exist_ok=True)
        shutil.copyfile(os.path.join(a.data, d), os.path.join(a.out, "data", d))
    os.makedirs(os.path.join(a.out, "kept"))
    for arm, d in ARMS.items():
        files = sorted(glob.glob(os.path.join(d, "*.parquet")))
        t = pa.concat_tables([pq.read_table(f, columns=["id", "text"]) for f in files])
        pq.write_table(t, os.path.join(a.out, "kept", f"{arm}.parquet"), compression="zstd")
        print(f"{arm}: {t.num_rows:,} documents, {pc.sum(pc.utf8_length(t['text'])).as_py():,} chars")
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(a.out) for f in fs)
    print(f"{a.out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
