"""Python API, mirroring the config.

    from thresher.pipelines.api import run
    stats = run({"input": {"path": "data/*.parquet"}, "output": "out/",
                 "stages": [{"name": "exact_dedup"}, {"name": "gopher_quality"}]})
    stats["kept_rows"], stats["stages"][0]["rejected"]

To compose thresher into your own Beam pipeline use
``thresher.pipelines.transforms.CurateShards(plan(config))`` or ``ApplyStages``.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Optional, Union

import pyarrow.parquet as pq

from thresher.pipelines import engine as E
from thresher.pipelines import io
from thresher.schemas import stats as S
from thresher.schemas.config import Config, ConfigError, load_config_file, parse_config
from thresher.schemas.documents import InputError

LOCAL_RUNNERS = {"DirectRunner", "FnApiRunner", "direct", "local"}


class ReconciliationError(RuntimeError):
    """kept + rejected rows do not add up to the input rows."""


def load(config: Union[str, dict, Config], **overrides: Any) -> Config:
    """Config from a YAML path, a dict or a Config, with ``input``/``output`` overrides."""
    if isinstance(config, Config):
        raw = config.to_dict()
    elif isinstance(config, str):
        raw = load_config_file(config)
    elif config is None:
        raw = {}
    else:
        raw = dict(config)
    for key in ("input", "output"):
        val = overrides.pop(key, None)
        if val is not None:
            cur = raw.get(key)
            if isinstance(cur, dict):
                cur = dict(cur)
                cur["path"] = val
                raw[key] = cur
            else:
                raw[key] = val
    for key, val in overrides.items():
        if val is not None:
            raw[key] = val
    return parse_config(raw)


def plan(config: Union[str, dict, Config], **overrides: Any) -> E.Plan:
    """Validate the config and every shard's footer; no document is read yet."""
    cfg = load(config, **overrides)
    from thresher.pipelines.registry import build_stages, check_columns
    stages = build_stages(cfg.stages)        # parameter errors name the config key
    check_columns(stages)                    # one stage twice needs distinct ids (distinct columns)
    if cfg.input.id_column is None and io.first_schema_has(cfg.input.path, "id"):
        cfg.input.id_column = "id"          # an input column named "id" is the id
    shards = io.describe_shards(cfg.input.path, cfg.input.text_column, cfg.input.id_column,
                                exclude=cfg.output.path)
    return E.Plan(cfg.to_dict(), shards, cfg.fingerprint())


#: below this many input rows the local runner uses one in-process worker: starting
#: Beam's worker processes costs ~3.5 s here, more than the work itself.
MULTIPROCESS_MIN_ROWS = 50_000


def pipeline_options(cfg: Config, extra_args: Optional[list[str]] = None, total_rows: Optional[int] = None):
    from apache_beam.options.pipeline_options import PipelineOptions

    opts: dict[str, Any] = dict(cfg.pipeline_options)
    runner = cfg.runner
    if runner in LOCAL_RUNNERS:
        # Beam's DirectRunner tries to download Prism first; pin the Python runner.
        runner = "FnApiRunner"
        small = total_rows is not None and total_rows < MULTIPROCESS_MIN_ROWS
        opts.setdefault("direct_num_workers", 1 if small else max(1, min(os.cpu_count() or 1, 8)))
        opts.setdefault("direct_running_mode",
                        "multi_processing" if opts["direct_num_workers"] > 1 else "in_memory")
        opts.setdefault("default_sdk_harness_log_level", "WARNING")
    args = [f"--runner={runner}"]
    for k, v in opts.items():
        if isinstance(v, bool):
            if v:
                args.append(f"--{k}")
        else:
            args.append(f"--{k}={v}")
    args.extend(extra_args or [])
    return PipelineOptions(args)


