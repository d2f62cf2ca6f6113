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
from thresher.schemas import columns as C
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
    check_runner(cfg.runner)
    shards = io.describe_shards(cfg.input.path, cfg.input.text_column, cfg.input.id_column,
                                exclude=cfg.output.path)
    preflight(cfg, stages, shards)
    return E.Plan(cfg.to_dict(), shards, run_fingerprint(cfg, shards))


def run_identity(cfg: Config, shards: list) -> dict[str, Any]:
    """What makes two runs the same run: every config value that changes outputs, and the
    input's identity (each shard's path relative to the input root, size and footer digest)."""
    d = cfg.to_dict()
    return {"config": {"input": {k: v for k, v in d["input"].items() if k != "path"},
                       "output": {"compression": d["output"]["compression"]}, "stages": d["stages"]},
            "shards": [{"rel": s.rel, "size": s.size, "fingerprint": s.fingerprint} for s in shards]}


def run_fingerprint(cfg: Config, shards: list) -> str:
    import hashlib
    import json
    blob = json.dumps(run_identity(cfg, shards), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def check_runner(runner: str) -> None:
    """A runner name Beam knows (or a dotted class path); else a config error with a hint."""
    if runner in LOCAL_RUNNERS or "." in runner:
        return
    from apache_beam.runners.runner import _RUNNER_MAP
    known = {name.lower(): name for name in list(_RUNNER_MAP) + list(LOCAL_RUNNERS)}
    for canonical in ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner",
                      "PrismRunner", "FnApiRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner",
                      "InteractiveRunner", "TestDataflowRunner", "TestDirectRunner"):
        known[canonical.lower()] = canonical
    if runner.lower() in known or runner.lower() + "runner" in known:
        return
    from thresher.schemas.config import did_you_mean
    raise ConfigError("runner", f"unknown Beam runner {runner!r}{did_you_mean(runner, sorted(set(known.values())))}; "
                                f"known: {', '.join(sorted(set(known.values())))}")


def preflight(cfg: Config, stages: list, shards: list) -> None:
    """Every check a stage can make before any document is read: against the input
    schema, the columns earlier stages declare, its model files, the device."""
    import pyarrow.parquet as pq_

    from thresher.scorers.base import ParamError, PreflightContext
    with io.open_read(shards[0].path) as f:
        schema = pq_.ParquetFile(f).schema_arrow
    cols = set(schema.names) | {cfg.input.id_column or C.ID}
    local = cfg.runner in LOCAL_RUNNERS or cfg.runner in ("FnApiRunner", "SwitchingDirectRunner",
                                                          "BundleBasedDirectRunner")
    for k, st in enumerate(stages):
        ctx = PreflightContext(input_schema=schema, columns=frozenset(cols), text_column=cfg.input.text_column,
                               local=local)
        try:
            st.preflight(ctx)
        except ParamError as e:
            raise ConfigError(f"stages[{k}].{e.key}", e.message) from None
        cols |= {f.name for f in st.fields()}


#: the local runner starts worker processes only when the local stages' estimated CPU work
#: is above this many seconds: starting Beam's workers costs ~3.5 s here and every batch
#: crosses gRPC to them, so below it one in-process worker is as fast and spends less CPU
MULTIPROCESS_MIN_WORK_S = 15.0
#: the engine's own per-byte cost (read, UTF-8 check, ids, write), on top of the stages'
ENGINE_NS_PER_BYTE = 25.0


def text_bytes(p: E.Plan) -> int:
    """Uncompressed bytes of the text column over all shards, from the Parquet footers
    (metadata only; falls back to the file size where a footer cannot be read)."""
    import pyarrow.parquet as pq
    col = p.cfg.input.text_column
    total = 0
    for s in p.shards:
        try:
            with io.open_read(s.path) as f:
                md = pq.ParquetFile(f).metadata
            names = [md.schema.column(i).path for i in range(md.num_columns)]
            j = names.index(col)
            total += sum(md.row_group(r).column(j).total_uncompressed_size for r in range(md.num_row_groups))
        except Exception:  # noqa: BLE001 - an estimate only
            total += int(s.size)
    return total


