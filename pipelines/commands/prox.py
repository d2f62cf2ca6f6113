"""``thresher prox exec --text FILE --program FILE``: run a refining program on a document.

Prints one JSON object ``{"text": <the refined text, or null when the document is
dropped>, "errors": <error operations>}`` and exits 0 for any program, hostile or not
(the program is data: it is parsed by ``thresher.scorers.refine.program``, never
evaluated). Unreadable files are a usage error (one line, exit 2).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Optional


def _read(path: str, what: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def main_exec(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="thresher prox exec", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--text", required=True, help="file with the document (- = standard input)")
    ap.add_argument("--program", required=True, help="file with the program, one call per line")
    ap.add_argument("--level", choices=("chunk", "doc"), default="chunk",
                    help="chunk: the acceptance rule's word thresholds apply; doc: keep or drop only")
    ap.add_argument("--max-errors", type=int, default=2, help="a program with this many errors is ignored")
    ap.add_argument("--min-words", type=int, default=10, help="drop when this many words or fewer remain")
    ap.add_argument("--min-word-fraction", type=float, default=0.05,
                    help="drop when this fraction of the words or less remains")
    a = ap.parse_args(argv)
    try:
        text = _read(a.text, "text")
        program = _read(a.program, "program")
    except OSError as e:
        sys.stderr.write(f"thresher: error: cannot read {e.filename}: {e.strerror}\n")
        return 2
    from thresher.scorers.refine.program import Limits, run_program
    limits = Limits(max_errors=a.max_errors, min_words=a.min_words, min_word_fraction=a.min_word_fraction)
    r = run_program(text, program, limits, length_rule=a.level == "chunk")
    sys.stdout.write(json.dumps({"text": r.text, "errors": r.errors}, ensure_ascii=False) + "\n")
    return 0


def _pairs_table(rows: list[dict]):
    import pyarrow as pa
    return pa.table({k: [r[k] for r in rows] for k in ("id", "level", "chunk", "user", "program")}) if rows else \
        pa.table({"id": pa.array([], pa.string()), "level": pa.array([], pa.string()),
                  "chunk": pa.array([], pa.int32()), "user": pa.array([], pa.string()),
                  "program": pa.array([], pa.string())})


def main_teach(argv: Optional[Sequence[str]] = None) -> int:
    """``thresher prox teach``: (prompt, program) pairs for training a refining model."""
    ap = argparse.ArgumentParser(prog="thresher prox teach", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description="Write (prompt, program) pairs for a ProX refining model, from the "
                                             "rule-based teacher or from a causal-LM checkpoint prompted to write "
                                             "programs; writes OUTPUT/pairs.parquet (id, level, chunk, user, program).")
    ap.add_argument("--input", required=True, help="Parquet file, directory or glob of documents")
    ap.add_argument("--output", required=True, help="output directory")
    ap.add_argument("--level", choices=("doc", "chunk"), default="chunk")
    ap.add_argument("--teacher", default="rules", help="'rules' or a causal-LM checkpoint directory")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--id-column", default=None, help="default: a column named id, else the row number")
    ap.add_argument("--tokenizer", default=None,
                    help="tokenizer directory for packing chunks (default: the teacher model's; rules: ~4 chars/token)")
    ap.add_argument("--chunk-tokens", type=int, default=1500)
    ap.add_argument("--limit", type=int, default=None, help="at most this many documents")
    a = ap.parse_args(argv)
    import os

    import pyarrow.parquet as pq

    from thresher.pipelines import io
    from thresher.schemas.documents import InputError
    from thresher.scorers.refine import teacher as T
    try:
        files = io.discover(os.path.expanduser(a.input))
    except InputError as e:
        sys.stderr.write(f"thresher: error: {e}\n")
        return 2
    if not files:
        sys.stderr.write(f"thresher: error: no Parquet files under {a.input!r}\n")
        return 2
    count = None
    tok_dir = a.tokenizer or (a.teacher if a.teacher != "rules" else None)
    if tok_dir:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)

        def count(lines):
            return [len(x) for x in tok(lines, add_special_tokens=False)["input_ids"]]
    else:
        def count(lines):
            return [max(1, len(x) // 4) for x in lines]
    programs = None
    if a.teacher != "rules":
        from thresher.scorers.registry import get
        stage = get("prox_doc" if a.level == "doc" else "prox_chunk")(model=a.teacher)

        def programs(users):
            return stage.generate(users)
    rejects = T.heuristic_rejecter() if a.level == "doc" and a.teacher == "rules" else None
    rows: list[dict] = []
    n = 0
    for path in files:
        t = pq.read_table(path)
        if a.text_column not in t.column_names:
            sys.stderr.write(f"thresher: error: {path}: no column {a.text_column!r} (columns: {t.column_names})\n")
            return 2
        idc = a.id_column or ("id" if "id" in t.column_names else None)
        ids = t[idc].cast("string").to_pylist() if idc else [f"{os.path.basename(path)}:{i}" for i in range(t.num_rows)]
        for doc_id, text in zip(ids, t[a.text_column].to_pylist()):
            if a.limit is not None and n >= a.limit:
                break
            if not text or not text.strip():
                continue
            n += 1
            if a.level == "doc":
                prog = programs([text])[0] if programs else T.doc_program(text, rejects)
                rows.append({"id": doc_id, "level": "doc", "chunk": 0, "user": text, "program": prog})
            else:
                for k, (user, prog) in enumerate(T.chunk_pairs(text, count, a.chunk_tokens, programs)):
                    rows.append({"id": doc_id, "level": "chunk", "chunk": k, "user": user, "program": prog})
    os.makedirs(a.output, exist_ok=True)
    pq.write_table(_pairs_table(rows), os.path.join(a.output, "pairs.parquet"))
    kinds = {}
    for r in rows:
        for line in r["program"].splitlines():
            name = line.split("(", 1)[0]
            kinds[name] = kinds.get(name, 0) + 1
    card = {"documents": n, "pairs": len(rows), "level": a.level, "teacher": a.teacher, "calls": kinds}
    with open(os.path.join(a.output, "teach_card.json"), "w") as f:
        json.dump(card, f, indent=2)
    sys.stdout.write(json.dumps(card) + "\n")
    return 0


def main_train(argv: Optional[Sequence[str]] = None) -> int:
    """``thresher prox train``: fine-tune a refining model on teach pairs."""
    ap = argparse.ArgumentParser(prog="thresher prox train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description="Fine-tune a causal LM on (prompt, program) pairs (loss on the program "
                                             "tokens only) and save a checkpoint the prox_* stages load.")
    ap.add_argument("--pairs", required=True, help="directory written by thresher prox teach (or a pairs.parquet)")
    ap.add_argument("--output", required=True, help="checkpoint directory to write")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--base", default=None, help="local causal-LM checkpoint to fine-tune")
    g.add_argument("--tiny", action="store_true", help="a tiny Llama built from a config (the default without --base)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3, help="learning rate (capped at 5e-5 with --base)")
    ap.add_argument("--max-len", type=int, default=512, help="tokens per example (the tiny model's context)")
    ap.add_argument("--hidden", type=int, default=64, help="--tiny: hidden size")
    ap.add_argument("--layers", type=int, default=2, help="--tiny: layers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--template", default="llama2", help="the prompt template the stages will use")
    a = ap.parse_args(argv)
    import os

    import pyarrow.parquet as pq
    path = a.pairs if a.pairs.endswith(".parquet") else os.path.join(a.pairs, "pairs.parquet")
    if not os.path.isfile(path):
        sys.stderr.write(f"thresher: error: {path} does not exist (write it with thresher prox teach)\n")
        return 2
    t = pq.read_table(path, columns=["user", "program"])
    pairs = list(zip(t["user"].to_pylist(), t["program"].to_pylist()))
    if len(pairs) < 8:
        sys.stderr.write(f"thresher: error: {path} holds {len(pairs)} pairs; train on at least 8 (teach more "
                         f"documents)\n")
        return 2
    from thresher.scorers.refine.stages import LLAMA2_TEMPLATE, SYSTEM
    from thresher.scorers.training.prox import train_refiner
    template = LLAMA2_TEMPLATE if a.template == "llama2" else a.template
    card = train_refiner(pairs, a.output, base=a.base, template=template, system=SYSTEM, steps=a.steps,
                         batch_size=a.batch_size, lr=a.lr, max_len=a.max_len, hidden=a.hidden, layers=a.layers,
                         seed=a.seed, log=lambda s: sys.stderr.write(f"thresher: {s}\n"))
    sys.stdout.write(json.dumps(card) + "\n")
    return 0