class Progress:
    """Polls the manifests directory: shards done of total, documents per second."""

    def __init__(self, p: E.Plan, stream=sys.stderr, interval: float = 1.0, enabled: bool = True):
        self.p, self.stream, self.interval, self.enabled = p, stream, interval, enabled
        self._stop = threading.Event()
        self.t0 = time.time()
        self._last = None

    def _poll(self) -> tuple[int, int]:
        names = {s.name for s in self.p.shards}
        done = rows = 0
        for path in io.list_dir(io.join(self.p.out, S.MANIFEST_DIR), ".json"):
            name = os.path.basename(path)[:-5]
            if name in names:
                m = io.read_json(path) or {}
                if m.get("fingerprint", "").startswith(self.p.fingerprint):
                    done += 1
                    rows += int(m.get("rows_in", 0))
        return done, rows

    def _print(self, final: bool = False) -> None:
        try:
            done, rows = self._poll()
        except Exception:
            return
        state = (done, rows)
        if state == self._last and not final:
            return
        self._last = state
        dt = max(time.time() - self.t0, 1e-6)
        self.stream.write(f"[thresher] shards {done}/{len(self.p.shards)} · {rows:,} docs · "
                          f"{rows / dt:,.0f} docs/s · {dt:.1f}s\n")
        self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._print()

    def __enter__(self):
        if self.enabled and not io.is_remote(self.p.out):
            self.th = threading.Thread(target=self._loop, daemon=True)
            self.th.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.enabled and not io.is_remote(self.p.out):
            self.th.join(timeout=2)


def _check_output_dir(p: E.Plan, cfg: Config) -> None:
    out = p.out
    io.makedirs(out)
    run_file = io.join(out, S.RUN_FILE)
    prev = io.read_json(run_file)
    if prev and prev.get("fingerprint") != p.fingerprint:
        if not cfg.output.overwrite:
            raise ConfigError("output.path", f"{out} holds the output of a run with a different config or input "
                                             f"(fingerprint {prev.get('fingerprint')} != {p.fingerprint}); "
                                             f"choose another directory or set output.overwrite: true (--overwrite)")
        for d in (S.KEPT_DIR, S.REJECTED_DIR, S.MANIFEST_DIR, S.WORK_DIR, S.GLOBAL_DIR, S.STATS_FILE):
            io.remove(io.join(out, d))
    io.write_json(run_file, {"fingerprint": p.fingerprint, "config": p.config,
                             "shards": [s.path for s in p.shards]})


def aggregate(p: E.Plan, wall_seconds: float) -> dict[str, Any]:
    """Build stats.json from the manifests and reconcile with the files on disk."""
    cfg = p.cfg
    from thresher.pipelines.registry import build_stages
    stages = build_stages(cfg.stages)
    manifests = []
    for s in p.shards:
        m = io.read_json(E.manifest_path(p.out, s))
        if m is None:
            raise ReconciliationError(f"shard {s.path} has no manifest: the run did not finish it")
        manifests.append(m)
    input_rows = sum(s.num_rows for s in p.shards)
    reasons: dict[str, dict[str, int]] = {}
    stage_seconds: dict[str, float] = {}
    engine_stats: dict[str, dict[str, float]] = {}
    for m in manifests:
        for r, v in m["reasons"].items():
            acc = reasons.setdefault(r, {"docs": 0, "chars": 0})
            acc["docs"] += v["docs"]
            acc["chars"] += v["chars"]
        for sid, sec in m.get("stage_seconds", {}).items():
            stage_seconds[sid] = stage_seconds.get(sid, 0.0) + float(sec)
        for sid, counters in m.get("stage_stats", {}).items():
            acc_s = engine_stats.setdefault(sid, {})
            for name, v in counters.items():
                acc_s[name] = acc_s.get(name, 0) + v
    chars_in = sum(int(m["chars_in"]) for m in manifests)
    # files on disk: the ground truth for reconciliation
    kept_rows = rej_rows = 0
    for s in p.shards:
        for d in (S.KEPT_DIR, S.REJECTED_DIR):
            path = io.join(p.out, d, s.name + ".parquet")
            with io.open_read(path) as f:
                n = pq.ParquetFile(f).metadata.num_rows
            if d == S.KEPT_DIR:
                kept_rows += n
            else:
                rej_rows += n
    stage_rows = []
    docs_in, ch_in = input_rows, chars_in

    def take(prefix: str):
        rs = {r: v for r, v in sorted(reasons.items()) if r.split(".", 1)[0] == prefix}
        return rs, sum(v["docs"] for v in rs.values()), sum(v["chars"] for v in rs.values())

    in_reasons, in_rej, in_chars = take("input")
    stage_rows.append({"id": "input", "name": "input", "docs_in": docs_in, "rejected": in_rej,
                       "kept": docs_in - in_rej, "chars_in": ch_in, "chars_rejected": in_chars,
                       "seconds": round(stage_seconds.get("input", 0.0), 4), "reasons": in_reasons})
    docs_in -= in_rej
    ch_in -= in_chars
    for st in stages:
        rs, rej, rch = take(st.id)
        sec = stage_seconds.get(st.id, 0.0)
        g = io.read_json(io.join(p.out, S.GLOBAL_DIR, f"{st.id}.json")) if st.kind == "global" else None
        row = {"id": st.id, "name": st.name, "kind": st.kind, "docs_in": docs_in, "rejected": rej,
               "kept": docs_in - rej, "chars_in": ch_in, "chars_rejected": rch,
               "seconds": round(sec + (g or {}).get("seconds", 0.0), 4), "reasons": rs}
        if g:
            row["global"] = {k: v for k, v in g.items() if k not in ("stage", "fingerprint")}
        if st.id in engine_stats:
            e = dict(engine_stats[st.id])
            padded = e.get("padded_tokens")
            e["padding_waste"] = round(1 - e["processed_tokens"] / padded, 4) if padded else 0.0
            e["docs_per_s"] = round(e["docs"] / e["wall_s"], 1) if e.get("wall_s") else None
            e["tokens_per_s"] = round(e["doc_tokens"] / e["wall_s"], 1) if e.get("wall_s") else None
            row["engine"] = e
        stage_rows.append(row)
        docs_in -= rej
        ch_in -= rch
    total_rej = sum(v["docs"] for v in reasons.values())
    manifest_kept = sum(int(m["kept"]) for m in manifests)
    reconciled = (kept_rows + rej_rows == input_rows and manifest_kept == kept_rows
                  and total_rej == rej_rows)
    return {
        "version": S.STATS_VERSION,
        "config_fingerprint": p.fingerprint,
        "config": p.config,
        "shards": len(p.shards),
        "input_rows": input_rows,
        "kept_rows": kept_rows,
        "rejected_rows": rej_rows,
        "input_chars": chars_in,
        "kept_chars": sum(int(m["kept_chars_out"]) for m in manifests),
        "reconciled": reconciled,
        "wall_seconds": round(wall_seconds, 3),
        "docs_per_second": round(input_rows / wall_seconds, 1) if wall_seconds > 0 else None,
        "stages": stage_rows,
    }