def local_work(p: E.Plan) -> dict:
    """The local stages' estimated CPU seconds on one core: text bytes × (the engine's cost +
    every stage's ``cpu_ns_per_byte``). Global steps are left out (they do not spread over
    the local workers)."""
    from thresher.pipelines.registry import build_stages
    nb = text_bytes(p)
    per_byte = ENGINE_NS_PER_BYTE + sum(float(getattr(st, "cpu_ns_per_byte", 50.0))
                                        for st in build_stages(p.cfg.stages))
    return {"text_bytes": nb, "ns_per_byte": per_byte, "seconds": nb * per_byte * 1e-9}


def local_workers(p: E.Plan, work: Optional[dict] = None) -> int:
    """Worker processes for a local run: one while the estimated work is below
    :data:`MULTIPROCESS_MIN_WORK_S`, else one per core (at most 8 and at most one per shard)."""
    if (work or local_work(p))["seconds"] < MULTIPROCESS_MIN_WORK_S:
        return 1
    return max(1, min(os.cpu_count() or 1, 8, len(p.shards)))


def shuffle_bytes(result) -> Optional[dict]:
    """Bytes each global stage spilled for its shuffle (Arrow bytes of the routed tables, by
    counter: ``<stage id>`` for the step's own shuffles, ``decisions/<stage id>`` for its
    decision tables), from the run's Beam metrics; None where the runner reports none."""
    try:
        from apache_beam.metrics.metric import MetricsFilter
        got = result.metrics().query(MetricsFilter().with_namespace("thresher.shuffle"))["counters"]
    except Exception:  # noqa: BLE001 - a runner without metrics
        return None
    out: dict[str, int] = {}
    for c in got:
        v = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(v or 0)
    return dict(sorted(out.items()))


