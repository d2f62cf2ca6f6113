"""ProX proof on real text: does a refining model trained offline remove planted noise, and
do LMs trained on refined text learn more per token?

    python benchmarks/prox_proof.py                 # ~3 minutes on 2 CPU cores
    python benchmarks/prox_proof.py --quick         # the smallest settings

1. Real documents (English Wikipedia leads, split into one sentence per line, and web pages)
   from ``../shared/corpora``; realistic noise lines (navigation, cookie notices, share and
   subscribe lines, footers, spam, a repeated line) are planted at recorded positions.
2. Train / held-out split. The rule teacher writes (prompt, program) pairs for the train
   split; a tiny Llama is fine-tuned on them (``thresher prox train --tiny``).
3. The held-out split is refined with ``prox_chunk``; line-level precision, recall and F1 of
   the removed lines against the planted lines, for the trained model and for the rule
   teacher itself (an upper bound for what the model can learn from it).
4. Two tiny LMs per seed train for the same token budget on refined and on raw held-out
   text; their loss on clean held-out text (the documents without any planted line, not
   trained on) is reported (mean and spread over seeds).
Prints measured numbers; nothing is assumed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
CORPORA = os.environ.get("THRESHER_CORPORA", os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "corpora"))

NOISE = ["Home | About | Contact | Blog", "Skip to main content", "We use cookies to improve your experience. "
         "Accept all cookies", "Share this: Facebook Twitter LinkedIn", "Subscribe to our newsletter for updates",
         "Copyright 2023 Example Media. All rights reserved.", "Privacy Policy | Terms of Use",
         "Click here to read more", "Follow us on Instagram", "Buy now with free shipping!", "Related posts",
         "Log in | Sign up | My account"]
QUICK = ["--docs", "220", "--clean", "60", "--steps", "150", "--lm-budget", "30000", "--seeds", "1"]


def documents(n: int, clean: int, seed: int):
    rng = random.Random(seed)
    wiki = pq.read_table(os.path.join(CORPORA, "wiki_summaries.parquet"), columns=["id", "text", "lang"])
    wiki = wiki.filter(pc.equal(wiki["lang"], "en"))
    texts = [t for t in wiki["text"].to_pylist() if t and t.count(". ") >= 3]
    rng.shuffle(texts)
    base = ["\n".join(s.strip() + ("" if s.strip().endswith(".") else ".") for s in t.split(". ") if s.strip())
            for t in texts[: n + clean]]
    noisy, truth = [], []
    for t in base[:n]:
        lines = t.split("\n")
        planted = []
        k = rng.randint(1, 3)
        for _ in range(k):
            pos = rng.choice([0, len(lines)]) if rng.random() < 0.7 else rng.randint(0, len(lines))
            lines.insert(pos, rng.choice(NOISE))
        if rng.random() < 0.3 and len(lines) > 3:                  # a repeated sentence
            lines.insert(rng.randint(2, len(lines)), lines[1])
        noise_set = set(NOISE)
        seen = set()
        for i, line in enumerate(lines):
            if line in noise_set or (line in seen and len(line) > 20):
                planted.append(i)
            seen.add(line)
        noisy.append("\n".join(lines))
        truth.append(set(planted))
    return noisy, truth, base[n:n + clean]


def prf(removed: list[set], truth: list[set]) -> dict:
    tp = sum(len(r & t) for r, t in zip(removed, truth))
    fp = sum(len(r - t) for r, t in zip(removed, truth))
    fn = sum(len(t - r) for r, t in zip(removed, truth))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "tp": tp, "fp": fp, "fn": fn}


def lines_of(result) -> set:
    return {i for a, b in result.removed for i in range(a, b + 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=600, help="noisy documents (half train, half held out)")
    ap.add_argument("--clean", type=int, default=150, help="clean held-out documents for the LM loss")
    ap.add_argument("--steps", type=int, default=300, help="refining-model fine-tuning steps")
    ap.add_argument("--hidden", type=int, default=64, help="refining model: hidden size")
    ap.add_argument("--layers", type=int, default=2, help="refining model: layers")
    ap.add_argument("--lm-budget", type=int, default=60000, help="training tokens of each comparison LM")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None, help="write the results here too")
    args = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(args)
    if a.quick:
        a = ap.parse_args(args + QUICK)
    import torch
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from thresher.scorers.refine.program import run_program
    from thresher.scorers.refine.stages import LLAMA2_TEMPLATE, SYSTEM, ProxChunk
    from thresher.scorers.refine.teacher import chunk_pairs
    from thresher.scorers.training import lm as LM
    from thresher.scorers.training.prox import train_refiner

    t_all = time.time()
    noisy, truth, clean = documents(a.docs, a.clean, a.seed)
    half = len(noisy) // 2
    tr_docs, ho_docs, ho_truth = noisy[:half], noisy[half:], truth[half:]
    approx = lambda lines: [max(1, len(x) // 4) for x in lines]  # noqa: E731
    pairs = [p for d in tr_docs for p in chunk_pairs(d, approx, 300)]
    work = tempfile.mkdtemp(prefix="prox-proof-")
    t0 = time.time()
    card = train_refiner(pairs, os.path.join(work, "refiner"), template=LLAMA2_TEMPLATE, system=SYSTEM,
                         steps=a.steps, max_len=512, seed=a.seed, hidden=a.hidden, layers=a.layers)
    train_s = time.time() - t0
    # the rule teacher on the held-out split
    teacher_removed = []
    for d in ho_docs:
        progs = [p for _, p in chunk_pairs(d, approx, 300)]
        teacher_removed.append(lines_of(run_program(d, "\n".join(progs))))
    # the trained model through the stage
    st = ProxChunk(model=os.path.join(work, "refiner"), device="cpu", chunk_tokens=300, max_new_tokens=64)
    t0 = time.time()
    out = st.process(pa.array(ho_docs, pa.string()), None)
    refine_s = time.time() - t0
    programs = out.columns["prox_chunk_program"].to_pylist()
    model_removed = [lines_of(run_program(d, p)) for d, p in zip(ho_docs, programs)]
    refined = [t for t, r in zip(out.text.to_pylist(), out.reasons.to_pylist()) if r is None]
    m_prf, t_prf = prf(model_removed, ho_truth), prf(teacher_removed, ho_truth)
    errors = out.columns["prox_chunk_errors"].to_pylist()
    # equal-token LMs on refined vs raw held-out text, loss on clean held-out text
    tok = LM.train_tokenizer(ho_docs + clean, vocab_size=1024)
    losses = {"refined": [], "raw": []}
    for s in range(a.seeds):
        for name, texts in (("refined", refined), ("raw", ho_docs)):
            m = LM.new_causal_lm(tok, hidden=64, layers=2, heads=4, context=256, seed=100 + s)
            LM.train_causal_lm(m, tok, texts, token_budget=a.lm_budget, seq_len=64, batch_size=8, seed=100 + s)
            losses[name].append(LM.eval_loss(m, tok, clean, seq_len=64))
    res = {"docs": {"train": len(tr_docs), "heldout": len(ho_docs), "clean": len(clean),
                    "planted_lines_heldout": sum(len(t) for t in ho_truth)},
           "refiner": {"pairs": len(pairs), "steps": a.steps, "parameters": card["parameters"],
                       "final_loss": card["final_loss"], "train_s": round(train_s, 1),
                       "refine_docs_per_s": round(len(ho_docs) / refine_s, 1),
                       "programs_with_errors": sum(1 for e in errors if e), "dropped": len(ho_docs) - len(refined)},
           "line_removal": {"model": m_prf, "rule_teacher": t_prf},
           "lm_loss_on_clean": {k: {"mean": statistics.mean(v), "sd": statistics.pstdev(v) if len(v) > 1 else 0.0,
                                    "runs": v} for k, v in losses.items()},
           "lm_budget_tokens": a.lm_budget, "seeds": a.seeds, "seconds": round(time.time() - t_all, 1)}
    print(f"held-out: {len(ho_docs)} noisy documents, {res['docs']['planted_lines_heldout']} planted lines; "
          f"refiner trained on {len(pairs)} pairs in {train_s:.0f}s ({card['parameters'] / 1e6:.2f}M parameters)")
    for k in ("model", "rule_teacher"):
        x = res["line_removal"][k]
        print(f"  {k:<13} precision {x['precision']:.3f}  recall {x['recall']:.3f}  F1 {x['f1']:.3f}  "
              f"(tp {x['tp']}, fp {x['fp']}, fn {x['fn']})")
    for k, v in res["lm_loss_on_clean"].items():
        print(f"  LM trained on {k:<8} text: clean held-out loss {v['mean']:.4f} ± {v['sd']:.4f} "
              f"({a.seeds} seeds, {a.lm_budget:,} tokens each)")
    print(f"total {res['seconds']}s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
