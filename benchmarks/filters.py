"""Heuristic filters: thresher vs datatrove on the same real documents.

Runs thresher's ``gopher_quality``, ``gopher_repetition``, ``c4`` and ``fineweb`` stages and
datatrove's ``GopherQualityFilter``, ``GopherRepetitionFilter``, ``C4QualityFilter`` and
``FineWebQualityFilter`` (default settings, English) on the documents of
``/work/shared/corpora/{wiki_summaries,handbook,fortunes,web_sample}.parquet`` and prints,
per filter: documents/s of each, the speed ratio, the decision agreement (keep/reject), and
the disagreements grouped by (thresher reason, datatrove reason, class), where the class
``cjk`` marks documents containing Han/kana characters (thresher splits them one word per
character on purpose; datatrove's English tokenizer keeps runs of them as one word).

datatrove runs in a subprocess (it needs spaCy); its python is ``--datatrove-python``,
by default ``/work/bench-venv/bin/python`` when that exists, else this interpreter. The
two sides run back to back per filter so that they see the same machine load; each side
times only its filter loop (no imports, no I/O).

    python benchmarks/filters.py                 # all documents, all filters
    python benchmarks/filters.py --limit 20000 --filters fineweb,c4
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scorers import heuristics as H  # noqa: E402

CORPORA = "/work/shared/corpora"
FILES = ("wiki_summaries", "handbook", "fortunes", "web_sample")
FILTERS = {
    # thresher stage, datatrove class
    "gopher_quality": (H.GopherQuality, "GopherQualityFilter"),
    "gopher_repetition": (H.GopherRepetition, "GopherRepetitionFilter"),
    "c4": (H.C4, "C4QualityFilter"),
    "fineweb": (H.FineWeb, "FineWebQualityFilter"),
}
CJK_RE = re.compile("[\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

# The datatrove side, run in a subprocess: argv = corpora files..., limit, filter, out.
DATATROVE_SIDE = r'''
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import pyarrow as pa, pyarrow.parquet as pq
from datatrove.data import Document
from datatrove.pipeline import filters as F
*files, limit, name, out = sys.argv[1:]
texts = []
for f in files:
    texts += pq.read_table(f, columns=["text"])["text"].to_pylist()
texts = texts[: int(limit)] if int(limit) else texts
flt = getattr(F, name)()
flt.filter(Document(text="warm up the tokenizer. " * 20, id="w"))
reasons, new_text = [], []
t0 = time.perf_counter()
for i, t in enumerate(texts):
    d = Document(text=t, id=str(i))
    r = flt.filter(d)
    reasons.append(None if r is True else (r[1] if isinstance(r, tuple) else "rejected"))
    new_text.append(d.text)
dt = time.perf_counter() - t0
cols = {"reason": reasons}
if name == "C4QualityFilter":
    cols["text"] = new_text
pq.write_table(pa.table(cols), out)
print(json.dumps({"seconds": dt, "docs": len(texts)}))
'''


def load(limit: int) -> pa.Table:
    tabs = []
    for f in FILES:
        t = pq.read_table(f"{CORPORA}/{f}.parquet", columns=["id", "text"])
        tabs.append(t.append_column("source", pa.array([f] * t.num_rows)))
    t = pa.concat_tables(tabs)
    return t.slice(0, limit) if limit else t


def run_datatrove(python: str, name: str, limit: int, workdir: str) -> tuple[float, pa.Table]:
    out = os.path.join(workdir, f"dt_{name}.parquet")
    files = [f"{CORPORA}/{f}.parquet" for f in FILES]
    res = subprocess.run([python, "-c", DATATROVE_SIDE, *files, str(limit), name, out],
                         capture_output=True, text=True, check=True)
    info = json.loads(res.stdout.strip().splitlines()[-1])
    return info["seconds"], pq.read_table(out)


def run_thresher(stage_cls, text: pa.Array, batch_size: int):
    stage = stage_cls()
    stage.process(text.slice(0, 10), None)  # warm up (regex compilation)
    reasons, texts = [], []
    t0 = time.perf_counter()
    for i in range(0, len(text), batch_size):
        chunk = text.slice(i, batch_size)
        out = stage.process(chunk, None)
        reasons.append(out.reasons)
        texts.append(out.text if out.text is not None else chunk)
    dt = time.perf_counter() - t0
    return dt, pa.concat_arrays(reasons).to_pylist(), pa.concat_arrays(texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=0, help="first N documents (0: all)")
    ap.add_argument("--filters", default=",".join(FILTERS))
    ap.add_argument("--batch-size", type=int, default=5000)
    default_py = "/work/bench-venv/bin/python" if os.path.exists("/work/bench-venv/bin/python") else sys.executable
    ap.add_argument("--datatrove-python", default=default_py)
    ap.add_argument("--examples", type=int, default=3, help="example ids per disagreement class")
    args = ap.parse_args()

    table = load(args.limit)
    text = table.column("text").combine_chunks()
    ids = table.column("id").to_pylist()
    pytexts = text.to_pylist()
    cjk = [bool(CJK_RE.search(t)) for t in pytexts]
    n = len(ids)
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = float("nan")
    print(f"documents: {n} ({sum(len(t) for t in pytexts):,} characters) from {', '.join(FILES)}")
    print(f"machine: {os.cpu_count()} CPUs, load average {load1:.1f} at start; "
          f"thresher batch size {args.batch_size}; datatrove python {args.datatrove_python}\n")

    summary = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.filters.split(","):
            stage_cls, dt_name = FILTERS[name]
            dt_s, dt_tab = run_datatrove(args.datatrove_python, dt_name, args.limit, work)
            th_s, th_reasons, th_text = run_thresher(stage_cls, text, args.batch_size)
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
            print(f"== {name} (datatrove {dt_name})")
            print(f"   thresher {th_rate:10.0f} docs/s ({th_s:6.1f} s)   datatrove {dt_rate:8.0f} docs/s "
                  f"({dt_s:6.1f} s)   ratio {th_rate / dt_rate:5.1f}x")
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
            for (a, b, c), v in classes.most_common():
                print(f"   {v:6d}  thresher={a}  datatrove={b}  class={c}  e.g. {', '.join(examples[(a, b, c)])}")
            summary.append((name, th_rate, dt_rate, 100 * agree / n, 100 * (n - non_cjk) / n))
            print(flush=True)

    print("| filter | thresher docs/s | datatrove docs/s | ratio | agreement | agreement outside cjk |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, a, b, ag, ag2 in summary:
        print(f"| {name} | {a:,.0f} | {b:,.0f} | {a / b:.1f}x | {ag:.3f}% | {ag2:.3f}% |")


if __name__ == "__main__":
    main()
