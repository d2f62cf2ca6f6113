"""What each arm of a ``thresher experiment`` output kept, by the pool's ``source`` column.

    python benchmarks/effect/composition.py bench-out/effect/selection [--pool bench-out/effect/data/pool/pool.parquet]

Per arm: the share of kept characters (and documents) from each source of the pool. ``random`` is the pool
without its held-out slice; a ``stages`` arm its run's ``kept/``; a ``mates`` arm the union of its stage
selections, averaged over seeds; a ``selection`` arm its files. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from collections import Counter

import pyarrow.parquet as pq


def _ids(files: list[str]) -> list[str]:
    return [i for f in files for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]


def arm_kept(out: str, name: str, arm: dict) -> list[list[str]]:
    """The kept ids of an arm: one list per seed for a mates arm, else one list."""
    if arm["kind"] == "random":
        return [_ids([os.path.join(out, "pool", "train.parquet")])]
    if arm["kind"] == "stages":
        return [_ids(sorted(glob.glob(os.path.join(out, "arms", name, "run", "kept", "*.parquet"))))]
    if arm["kind"] == "selection":
        return [_ids(sorted(glob.glob(arm["selection"])))]
    seeds = sorted(glob.glob(os.path.join(out, "arms", name, "seed-*")))
    return [_ids(sorted(glob.glob(os.path.join(s, "stage-*", "select", "kept", "*.parquet")))) for s in seeds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output", help="the experiment's output directory")
    ap.add_argument("--pool", default="bench-out/effect/data/pool/pool.parquet")
    a = ap.parse_args()
    pool = pq.read_table(a.pool, columns=["id", "source", "text"])
    src = dict(zip(pool["id"].to_pylist(), pool["source"].to_pylist()))
    chars = {i: len(t) for i, t in zip(pool["id"].to_pylist(), pool["text"].to_pylist())}
    sources = sorted(set(src.values()))
    with open(os.path.join(a.output, "results.json")) as f:
        res = json.load(f)
    print("| arm | docs | chars | " + " | ".join(sources) + " |")
    print("|---|---:|---:|" + "---:|" * len(sources))
    for name, arm in res["config"]["arms"].items():
        per_seed = [ids for ids in arm_kept(a.output, name, arm) if ids]
        if not per_seed:
            continue
        c_chars, c_docs, n_docs, n_chars = Counter(), Counter(), 0, 0
        for ids in per_seed:
            for i in ids:
                c_chars[src[i]] += chars[i]
                c_docs[src[i]] += 1
            n_docs += len(ids)
            n_chars += sum(chars[i] for i in ids)
        k = len(per_seed)
        cells = [f"{100 * c_chars[s] / n_chars:.0f}% ({c_docs[s] / k:,.0f})" for s in sources]
        print(f"| {name} | {n_docs / k:,.0f} | {n_chars / k:,.0f} | " + " | ".join(cells) + " |")
    print("\ncells: share of the arm's kept characters from the source (kept documents from it); mates arms: "
          "mean over seeds of the union of their stage selections")


if __name__ == "__main__":
    main()