def pipeline_options(cfg: Config, extra_args: Optional[list[str]] = None, workers: Optional[int] = None):
    """Beam options of a run. ``workers``: the local runner's worker processes when the config
    does not set ``direct_num_workers`` (see :func:`local_workers`; default 1)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    opts: dict[str, Any] = dict(cfg.pipeline_options)
    runner = cfg.runner
    if runner in LOCAL_RUNNERS:
        # Beam's DirectRunner tries to download Prism first; pin the Python runner.
        runner = "FnApiRunner"
        opts.setdefault("direct_num_workers", workers or 1)
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
    """Live progress of a local run, by phase, from the files the workers write (so it
    works with any local runner and worker count): the manifests of the step that
    extracts global keys (``_work/<shard>.p1.json``), each global step's
    ``_global/<id>.json``, and the shard manifests (``_manifests/``). Documents per second
    and the time left, as a ``tqdm`` bar on a terminal and as plain lines otherwise (a
    line when something changed, at most every ``interval`` seconds, and a heartbeat
    every ``heartbeat`` seconds while a phase has nothing to count, e.g. a global step)."""

    def __init__(self, p: E.Plan, stream=None, interval: float = 1.0, enabled: bool = True,
                 heartbeat: float = 10.0, tty: Optional[bool] = None):
        # the stream is looked up per run, not at import (a test harness or a caller may swap sys.stderr)
        stream = sys.stderr if stream is None else stream
        self.p, self.stream, self.interval, self.enabled, self.heartbeat = p, stream, interval, enabled, heartbeat
        self._stop = threading.Event()
        self.t0 = time.time()
        self.total_rows = sum(s.num_rows for s in p.shards)
        self.rows_of = {s.name: s.num_rows for s in p.shards}
        proc = E.ShardProcessor(p)
        stages = proc.build()
        self.global_ids = [st.id for st in stages if st.kind == "global"]
        self.two_phase = not proc.single_phase
        self.tty = (getattr(stream, "isatty", lambda: False)() if tty is None else tty)
        self._bar = None
        self._phase = None
        self._phase_t0 = self.t0
        self._phase_rows0 = 0
        self._last_line = 0.0
        self._last_state = None

    def _count(self, directory: str, suffix: str) -> tuple[int, int]:
        done = rows = 0
        for path in io.list_dir(directory, suffix):
            name = os.path.basename(path)[: -len(suffix)]
            if name in self.rows_of:
                m = io.read_json(path) or {}
                if str(m.get("fingerprint", "")).startswith(self.p.fingerprint):
                    done += 1
                    rows += self.rows_of[name]
        return done, rows

    def state(self) -> tuple[str, int, int]:
        """(phase, shards done in it, documents done in it)."""
        out = self.p.out
        final = self._count(io.join(out, S.MANIFEST_DIR), ".json")
        if not self.two_phase:
            return "stages", final[0], final[1]
        if final[0]:
            return "applying decisions and writing", final[0], final[1]
        p1 = self._count(io.join(out, S.WORK_DIR), ".p1.json")
        if p1[0] < len(self.p.shards):
            return "local stages and keys", p1[0], p1[1]
        for gid in self.global_ids:
            if not io.exists(io.join(out, S.GLOBAL_DIR, f"{gid}.json")):
                return f"global step {gid}", 0, 0
        return "applying decisions and writing", final[0], final[1]

    def _line(self, phase: str, done: int, rows: int, now: float) -> str:
        el = now - self.t0
        if phase.startswith("global step"):
            return f"[thresher] {phase}: running · {now - self._phase_t0:.0f}s in this step · {el:.0f}s"
        dt = max(now - self._phase_t0, 1e-6)
        rate = (rows - self._phase_rows0) / dt
        left = (self.total_rows - rows) / rate if rate > 0 else None
        eta = f" · ETA {left:.0f}s" if left is not None and done < len(self.p.shards) else ""
        return (f"[thresher] {phase}: shards {done}/{len(self.p.shards)} · {rows:,}/{self.total_rows:,} docs · "
                f"{rate:,.0f} docs/s{eta} · {el:.1f}s")

    def _print(self, final: bool = False) -> None:
        try:
            phase, done, rows = self.state()
        except Exception:
            return
        now = time.time()
        if phase != self._phase:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self._phase, self._phase_t0 = phase, (now if not final else self.t0)
            self._phase_rows0 = rows if not final else 0
        if self.tty:
            self._tty(phase, done, rows)
            return
        state = (phase, done, rows)
        quiet_for = now - self._last_line
        if (state != self._last_state and quiet_for >= self.interval) or quiet_for >= self.heartbeat or final:
            if final and state == self._last_state:
                return
            self.stream.write(self._line(phase, done, rows, now) + "\n")
            self.stream.flush()
            self._last_line, self._last_state = now, state

    def _tty(self, phase: str, done: int, rows: int) -> None:
        from tqdm import tqdm
        if self._bar is None:
            total = None if phase.startswith("global step") else self.total_rows
            self._bar = tqdm(total=total, desc=f"thresher {phase}", unit="docs", unit_scale=True,
                             file=self.stream, leave=False, dynamic_ncols=True)
            self._bar.n = 0
        if self._bar.total is not None:
            self._bar.n = rows
            self._bar.set_postfix_str(f"shards {done}/{len(self.p.shards)}", refresh=False)
        self._bar.refresh()

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
            if exc[0] is None:
                self._print(final=True)
            if self._bar is not None:
                self._bar.close()


def _claimed(out: str, fingerprint: str) -> bool:
    """Did the run with ``fingerprint`` complete at least one shard here?"""
    for path in io.list_dir(io.join(out, S.MANIFEST_DIR), ".json"):
        m = io.read_json(path) or {}
        if str(m.get("fingerprint", "")).startswith(fingerprint + ":"):
            return True
    return False


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        out = {}
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: d}


def identity_diff(prev: dict, cur: dict, limit: int = 4) -> str:
    """Human-readable difference of two run identities: the config keys and shards that differ."""
    parts = []
    a, b = _flatten(prev.get("config", {})), _flatten(cur.get("config", {}))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    for k in keys[:limit]:
        parts.append(f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}")
    if len(keys) > limit:
        parts.append(f"{len(keys) - limit} more config keys")
    ps = {s["rel"]: s for s in prev.get("shards", [])}
    cs = {s["rel"]: s for s in cur.get("shards", [])}
    added = sorted(set(cs) - set(ps))
    removed = sorted(set(ps) - set(cs))
    changed = sorted(r for r in set(ps) & set(cs) if ps[r] != cs[r])
    for what, names in (("shards only in this run", added), ("shards only in the previous run", removed),
                        ("shards whose content changed", changed)):
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            parts.append(f"{what}: {shown}")
    return "; ".join(parts) or "the previous run has no recorded identity"


_RUN_FILES = (S.KEPT_DIR, S.REJECTED_DIR, S.MANIFEST_DIR, S.WORK_DIR, S.GLOBAL_DIR, S.STATS_FILE, S.LOG_DIR)


def _check_output_dir(p: E.Plan, cfg: Config) -> None:
    """An output directory holds one run's files. The same run resumes; another run is
    refused (naming what differs) unless ``overwrite``, which removes the previous run's
    files first; a previous run that completed no shard did not claim the directory."""
    out = p.out
    io.makedirs(out)
    run_file = io.join(out, S.RUN_FILE)
    prev = io.read_json(run_file)
    cur = run_identity(cfg, p.shards)
    if prev and prev.get("fingerprint") != p.fingerprint:
        claimed = _claimed(out, str(prev.get("fingerprint")))
        if claimed and not cfg.output.overwrite:
            diff = identity_diff(prev.get("identity", {}), cur)
            raise ConfigError("output.path", f"{out} holds the output of another run ({diff}); choose another "
                                             f"directory or set output.overwrite: true (--overwrite)")
        for d in _RUN_FILES:
            io.remove(io.join(out, d))
    elif not prev and not cfg.output.overwrite:
        stray = [d for d in (S.KEPT_DIR, S.REJECTED_DIR, S.MANIFEST_DIR) if io.list_dir(io.join(out, d), ".parquet")
                 or io.list_dir(io.join(out, d), ".json")]
        if stray:
            raise ConfigError("output.path", f"{out} already holds {', '.join(d + '/' for d in stray)} files that no "
                                             f"thresher run recorded; choose another directory or --overwrite")
    elif not prev:
        for d in _RUN_FILES:
            io.remove(io.join(out, d))
    io.write_json(run_file, {"fingerprint": p.fingerprint, "identity": cur, "config": p.config,
                             "shards": [s.path for s in p.shards]})


def stray_files(p: E.Plan) -> list[str]:
    """Parquet files under kept/ or rejected/ that are not this run's (never counted)."""
    mine = {f"{d}/{s.name}.parquet" for s in p.shards for d in (S.KEPT_DIR, S.REJECTED_DIR)}
    out = []
    for d in (S.KEPT_DIR, S.REJECTED_DIR):
        for f in io.list_dir(io.join(p.out, d), ".parquet"):
            rel = f"{d}/{f.rstrip('/').rsplit('/', 1)[-1]}"
            if rel not in mine:
                out.append(rel)
    return sorted(out)


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
        "stray_files": stray_files(p),
        "wall_seconds": round(wall_seconds, 3),
        "docs_per_second": round(input_rows / wall_seconds, 1) if wall_seconds > 0 else None,
        "stages": stage_rows,
        # intermediates: nothing under _work/ is removed before the run ends, so the peak is
        # all of it: what the shards' work writers recorded, or what is on disk if more
        # (a killed attempt's partial files, the steps' own manifests)
        "work_bytes_peak": max(sum(int(m.get("work_bytes", 0)) for m in manifests), work_bytes(p.out)),
    }


