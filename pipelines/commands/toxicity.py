"""``thresher toxicity train``."""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Optional

from thresher.scorers.training.toxicity import train_toxicity_classifier


def main_train(argv: Optional[Sequence[str]] = None) -> int:
    """``thresher toxicity train``: fit a toxicity classifier and write card.json."""
    ap = argparse.ArgumentParser(
        prog="thresher toxicity train",
        description="Train a toxicity classifier (fastText or linear) on labelled text and "
                    "write it with card.json (counts, hyper-parameters, held-out metrics).")
    ap.add_argument("--input", required=True, help="Parquet file/directory or CSV/TSV file")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--output", required=True, help="output directory")
    ap.add_argument("--kind", choices=["fasttext", "linear"], default="fasttext")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--positive", default=None,
                    help="comma-separated label values meaning toxic (case-insensitive); "
                         "default: true,1,toxic. Example: --positive hate,offensive")
    ap.add_argument("--max-rows", type=int, default=None, help="train on a seeded sample of N rows")
    ap.add_argument("--threshold", type=float, default=0.5, help="threshold for the held-out metrics")
    ap.add_argument("--epoch", type=int, default=None, help="fastText epochs")
    ap.add_argument("--lr", type=float, default=None, help="fastText learning rate")
    ap.add_argument("--dim", type=int, default=None, help="fastText dimension")
    ap.add_argument("--quantize", action="store_true", help="fastText: write a quantized toxicity.ftz")
    a = ap.parse_args(argv)
    ft = {k: v for k, v in (("epoch", a.epoch), ("lr", a.lr), ("dim", a.dim)) if v is not None}
    positive = [p for p in a.positive.split(",") if p.strip()] if a.positive else None
    try:
        card = train_toxicity_classifier(
            a.input, a.text_column, a.label_column, a.output, kind=a.kind, seed=a.seed,
            test_fraction=a.test_fraction, positive=positive, max_rows=a.max_rows,
            threshold=a.threshold, fasttext_params=ft, quantize=a.quantize)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        print(f"error: {e}")
        return 2
    summary = {k: card[k] for k in ("kind", "model_file", "counts") if k in card}
    summary["heldout"] = card.get("heldout")
    print(json.dumps(summary, indent=2))
    print(f"wrote {os.path.join(a.output, card['model_file'])} and card.json")
    return 0
