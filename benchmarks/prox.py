"""ProX throughput: the program executor, and generation through the engine against a plain
hand-written HF ``generate`` loop at its best static batch size.

    python benchmarks/prox.py                      # CPU, a small random Llama, real documents
    python benchmarks/prox.py --device cuda --size llama-0.4b --docs 2048 --max-new 64

* **executor**: the rule teacher's programs (remove_lines / normalize / skip_chunk, the
  realistic mix) applied to real multi-line documents from ``../shared/corpora``
  (web_sample, wiki_summaries, handbook): documents/s and MB/s.
* **generation**: the same model, dtype, device and prompts (real documents cut to
  ``--prompt-tokens``), greedy, ``--max-new`` new tokens: the engine's ``generate`` task
  with ``batching: static`` and ``continuous`` against ``model.generate`` over fixed
  batches (left-padded, the batch size swept, the best kept). Prints documents/s, new
  tokens/s and whether the outputs are identical. Numbers are measured, never assumed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
CORPORA = os.environ.get("THRESHER_CORPORA", os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "corpora"))


def _bench(name):
    spec = importlib.util.spec_from_file_location(f"thresher_bench_{name}_prox", os.path.join(HERE, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def real_docs(n: int) -> list[str]:
    out = []
    for name in ("web_sample", "wiki_summaries", "handbook"):
        t = pq.read_table(os.path.join(CORPORA, name + ".parquet"), columns=["text"])["text"].to_pylist()
        out += [d for d in t if d and d.count("\n") >= 2] if name != "wiki_summaries" else [
            d.replace(". ", ".\n") for d in t if d]
    return out[:n]


def bench_executor(docs: list[str], rounds: int) -> dict:
    from thresher.scorers.refine.program import run_program
    from thresher.scorers.refine.stages import number_lines, pack_chunks
    from thresher.scorers.refine.teacher import chunk_programs
    progs = []
    for d in docs:
        lines = number_lines(d)
        chunks = pack_chunks(lines, [max(1, len(x) // 4) for x in lines], 1500)
        progs.append("\n".join(chunk_programs(d, chunks)))
    calls = sum(p.count("\n") + 1 for p in progs)
    best = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        for d, p in zip(docs, progs):
            run_program(d, p)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    return {"docs": len(docs), "calls": calls, "seconds": best, "docs_per_s": len(docs) / best, "mb_per_s": mb / best}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--exec-docs", type=int, default=20000)
    ap.add_argument("--size", default="tiny", help="model size from benchmarks/model_scorers.py SIZES")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--batch-sizes", default="8,32,64")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    ex = bench_executor(real_docs(a.exec_docs), a.rounds)
    print(f"executor: {ex['docs']:,} real documents, {ex['calls']:,} calls: {ex['docs_per_s']:,.0f} docs/s "
          f"({ex['mb_per_s']:.1f} MB/s, best of {a.rounds})")

    B = _bench("model_scorers")
    docs = real_docs(a.docs)
    tok = B.train_bpe_tokenizer(docs[:2000], vocab_size=4000, max_length=4096)
    model = B.build_causal_lm(tok, a.size, max_positions=a.prompt_tokens + a.max_new + 64, device=a.device)
    d = os.path.join("/tmp", f"thresher-prox-bench-{os.getpid()}")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    from thresher.scorers.models import build_task
    # prompts: each document cut to --prompt-tokens tokens (varied lengths below that)
    cut = []
    for doc in docs:
        ids = tok(doc, add_special_tokens=False)["input_ids"][: a.prompt_tokens]
        cut.append(tok.decode(ids))
    res = {}
    outs = {}
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    for mode in ("static", "continuous"):
        task = build_task("generate", d, device=a.device, dtype=a.dtype, max_new_tokens=a.max_new, template="none",
                          batching=mode)
        task(cut[:4])                                   # warm-up
        t0 = time.perf_counter()
        outs[mode] = task(cut)["generated"].to_pylist()
        res[mode] = time.perf_counter() - t0
    hf = build_task("generate", d, device=a.device, dtype=a.dtype, max_new_tokens=a.max_new, template="none").lm
    best_bs, best_t, best_out = None, None, None
    for bs in [int(x) for x in a.batch_sizes.split(",")]:
        B.loop_generate(hf.model, hf.tokenizer, cut[:bs], bs, a.max_new, dev, dtype, hf.tokenizer.pad_token_id)
        t0 = time.perf_counter()
        o, _, _ = B.loop_generate(hf.model, hf.tokenizer, cut, bs, a.max_new, dev, dtype, hf.tokenizer.pad_token_id)
        dt = time.perf_counter() - t0
        if best_t is None or dt < best_t:
            best_bs, best_t, best_out = bs, dt, o
    n = len(cut)
    new_tokens = {k: sum(len(hf.tokenizer(x, add_special_tokens=False)["input_ids"]) for x in v) for k, v in outs.items()}
    print(f"generation: {n} real documents cut to {a.prompt_tokens} tokens, {a.max_new} new tokens, model "
          f"{a.size} ({sum(p.numel() for p in hf.model.parameters()) / 1e6:.1f}M), {a.device} {a.dtype}")
    print(f"  plain HF generate loop, best batch {best_bs}: {n / best_t:8.1f} docs/s")
    for k in ("static", "continuous"):
        same = sum(x == y for x, y in zip(outs[k], best_out))
        print(f"  engine, batching {k:<10}: {n / res[k]:8.1f} docs/s  {new_tokens[k] / res[k]:9.1f} new tokens/s  "
              f"{n / res[k] / (n / best_t):.2f}x the loop  identical outputs {same}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