def run(config: Union[str, dict, Config, None] = None, *, beam_args: Optional[list[str]] = None,
        progress: bool = True, log: Callable[[str], None] = lambda s: None, **overrides: Any) -> dict:
    """Run a thresher job; returns the stats dict (also written to ``stats.json``).

    Raises ConfigError / InputError before any work for user mistakes, and
    ReconciliationError when kept + rejected != input rows.
    """
    import apache_beam as beam

    from thresher.pipelines.transforms import CurateShards

    t0 = time.time()
    p = plan(config, **overrides)
    cfg = p.cfg
    _check_output_dir(p, cfg)
    done = all(E.is_done(E.manifest_path(p.out, s), E.shard_fingerprint(p, s)) for s in p.shards)
    if done:
        log(f"all {len(p.shards)} shards already complete in {p.out}; nothing to do")
    else:
        opts = pipeline_options(cfg, beam_args, total_rows=sum(s.num_rows for s in p.shards))
        with Progress(p, enabled=progress):
            with beam.Pipeline(options=opts) as bp:
                _ = bp | "Thresher" >> CurateShards(p)
    wall = time.time() - t0
    stats = aggregate(p, wall)
    prev = io.read_json(io.join(p.out, S.STATS_FILE))
    if done and prev and prev.get("config_fingerprint") == p.fingerprint:
        stats["wall_seconds"] = prev.get("wall_seconds", stats["wall_seconds"])
        stats["docs_per_second"] = prev.get("docs_per_second", stats["docs_per_second"])
    io.write_json(io.join(p.out, S.STATS_FILE), stats)
    if not cfg.output.keep_work:
        # document rows are no longer needed; the small global keys stay for cheap reruns
        for f in io.list_dir(io.join(p.out, S.WORK_DIR), ".rows.parquet"):
            io.remove(f)
    if not stats["reconciled"]:
        raise ReconciliationError(
            f"row counts do not reconcile: input {stats['input_rows']} != kept {stats['kept_rows']} + "
            f"rejected {stats['rejected_rows']} (see {io.join(p.out, S.STATS_FILE)})")
    return stats


__all__ = ["run", "plan", "load", "aggregate", "ReconciliationError", "ConfigError", "InputError"]
