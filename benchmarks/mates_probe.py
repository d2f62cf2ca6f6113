"""Cost of one MATES probe: thresher's prober (checkpoint loaded once, in-place restore from
on-device snapshots) against the authors' way (reload the checkpoint and its optimizer state
from disk for every probe), on the same checkpoint, candidates and reference set.

    python benchmarks/mates_probe.py                          # a ~10M-parameter Llama, CPU
    python benchmarks/mates_probe.py --hidden 768 --layers 12 # ~0.1B
    python benchmarks/mates_probe.py --device cuda            # on a GPU

Both paths must give the same post-step reference loss for every candidate (checked). Prints
seconds per probe for each and their ratio; nothing is assumed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
CORPORA = os.environ.get("THRESHER_CORPORA", os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "corpora"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--ref-docs", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)

    import torch
    torch.set_num_threads(a.threads)
    from thresher.scorers.models.engine import Engine
    from thresher.scorers.models.loading import load_model
    from thresher.scorers.training import mates as MT
    from thresher.scorers.training.pretrain import Pretrainer

    wiki = pq.read_table(os.path.join(CORPORA, "wiki_summaries.parquet"), columns=["text", "lang"])
    texts = wiki.filter(pc.equal(wiki["lang"], "en"))["text"].to_pylist()
    tmp = tempfile.mkdtemp(prefix="mates-probe-")
    t0 = time.perf_counter()
    tr = Pretrainer.new(texts[:3000], vocab_size=a.vocab, hidden=a.hidden, layers=a.layers, heads=a.heads,
                        context=a.context, seq_len=min(256, a.context), batch_size=4, total_steps=100,
                        warmup_steps=2, device=a.device)
    tr.train(texts[:200], 3)                      # AdamW moments and a step count to restore
    ck = tr.save(os.path.join(tmp, "ckpt"))
    nparams = sum(p.numel() for p in tr.model.parameters())
    del tr
    print(f"checkpoint: Llama {nparams / 1e6:.1f}M parameters (hidden {a.hidden}, {a.layers} layers, vocab "
          f"{a.vocab}), with optimizer.pt; built in {time.perf_counter() - t0:.1f} s", flush=True)
    ref_tab = pa.table({"text": texts[5000:5000 + a.ref_docs]})
    cands = texts[6000:6000 + a.probes]
    eng = Engine(device=a.device, dtype="fp32", cast_weights=False)

    # thresher: load once, restore in place
    t0 = time.perf_counter()
    lm = load_model(ck, weights_dtype="fp32")
    opt, _ = MT.load_optimizer(lm.model, ck)
    ref = MT.reference_set(ref_tab, lm.tokenizer, a.context)
    pr = MT.Prober(lm.model, lm.tokenizer, opt, ref, eng, max_length=a.context)
    setup_s = time.perf_counter() - t0
    pr.probe(cands[:1])                           # warm-up
    t0 = time.perf_counter()
    ours = pr.probe(cands)
    ours_s = (time.perf_counter() - t0) / a.probes

    # the authors' way: reload checkpoint and optimizer for every probe
    reload_vals = []
    t0 = time.perf_counter()
    for c in cands:
        lm2 = load_model(ck, weights_dtype="fp32")
        lm2.model.to(eng.device).train(False)
        opt2, _ = MT.load_optimizer(lm2.model, ck)
        seq = pr.encode([c])[0]                  # the same tokens (the tokenizer is the same)
        x = torch.tensor([seq], device=eng.device)
        lm2.model(input_ids=x, labels=x, use_cache=False).loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt2.param_groups for p in g["params"]], MT.CLIP_NORM)
        opt2.step()
        reload_vals.append(MT.ReferenceEvaluator(lm2.model, lm2.tokenizer, ref, eng)())
        del lm2, opt2
    reload_s = (time.perf_counter() - t0) / a.probes
    same = np.array_equal(np.asarray(reload_vals), ours.ref_loss)
    print(f"reference: {ref.examples} docs, {ref.scored_tokens:,} scored tokens; {a.probes} probes on {eng.device}")
    print(f"thresher prober (load once, in-place restore): {ours_s:.3f} s/probe ({1 / ours_s:.2f} probes/s), "
          f"one-time setup {setup_s:.2f} s")
    print(f"reload per probe (the authors' way):           {reload_s:.3f} s/probe ({1 / reload_s:.2f} probes/s)")
    print(f"speed-up {reload_s / ours_s:.2f}x; identical oracle values: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
