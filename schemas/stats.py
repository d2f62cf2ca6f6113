"""Formats of per-shard manifests and of ``stats.json``.

A shard manifest (``_manifests/<shard>.json``) is written last, after the
shard's kept and rejected files have been renamed into place; its presence with
a matching fingerprint is what lets a rerun skip the shard.

``stats.json`` aggregates the manifests::

    {"version": 1, "config_fingerprint": ..., "input_rows": N, "kept_rows": K,
     "rejected_rows": R, "reconciled": true, "stages": [ {"id", "name", "docs_in",
     "kept", "rejected", "chars_in", "chars_rejected", "seconds", "reasons":
     {reason: {"docs", "chars"}}} ... ], "shards": {...}, "wall_seconds": ...,
     "work_bytes_peak": B, "work_bytes_kept": b}

``work_bytes_peak`` is the most bytes ``_work/`` held during the run (each manifest's
``work_bytes``, what its shard's steps wrote there, summed; or what was on disk before the
cleanup if more); ``work_bytes_kept`` is what is left under ``_work/`` after it (0 unless
``output.keep_work``).
"""
from __future__ import annotations

from typing import Any

MANIFEST_VERSION = 1
STATS_VERSION = 1

MANIFEST_DIR = "_manifests"
WORK_DIR = "_work"
KEPT_DIR = "kept"
REJECTED_DIR = "rejected"
RUN_FILE = "_run.json"
STATS_FILE = "stats.json"
GLOBAL_DIR = "_global"
LOG_DIR = "_logs"


def empty_manifest(shard: str, input_path: str, fingerprint: str) -> dict[str, Any]:
    return {
        "version": MANIFEST_VERSION,
        "shard": shard,
        "input_path": input_path,
        "fingerprint": fingerprint,
        "rows_in": 0,
        "chars_in": 0,
        "kept": 0,
        "rejected": 0,
        "kept_chars_out": 0,
        "reasons": {},          # reason -> {"docs": n, "chars": c}   (chars = input chars)
        "stage_seconds": {},    # stage id -> seconds spent in this shard
        "stage_docs_in": {},    # stage id -> docs the stage processed in this shard
        "files": {},            # "kept"/"rejected" -> relative path
        "work_bytes": 0,        # bytes this shard's steps wrote under _work/ (work rows, key files)
        "seconds": 0.0,
    }


def add_reason(manifest: dict[str, Any], reason: str, docs: int, chars: int) -> None:
    r = manifest["reasons"].setdefault(reason, {"docs": 0, "chars": 0})
    r["docs"] += int(docs)
    r["chars"] += int(chars)
