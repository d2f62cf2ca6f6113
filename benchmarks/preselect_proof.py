"""PreSelect's proof on real data (issue 6).

Does a PreSelect classifier, trained from the losses of a few tiny LMs whose
"downstream score" is their loss on a target domain, (a) score documents of
the target domain above off-domain documents, and (b) pick a training subset
on which a fresh tiny LM reaches a lower target loss than on a random subset
of the same size and token budget?

Setup (all from ../shared/corpora, nothing downloaded):

* target domain: English Wikipedia summaries (``wiki_summaries``, lang en).
  Two disjoint held-out sets are drawn from it: ``target-dev`` gives the
  scoring LMs their downstream score, ``target-test`` evaluates the final LMs.
  Neither is in the pool.
* pool: the remaining English wiki docs (``--wiki-pool``) mixed with several
  times as many off-domain documents (fortunes in all five languages,
  web_sample, Debian handbook en-US pages, style_paragraphs), shuffled and
  written as uneven Parquet shards with a ``source`` column.
* a byte-level BPE tokenizer trained on the pool;
* ``--lms`` tiny Llama LMs of clearly different strength (sizes and step
  counts); downstream score = −(mean token loss on target-dev). With
  ``--lm-data shared`` (default) they all train on the same random half of the
  pool, so they differ only in size and steps; with ``--lm-data mixtures`` each
  trains on its own random per-source mixture (Dirichlet(1), blind to the
  target), like model families trained on different data (the paper's six
  scorers are Llama-1 and Llama-2 checkpoints, 7B to 65B);
* ``thresher preselect train`` (``thresher.pipelines.commands.preselect.train``) on a
  ``--preselect-sample`` document sample of the pool;
* the whole pool scored and selected by the thresher pipeline with the
  ``preselect`` stage (top 20% of characters); AUC of ``preselect_score`` for
  wiki vs off-domain documents (Mann–Whitney, average ranks for ties);
* two fresh tiny LMs with identical config, seed and token budget, one on the
  PreSelect top 20% by characters, one on a random 20% by characters (seeded),
  both evaluated on target-test; repeated over ``--seeds`` seeds (the seed sets
  the LM initialisation, the batch order and the random selection).

    python benchmarks/preselect_proof.py                     # defaults, a few minutes on 2 cores
    python benchmarks/preselect_proof.py --seeds 5 --final-budget 600000 --out bench-out/
    python benchmarks/preselect_proof.py --quick             # the smallest settings (used by the test)

Prints a compact report and writes it as JSON to ``--out``/preselect_proof.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CORPORA = os.path.join(os.path.dirname(ROOT), "shared", "corpora")
TARGET = "wiki"

QUICK = ["--wiki-pool", "300", "--target-dev", "40", "--target-test", "60", "--fortunes", "600",
         "--style", "200", "--web", "40", "--handbook", "10", "--vocab", "512", "--lms", "16x1@2,32x1@10,32x1@40",
         "--lm-batch", "4", "--seq-len", "32", "--context", "128", "--preselect-sample", "400",
         "--final-model", "32x1", "--final-budget", "20000", "--seeds", "1",
         "--preselect-min-labels", "10", "--preselect-validation", "0"]


# --------------------------------------------------------------------------- helpers
def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` for ``positive`` vs the rest (rank statistic, ties averaged)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n1 = int(positive.sum())
    n0 = positive.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    _, inv, cnt = np.unique(scores, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(cnt) - (cnt - 1) / 2.0          # 1-based average rank of each distinct value
    r = avg_rank[inv]
    return float((r[positive].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def parse_model(spec: str) -> tuple[int, int]:
    """'64x2' -> (hidden 64, layers 2)."""
    h, _, l = spec.partition("x")
    return int(h), int(l or 1)


def parse_lms(spec: str) -> list[dict]:
    """'32x1@30,64x2@80' -> [{hidden, layers, steps}, ...]."""
    out = []
    for part in spec.split(","):
        arch, _, steps = part.strip().partition("@")
        h, l = parse_model(arch)
        out.append({"hidden": h, "layers": l, "steps": int(steps)})
    return out


def _heads(hidden: int) -> int:
    return 4 if hidden % 4 == 0 and hidden >= 16 else 1


def _read(name: str, columns: list[str]) -> pa.Table:
    return pq.read_table(os.path.join(CORPORA, name), columns=columns)


def _take_random(t: pa.Table, n: int, rng: np.random.Generator) -> pa.Table:
    n = min(n, t.num_rows)
    return t.take(pa.array(np.sort(rng.choice(t.num_rows, n, replace=False))))


# --------------------------------------------------------------------------- data
def build_pool(a, pool_dir: str) -> dict[str, Any]:
    """Target sets and the mixed pool (written as uneven shards)."""
    rng = np.random.default_rng(a.data_seed)
    wiki = _read("wiki_summaries.parquet", ["id", "lang", "text"])
    wiki = wiki.filter(pc.equal(wiki["lang"], "en"))
    need = a.target_dev + a.target_test + a.wiki_pool
    if need > wiki.num_rows:
        raise ValueError(f"asked for {need} English wiki docs, only {wiki.num_rows} exist")
    perm = rng.permutation(wiki.num_rows)
    wtext = wiki["text"].to_pylist()
    wid = wiki["id"].to_pylist()
    dev = [wtext[i] for i in perm[:a.target_dev]]
    test = [wtext[i] for i in perm[a.target_dev:a.target_dev + a.target_test]]
    pool_idx = perm[a.target_dev + a.target_test: need]

    parts = [pa.table({"id": [wid[i] for i in pool_idx], "text": [wtext[i] for i in pool_idx],
                       "source": ["wiki"] * len(pool_idx)})]

    def add(name: str, source: str, n: int, flt=None):
        t = _read(name, ["id", "text"] + ([flt[0]] if flt else []))
        if flt:
            t = t.filter(pc.equal(t[flt[0]], flt[1]))
        t = _take_random(t, n, rng)
        parts.append(pa.table({"id": t["id"], "text": t["text"], "source": [source] * t.num_rows}))

    add("fortunes.parquet", "fortunes", a.fortunes)
    add("web_sample.parquet", "web", a.web)
    add("handbook.parquet", "handbook", a.handbook, ("locale", "en-US"))
    add("style_paragraphs.parquet", "style", a.style)
    pool = pa.concat_tables(parts)
    pool = pool.filter(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(pool["text"])), 0))
    pool = pool.take(pa.array(rng.permutation(pool.num_rows)))

    # uneven shards: 4%, 51%, 5%, 40% of the rows
    os.makedirs(pool_dir, exist_ok=True)
    n = pool.num_rows
    cuts = [0, int(0.04 * n), int(0.55 * n), int(0.60 * n), n]
    for k in range(4):
        pq.write_table(pool.slice(cuts[k], cuts[k + 1] - cuts[k]), os.path.join(pool_dir, f"part-{k}.parquet"))
    chars = np.asarray(pc.utf8_length(pool["text"]).to_numpy(zero_copy_only=False), dtype=np.int64)
    src = np.asarray(pool["source"].to_pylist())
    comp = {s: {"docs": int((src == s).sum()), "chars": int(chars[src == s].sum())} for s in sorted(set(src))}
    return {"pool": pool, "chars": chars, "source": src, "dev": dev, "test": test,
            "composition": comp, "shard_rows": [cuts[k + 1] - cuts[k] for k in range(4)]}


# --------------------------------------------------------------------------- LMs
def lm_training_sets(a, pool: pa.Table, chars: np.ndarray, source: np.ndarray, n_models: int) -> list[dict]:
    """Training texts of each scoring LM.

    ``shared``: every LM trains on the same random ``--lm-train-frac`` of the pool
    (they differ only in size and steps). ``mixtures``: each LM trains on its own
    sample of the same number of characters, drawn with random per-source
    character shares (Dirichlet(1) over the pool's sources, seeded per model,
    blind to which source is the target), like model families trained on
    different data; docs are drawn with replacement within a source."""
    rng = np.random.default_rng(a.data_seed + 1)
    texts = pool["text"].to_pylist()
    n = len(texts)
    if a.lm_data == "shared":
        idx = np.sort(rng.choice(n, max(1, int(round(a.lm_train_frac * n))), replace=False))
        return [{"texts": [texts[i] for i in idx], "mixture": None}] * n_models
    sources = sorted(set(source.tolist()))
    budget = a.lm_train_frac * float(chars.sum())
    out = []
    for i in range(n_models):
        r = np.random.default_rng([a.data_seed, 17, i])
        w = r.dirichlet(np.ones(len(sources)))
        picked: list[int] = []
        for s_, ws in zip(sources, w):
            members = np.flatnonzero(source == s_)
            want = ws * budget
            got = 0.0
            while got < want and members.size:
                draw = r.permutation(members)
                cum = np.cumsum(chars[draw])
                k = int(np.searchsorted(cum, want - got, side="left")) + 1
                take = draw[:min(k, draw.size)]
                picked.extend(take.tolist())
                got += float(chars[take].sum())
        picked_arr = r.permutation(np.asarray(picked, dtype=np.int64))
        out.append({"texts": [texts[j] for j in picked_arr],
                    "mixture": {s_: round(float(x), 4) for s_, x in zip(sources, w)}})
    return out


def train_scoring_lms(a, tok, pool: pa.Table, chars: np.ndarray, source: np.ndarray, dev: list[str], work: str,
                      log) -> list[dict]:
    from thresher.scorers.training import lm as lmtrain

    specs = parse_lms(a.lms)
    sets = lm_training_sets(a, pool, chars, source, len(specs))
    out = []
    for i, (spec, data) in enumerate(zip(specs, sets)):
        t0 = time.time()
        m = lmtrain.new_causal_lm(tok, hidden=spec["hidden"], layers=spec["layers"], heads=_heads(spec["hidden"]),
                                  context=a.context, seed=100 + i)
        info = lmtrain.train_causal_lm(m, tok, data["texts"], steps=spec["steps"], seq_len=a.seq_len,
                                       batch_size=a.lm_batch, lr=a.lr, seed=100 + i)
        loss = lmtrain.eval_loss(m, tok, dev, seq_len=a.seq_len)
        name = f"lm{i}-h{spec['hidden']}x{spec['layers']}-s{spec['steps']}"
        path = lmtrain.save(m, tok, os.path.join(work, "lms", name))
        params = int(sum(p.numel() for p in m.parameters()))
        out.append({"name": name, "path": path, "score": -loss, "target_dev_loss": loss, "params": params,
                    "steps": spec["steps"], "train_tokens": info["tokens"], "mixture": data["mixture"],
                    "seconds": round(time.time() - t0, 2)})
        mix = ("" if data["mixture"] is None else
               " mixture " + " ".join(f"{k}:{v:.2f}" for k, v in data["mixture"].items()))
        log(f"  {name}: {params:,} params, {info['tokens']:,} tokens, target-dev loss {loss:.4f}{mix} "
            f"({out[-1]['seconds']:.1f}s)")
        del m
    scores = [m["score"] for m in out]
    if len(set(scores)) < 2:
        raise RuntimeError("the scoring LMs all have the same target loss: no strength ordering")
    return out


def train_and_eval(a, tok, texts: list[str], test: list[str], seed: int) -> dict:
    from thresher.scorers.training import lm as lmtrain

    h, l = parse_model(a.final_model)
    m = lmtrain.new_causal_lm(tok, hidden=h, layers=l, heads=_heads(h), context=a.context, seed=seed)
    info = lmtrain.train_causal_lm(m, tok, texts, token_budget=a.final_budget, seq_len=a.seq_len,
                                   batch_size=a.lm_batch, lr=a.lr, seed=seed)
    loss = lmtrain.eval_loss(m, tok, test, seq_len=a.seq_len)
    return {"target_test_loss": loss, "train_tokens": info["tokens"], "stream_tokens": info["stream_tokens"],
            "epochs": info["tokens"] / max(1, info["stream_tokens"])}


# --------------------------------------------------------------------------- main
def _read_scored(out_dir: str) -> pa.Table:
    tables = []
    for sub in ("kept", "rejected"):
        for f in sorted(glob.glob(os.path.join(out_dir, sub, "*.parquet"))):
            t = pq.read_table(f, columns=["id", "source", "preselect_score"])
            tables.append(t.append_column("kept", pa.array([sub == "kept"] * t.num_rows)))
    return pa.concat_tables(tables)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default=None, help="directory for preselect_proof.json (default: print only)")
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one, removed)")
    ap.add_argument("--preselect-min-labels", type=int, default=50,
                    help="PreSelect training refuses fewer labels per class than this")
    ap.add_argument("--preselect-validation", type=float, default=0.1, help="PreSelect validation fraction")
    ap.add_argument("--quick", action="store_true", help="the smallest settings (overrides the size flags)")
    g = ap.add_argument_group("data")
    g.add_argument("--wiki-pool", type=int, default=3000, help="English wiki docs in the pool")
    g.add_argument("--target-dev", type=int, default=200, help="held-out wiki docs for the LMs' downstream score")
    g.add_argument("--target-test", type=int, default=300, help="held-out wiki docs for the final evaluation")
    g.add_argument("--fortunes", type=int, default=8000)
    g.add_argument("--web", type=int, default=700)
    g.add_argument("--handbook", type=int, default=127, help="handbook en-US pages")
    g.add_argument("--style", type=int, default=3000)
    g.add_argument("--data-seed", type=int, default=0)
    g = ap.add_argument_group("models")
    g.add_argument("--vocab", type=int, default=1024)
    g.add_argument("--lms", default="32x1@150,64x1@400,64x2@1000",
                   help="scoring LMs: HIDDENxLAYERS@STEPS, comma-separated (>= 3 recommended)")
    g.add_argument("--lm-data", choices=("shared", "mixtures"), default="mixtures",
                   help="scoring LMs train on one shared pool sample, or each on its own random source mixture")
    g.add_argument("--lm-train-frac", type=float, default=0.5,
                   help="pool fraction (of docs for shared, of chars for mixtures) the scoring LMs train on")
    g.add_argument("--seq-len", type=int, default=64)
    g.add_argument("--context", type=int, default=256)
    g.add_argument("--lm-batch", type=int, default=4)
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    g = ap.add_argument_group("preselect")
    g.add_argument("--preselect-sample", type=int, default=3000)
    g.add_argument("--top-fraction", type=float, default=0.2, help="fraction of pool characters selected")
    g = ap.add_argument_group("final comparison")
    g.add_argument("--final-model", default="64x2", help="HIDDENxLAYERS of the two final LMs")
    g.add_argument("--final-budget", type=int, default=307200, help="training tokens of each final LM")
    g.add_argument("--seeds", type=int, default=3)
    return ap


def main(argv: Optional[list[str]] = None, log=print) -> dict:
    ap = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(argv)
    if a.quick:
        a = ap.parse_args(argv + QUICK)
    import torch
    torch.set_num_threads(max(1, a.threads))
    from thresher.pipelines.api import run
    from thresher.pipelines.commands.preselect import train
    from thresher.scorers.selection.select import top_fraction
    from thresher.scorers.training import lm as lmtrain

    work = a.work or tempfile.mkdtemp(prefix="preselect-proof-")
    for sub in ("pool", "lms", "preselect", "scored"):   # a reused --work starts clean
        shutil.rmtree(os.path.join(work, sub), ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    secs: dict[str, float] = {}
    t_all = time.time()
    try:
        t0 = time.time()
        d = build_pool(a, os.path.join(work, "pool"))
        pool, chars, source = d["pool"], d["chars"], d["source"]
        in_domain = source == TARGET
        secs["pool"] = time.time() - t0
        log(f"pool: {pool.num_rows:,} docs, {int(chars.sum()):,} chars in shards of {d['shard_rows']} rows; "
            f"target-dev {len(d['dev'])}, target-test {len(d['test'])} wiki docs")

        t0 = time.time()
        tok = lmtrain.train_tokenizer(pool["text"].to_pylist(), vocab_size=a.vocab, model_max_length=a.context)
        secs["tokenizer"] = time.time() - t0

        t0 = time.time()
        log("scoring LMs (downstream score = -target-dev loss):")
        lms = train_scoring_lms(a, tok, pool, chars, source, d["dev"], work, log)
        secs["scoring_lms"] = time.time() - t0

        t0 = time.time()
        ps_dir = os.path.join(work, "preselect")
        card = train({"input": os.path.join(work, "pool"), "output": ps_dir,
                      "sample": {"size": a.preselect_sample, "seed": a.data_seed},
                      "min_labels_per_class": a.preselect_min_labels,
                      "validation_fraction": a.preselect_validation,
                      "models": [{"path": m["path"], "score": m["score"], "name": m["name"]} for m in lms],
                      "scoring": {"device": "cpu", "max_length": a.context}}, log=lambda s: None)
        secs["preselect_train"] = time.time() - t0
        labels = pq.read_table(os.path.join(ps_dir, "labels.parquet"), columns=["id", "label", "strength"])
        src_of = dict(zip(pool["id"].to_pylist(), source.tolist()))
        lab = np.asarray(labels["label"].to_pylist())
        lab_src = np.asarray([src_of[i] for i in labels["id"].to_pylist()])
        label_wiki = {"positives": float((lab_src[lab == 1] == TARGET).mean()) if (lab == 1).any() else None,
                      "negatives": float((lab_src[lab == 0] == TARGET).mean()) if (lab == 0).any() else None,
                      "sample": float((lab_src == TARGET).mean())}

        t0 = time.time()
        out_dir = os.path.join(work, "scored")
        stats = run({"input": os.path.join(work, "pool"), "output": out_dir,
                     "stages": [{"name": "preselect", "model": os.path.join(ps_dir, "classifier.bin"),
                                 "top_fraction_chars": a.top_fraction}],
                     "pipeline_options": {"direct_num_workers": 1}}, progress=False)
        secs["pipeline_scoring"] = time.time() - t0
        g = json.load(open(os.path.join(out_dir, "_global", "preselect.json")))
        scored = _read_scored(out_dir)
        pos_of = {i: k for k, i in enumerate(pool["id"].to_pylist())}
        order = np.asarray([pos_of[i] for i in scored["id"].to_pylist()])
        score = np.full(pool.num_rows, np.nan)
        score[order] = np.asarray(scored["preselect_score"].to_pylist(), dtype=np.float64)
        kept = np.zeros(pool.num_rows, dtype=bool)
        kept[order] = np.asarray(scored["kept"].to_pylist())
        if np.isnan(score).any():
            raise RuntimeError(f"{int(np.isnan(score).sum())} pool docs came back without a preselect_score")
        the_auc = auc(score, in_domain)
        per_source = {s: {"mean_score": float(score[source == s].mean()),
                          "auc_wiki_vs_this": auc(score[(source == s) | in_domain],
                                                  in_domain[(source == s) | in_domain]) if s != TARGET else None,
                          "selected_chars": int(chars[kept & (source == s)].sum())}
                      for s in sorted(set(source.tolist()))}

        t0 = time.time()
        texts = pool["text"].to_pylist()
        sel_ps = [texts[i] for i in np.flatnonzero(kept)]
        runs = []
        for k in range(a.seeds):
            seed = 1000 + k
            rnd = np.random.default_rng(seed)
            mask, _ = top_fraction(rnd.random(pool.num_rows), chars.astype(np.float64),
                                   np.arange(pool.num_rows, dtype=np.uint64), a.top_fraction)
            sel_rnd = [texts[i] for i in np.flatnonzero(mask)]
            r_ps = train_and_eval(a, tok, sel_ps, d["test"], seed)
            r_rnd = train_and_eval(a, tok, sel_rnd, d["test"], seed)
            runs.append({"seed": seed, "preselect": r_ps, "random": r_rnd,
                         "random_selected_char_fraction": float(chars[mask].sum() / chars.sum()),
                         "random_wiki_char_share": float(chars[mask & in_domain].sum() / chars[mask].sum())})
            log(f"  seed {seed}: target-test loss preselect {r_ps['target_test_loss']:.4f}, "
                f"random {r_rnd['target_test_loss']:.4f}")
        secs["final_lms"] = time.time() - t0
        secs["total"] = time.time() - t_all

        lp = np.array([r["preselect"]["target_test_loss"] for r in runs])
        lr_ = np.array([r["random"]["target_test_loss"] for r in runs])
        diff = lr_ - lp

        def summary(x: np.ndarray) -> dict:
            return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
                    "min": float(x.min()), "max": float(x.max())}

        report = {
            "machine": {"nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch.__version__},
            "args": vars(a),
            "pool": {"docs": pool.num_rows, "chars": int(chars.sum()), "shard_rows": d["shard_rows"],
                     "composition": d["composition"],
                     "wiki_char_share": float(chars[in_domain].sum() / chars.sum()),
                     "target_dev_docs": len(d["dev"]), "target_test_docs": len(d["test"])},
            "tokenizer_vocab": len(tok),
            "scoring_lms": [{k: v for k, v in m.items() if k != "path"} for m in lms],
            "preselect_train": {"sampled_docs": card["sampled_docs"], "labels": card["labels"],
                                "validation_accuracy": card["validation_accuracy"],
                                "train_docs": card["train_docs"], "validation_docs": card["validation_docs"],
                                "strength_histogram": card["strength_histogram"],
                                "ordered_model_pairs": card["ordered_model_pairs"],
                                "mean_bpc": {m["name"]: m["mean_bpc"] for m in card["models"]},
                                "wiki_share": label_wiki},
            "scoring": {"auc_wiki_vs_off_domain": the_auc, "per_source": per_source,
                        "score_min": float(score.min()), "score_max": float(score.max()),
                        "score_std": float(score.std()),
                        "selected_docs": g["selected_docs"], "selected_chars": g["selected_chars"],
                        "selected_char_fraction": g["selected_char_fraction"], "threshold": g["threshold"],
                        "selected_wiki_char_share": float(chars[kept & in_domain].sum() / chars[kept].sum()),
                        "pipeline_kept_rows": stats.get("kept_rows")},
            "final": {"model": a.final_model, "token_budget": a.final_budget, "runs": runs,
                      "preselect_loss": summary(lp), "random_loss": summary(lr_),
                      "random_minus_preselect": summary(diff),
                      "preselect_better_in": int((diff > 0).sum()), "seeds": a.seeds},
            "seconds": {k: round(v, 1) for k, v in secs.items()},
        }
        log(format_report(report))
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            with open(os.path.join(a.out, "preselect_proof.json"), "w") as f:
                json.dump(report, f, indent=2, sort_keys=True, default=float)
        return report
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _f(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def format_report(r: dict) -> str:
    p, s, f, t = r["pool"], r["scoring"], r["final"], r["preselect_train"]
    L = [f"== PreSelect proof (nproc {r['machine']['nproc']}, torch threads {r['machine']['torch_threads']}) ==",
         f"pool: {p['docs']:,} docs, {p['chars']:,} chars, wiki share of chars {p['wiki_char_share']:.3f}; "
         + ", ".join(f"{k} {v['docs']}" for k, v in p["composition"].items()),
         f"scoring LMs (data: {r['args']['lm_data']}; downstream score = -loss on target-dev):"]
    for m in r["scoring_lms"]:
        L.append(f"  {m['name']:<22} {m['params']:>9,} params  {m['train_tokens']:>9,} tokens  "
                 f"target-dev loss {m['target_dev_loss']:.4f}"
                 + ("" if not m.get("mixture") else
                    "  mix " + " ".join(f"{k}:{v:.2f}" for k, v in m["mixture"].items())))
    lab = t["labels"]
    L.append(f"preselect train: {t['sampled_docs']} docs sampled; labels {lab['positives']} pos / "
             f"{lab['negatives']} neg ({lab['positives_available']} with strength "
             f"{lab['positive_strength']:.3g}); validation accuracy "
             + ("n/a" if t["validation_accuracy"] is None else f"{t['validation_accuracy']:.3f}")
             + f" on {t['validation_docs']} docs")
    ws = t["wiki_share"]
    L.append(f"  wiki share: sample {ws['sample']:.3f}, positives {_f(ws['positives'])}, "
             f"negatives {_f(ws['negatives'])}; strength histogram (concordant pairs: docs) "
             f"{t['strength_histogram']}")
    L.append(f"AUC of preselect_score, wiki vs off-domain: {s['auc_wiki_vs_off_domain']:.4f}  "
             f"(scores in [{s['score_min']:.6f}, {s['score_max']:.6f}], std {s['score_std']:.2g})")
    L.append("  per source (mean score / AUC wiki-vs-source): " + ", ".join(
        f"{k} {v['mean_score']:.4f}" + (f"/{v['auc_wiki_vs_this']:.3f}" if v["auc_wiki_vs_this"] is not None else "")
        for k, v in s["per_source"].items()))
    L.append(f"selection: {s['selected_docs']:,} docs, char fraction {s['selected_char_fraction']:.4f}, "
             f"wiki share of selected chars {s['selected_wiki_char_share']:.3f}")
    L.append(f"final LMs ({f['model']}, {f['token_budget']:,} tokens each, {f['seeds']} seed(s)), "
             f"target-test loss:")
    for run_ in f["runs"]:
        L.append(f"  seed {run_['seed']}: preselect top-20% {run_['preselect']['target_test_loss']:.4f}  "
                 f"random 20% {run_['random']['target_test_loss']:.4f}  "
                 f"(random wiki share {run_['random_wiki_char_share']:.3f})")
    pl, rl, dd = f["preselect_loss"], f["random_loss"], f["random_minus_preselect"]
    L.append(f"  preselect {pl['mean']:.4f} ± {pl['std']:.4f}   random {rl['mean']:.4f} ± {rl['std']:.4f}   "
             f"random - preselect {dd['mean']:+.4f} ± {dd['std']:.4f} (preselect lower in "
             f"{f['preselect_better_in']}/{f['seeds']})")
    L.append("seconds: " + ", ".join(f"{k} {v}" for k, v in r["seconds"].items()))
    return "\n".join(L)


def _quiet() -> None:
    """Silence the progress bars and tokenizer length warnings of transformers (script use only)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    _quiet()
    main()