def work_bytes(out: str) -> int:
    """Bytes under ``OUTPUT/_work/`` now (temporary files included)."""
    d = io.join(out, S.WORK_DIR)
    if io.is_remote(d):
        from apache_beam.io.filesystems import FileSystems
        try:
            return sum(int(m.size_in_bytes) for m in FileSystems.match([io.join(d, "*")])[0].metadata_list)
        except Exception:  # noqa: BLE001 - an absent directory matches nothing
            return 0
    total = 0
    for root, _, files in os.walk(d):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def remove_work(out: str) -> None:
    """Everything under ``OUTPUT/_work/`` (on an object store: each object, then the prefix)."""
    d = io.join(out, S.WORK_DIR)
    if io.is_remote(d):
        for f in io.list_dir(d):
            io.remove(f)
    io.remove(d)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def work_summary(stats: dict) -> Optional[str]:
    """One line on the run's intermediates (None when it wrote none)."""
    peak = int(stats.get("work_bytes_peak") or 0)
    if not peak:
        return None
    kept = int(stats.get("work_bytes_kept") or 0)
    fate = (f"{_human_bytes(kept)} kept (keep_work: true)" if kept
            else "removed after the run (keep_work: true keeps them)")
    return f"intermediates: {_human_bytes(peak)} at peak under {S.WORK_DIR}/ ({peak:,} bytes); {fate}"


