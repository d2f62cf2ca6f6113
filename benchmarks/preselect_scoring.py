"""PreSelect scoring throughput: the `preselect` stage's scorer vs calling the same fastText model
directly in a loop over the same texts.

    python benchmarks/preselect_scoring.py [--docs 50000] [--repeats 3]

Trains a small PreSelect-style fastText classifier (labels __label__1/__label__0, epoch 3, lr 0.1,
wordNgrams 2) on real text from ../shared/corpora, then scores the same documents with
  * loop:   model.predict(text.replace("\\n", " "), k=-1) per document, P(__label__1) picked out;
  * stage:  PreSelect.score(text_array) per Arrow batch of 2,000 documents (default engine: native,
            thresher's array implementation of fastText inference; a fresh stage, so an empty
            per-token cache, for every run);
  * pipeline: the whole `preselect` stage through Beam (read, score, global top-10% by characters,
    write kept/rejected), 1 worker, for reference.
Prints docs/s and the ratio stage/loop (target >= 0.9), and checks both give the same probabilities.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPORA = os.path.join(os.path.dirname(ROOT), "shared", "corpora")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    import logging
    logging.getLogger().setLevel(logging.ERROR)
    from thresher.scorers.classifiers import fasttext_util as ftu
    from thresher.scorers.selection.preselect import PreSelect
    from thresher.scorers.training.preselect import FASTTEXT_PARAMS

    texts = []
    for name in ("wiki_summaries", "web_sample", "fortunes", "handbook", "style_paragraphs"):
        texts += pq.read_table(os.path.join(CORPORA, f"{name}.parquet"), columns=["text"])["text"].to_pylist()
    rng = np.random.default_rng(0)
    rng.shuffle(texts)
    texts = texts[: a.docs]
    work = tempfile.mkdtemp(prefix="ps-score-")
    wiki = set(pq.read_table(os.path.join(CORPORA, "wiki_summaries.parquet"), columns=["text"])["text"].to_pylist()[:5000])
    with open(os.path.join(work, "train.txt"), "w") as f:
        for t in texts[:20000]:
            f.write(f"__label__{1 if t in wiki else 0} {t.replace(chr(10), ' ')}\n")
    clf = os.path.join(work, "clf.bin")
    ftu.train_supervised(os.path.join(work, "train.txt"), clf, **FASTTEXT_PARAMS)
    model = ftu.load_model(clf)
    arr = pa.array(texts, pa.string())

    def loop():
        out = np.empty(len(texts), np.float32)
        for i, t in enumerate(texts):
            labels, probs = model.predict(t.replace("\n", " "), k=-1)
            out[i] = dict(zip(labels, probs)).get("__label__1", 0.0)
        return out

    def batched():
        # a fresh stage each run: the native engine's per-token cache starts empty, so every
        # run is a first pass over the documents (a warm second pass would be faster)
        st = PreSelect(model=clf)
        st.setup()
        return np.concatenate([st.score(arr.slice(i, 2000)) for i in range(0, len(arr), 2000)])

    res = {}
    outs = {}
    for name, fn in (("loop", loop), ("stage", batched)) * a.repeats:
        t0 = time.perf_counter()
        outs[name] = fn()
        res.setdefault(name, []).append(time.perf_counter() - t0)
    inp = os.path.join(work, "in")
    os.makedirs(inp)
    cuts = np.linspace(0, len(texts), 5).astype(int)
    for i in range(4):
        pq.write_table(pa.table({"id": [f"d{j}" for j in range(cuts[i], cuts[i + 1])],
                                 "text": texts[cuts[i]:cuts[i + 1]]}), os.path.join(inp, f"p{i}.parquet"))
    from thresher.pipelines.api import run
    t0 = time.perf_counter()
    st = run({"input": inp, "output": os.path.join(work, "out"),
              "stages": [{"name": "preselect", "model": clf}],
              "pipeline_options": {"direct_num_workers": 1}}, progress=False)
    pipe = time.perf_counter() - t0
    n = len(texts)
    lo, sb = statistics.median(res["loop"]), statistics.median(res["stage"])
    print(f"documents: {n:,}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
    print(f"fastText loop (model.predict per doc)   {n / lo:>10,.0f} docs/s   runs {', '.join(f'{x:.2f}' for x in res['loop'])}")
    print(f"preselect scorer (batched)              {n / sb:>10,.0f} docs/s   runs {', '.join(f'{x:.2f}' for x in res['stage'])}")
    print(f"ratio scorer / loop: {lo / sb:.2f}   max |p_loop - p_stage| = {np.abs(outs['loop'] - outs['stage']).max():.2e}")
    print(f"whole stage through Beam (read, score, global top 10% by chars, write): {n / pipe:,.0f} docs/s "
          f"({pipe:.1f} s; kept {st['kept_rows']:,}, selected char fraction "
          f"{st['stages'][1]['global']['selected_char_fraction']:.4f})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
