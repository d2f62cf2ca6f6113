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