def run(config: Union[str, dict, Config, None] = None, *, beam_args: Optional[list[str]] = None,
        progress: bool = True, log: Callable[[str], None] = lambda s: None, **overrides: Any) -> dict:
    """Run a thresher job; returns the stats dict (also written to ``stats.json``).

    Raises ConfigError / InputError before any work for user mistakes, and
    ReconciliationError when kept + rejected != input rows.
    """
    import apache_beam as beam

    from thresher.pipelines.transforms import CurateShards

    t0 = time.time()
    # this process reads shard footers and the output directory before Beam is started: its
    # filesystems need the run's options (s3:// endpoint and credentials, ...) first
    io.set_options(beam_args, load(config, **overrides).pipeline_options)
    p = plan(config, **overrides)
    cfg = p.cfg
    from thresher.pipelines import cloud
    beam_args = cloud.worker_package_args(cfg, beam_args, log)     # thresher onto stock-image workers
    if cloud.is_dry_run(cfg, beam_args):
        return cloud.dry_run(p, beam_args)      # the job built, nothing run, the output untouched
    _check_output_dir(p, cfg)
    done = all(E.is_done(E.manifest_path(p.out, s), E.shard_fingerprint(p, s)) for s in p.shards)
    shuffle = None
    if done:
        log(f"all {len(p.shards)} shards already complete in {p.out}; nothing to do")
    else:
        workers = None
        if cfg.runner in LOCAL_RUNNERS and "direct_num_workers" not in cfg.pipeline_options:
            work = local_work(p)
            workers = local_workers(p, work)
            log(f"local runner: {workers} worker process{'es' if workers > 1 else ''} "
                f"(estimated local work {work['seconds']:.0f} CPU-s; "
                f"pipeline_options.direct_num_workers overrides)")
        opts = pipeline_options(cfg, beam_args, workers=workers)
        with Progress(p, enabled=progress):
            bp = beam.Pipeline(options=opts)
            _ = bp | "Thresher" >> CurateShards(p, finalize=False)
            result = bp.run()
            result.wait_until_finish()
        shuffle = shuffle_bytes(result)
    stats = finish(p, time.time() - t0, resumed_complete=done, shuffle=shuffle)
    line = work_summary(stats) if progress and not done else None
    if line:
        log(line)
    return stats


def finish(p: E.Plan, wall_seconds: float, resumed_complete: bool = False,
           shuffle: Optional[dict] = None) -> dict:
    """The bookkeeping after the pipeline: ``stats.json`` from the manifests, reconciliation
    against the files on disk, then, once every shard's manifest is in and the counts
    reconcile, removal of everything under ``_work/`` unless ``output.keep_work`` (a later
    rerun that needs keys recomputes them; an interrupted or failed run never gets here, so
    a resume finds its finished shards' work files). ``stats.json`` records
    ``work_bytes_peak`` (the most bytes ``_work/`` held) and ``work_bytes_kept`` (what is left).
    ``thresher run`` and :class:`CurateShards` in a user's own pipeline both end here.
    Raises :class:`ReconciliationError` when kept + rejected != input rows."""
    cfg = p.cfg
    stats = aggregate(p, wall_seconds)
    if shuffle is not None:
        stats["shuffle_bytes"] = shuffle
    prev = io.read_json(io.join(p.out, S.STATS_FILE))
    if resumed_complete and prev and prev.get("config_fingerprint") == p.fingerprint:
        stats["wall_seconds"] = prev.get("wall_seconds", stats["wall_seconds"])
        stats["docs_per_second"] = prev.get("docs_per_second", stats["docs_per_second"])
        # nothing ran this time: the peak is the one the run that did the work saw
        stats["work_bytes_peak"] = max(int(prev.get("work_bytes_peak") or 0), stats["work_bytes_peak"])
    if stats["reconciled"] and not cfg.output.keep_work:
        remove_work(p.out)
    stats["work_bytes_kept"] = work_bytes(p.out)
    io.write_json(io.join(p.out, S.STATS_FILE), stats)
    if not stats["reconciled"]:
        raise ReconciliationError(
            f"row counts do not reconcile: input {stats['input_rows']} != kept {stats['kept_rows']} + "
            f"rejected {stats['rejected_rows']} (see {io.join(p.out, S.STATS_FILE)})")
    return stats


__all__ = ["run", "plan", "load", "aggregate", "finish", "work_bytes", "work_summary", "ReconciliationError",
           "ConfigError", "InputError"]
