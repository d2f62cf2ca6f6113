"""The per-shard engine: read a shard as Arrow batches, run stages, write kept/rejected.

This module holds the logic that the Beam DoFns call; it has no Beam import so
the same code runs in a plain loop (benchmarks, tests) and in any Beam runner.

Flow for one shard (no global stage)::

    batches ─▶ sanitise text (null/empty/invalid UTF-8/too large → input.*)
            ─▶ stage 1 … stage n (each sees only rows no earlier stage rejected)
            ─▶ kept/<shard>.parquet + rejected/<shard>.parquet ─▶ _manifests/<shard>.json

With global stages, phase 1 writes the processed rows to ``_work/`` plus a small
key table per global stage; the global step turns keys into decisions; phase 2
applies the decisions to the work rows and writes kept/rejected. Text never
leaves the shard's own worker. ``_work/`` holds only what a resume needs: it is
removed after a successful run (``api.finish``) unless ``output.keep_work``; each
shard's manifest records the bytes its steps wrote there (``work_bytes``).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.pipelines import io
from thresher.pipelines.registry import build_stages
from thresher.schemas import columns as C
from thresher.schemas import stats as S
from thresher.schemas.config import Config, ConfigError, parse_config
from thresher.schemas.documents import InputError, output_schema
from thresher.scorers.base import Decisions, GlobalStage, LocalStage, Stage, StageContractError
from thresher.scorers.text.arrays import as_array


@dataclasses.dataclass
class Plan:
    """Everything a worker needs, picklable: the config, the shards, the run fingerprint."""

    config: dict[str, Any]
    shards: list[io.Shard]
    fingerprint: str

    @property
    def cfg(self) -> Config:
        return parse_config(self.config)

    @property
    def out(self) -> str:
        return self.config["output"]["path"]


def shard_fingerprint(plan: Plan, shard: io.Shard) -> str:
    return f"{plan.fingerprint}:{shard.fingerprint}"


def manifest_path(out: str, shard: io.Shard) -> str:
    return io.join(out, S.MANIFEST_DIR, shard.name + ".json")


def p1_manifest_path(out: str, shard: io.Shard) -> str:
    return io.join(out, S.WORK_DIR, shard.name + ".p1.json")


def work_rows_path(out: str, shard: io.Shard) -> str:
    return io.join(out, S.WORK_DIR, shard.name + ".rows.parquet")


def segment_rows_path(out: str, shard: io.Shard, seg: Segment, n_segments: int) -> str:
    """Work rows a step writes: the last step's are ``<shard>.rows.parquet`` (read by the
    global step's phase 2), an earlier step's ``<shard>.step<j>.parquet`` (read by step j+1)."""
    if seg.index == n_segments - 1:
        return work_rows_path(out, shard)
    return io.join(out, S.WORK_DIR, f"{shard.name}.step{seg.index}.parquet")


def segment_manifest_path(out: str, shard: io.Shard, seg: Segment, n_segments: int) -> str:
    if seg.index == n_segments - 1:
        return p1_manifest_path(out, shard)
    return io.join(out, S.WORK_DIR, f"{shard.name}.step{seg.index}.json")


def work_keys_path(out: str, shard: io.Shard, stage_idx: int) -> str:
    return io.join(out, S.WORK_DIR, f"{shard.name}.keys{stage_idx}.parquet")


def file_size(path: str) -> int:
    """Bytes of a file as written (0 when it cannot be measured). Remote paths go through
    Beam's ``FileSystems`` as in :mod:`io`; a local run never imports Beam here."""
    try:
        if not io.is_remote(path):
            return os.path.getsize(io._local(path))
        from apache_beam.io.filesystems import FileSystems
        found = FileSystems.match([path])[0].metadata_list
        return int(found[0].size_in_bytes) if found else 0
    except Exception:  # noqa: BLE001 - a size is bookkeeping, never a reason to fail a shard
        return 0


def is_done(path: str, fingerprint: str) -> bool:
    try:
        m = io.read_json(path)
    except Exception:
        return False
    return bool(m) and m.get("fingerprint") == fingerprint


def _positions(alive_idx: np.ndarray, n: int) -> pa.Array:
    """Take-indices that scatter a length-m array back to length n (null elsewhere)."""
    pos = np.full(n, -1, dtype=np.int64)
    pos[alive_idx] = np.arange(alive_idx.size, dtype=np.int64)
    return pa.array(pos, mask=pos < 0)


_as_array = as_array


class StageFailure(RuntimeError):
    """A stage raised while processing rows: names the stage, the shard and the row range.
    (Beam wraps worker exceptions; the CLI finds this message inside and prints it.)"""

    def __init__(self, stage_id: str, shard: str, first_row: int, last_row: int, exc: BaseException):
        super().__init__(f"StageFailure: stage {stage_id!r} failed on {shard} rows {first_row}-{last_row}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        self.stage_id, self.shard, self.rows = stage_id, shard, (first_row, last_row)


@dataclasses.dataclass
class BatchState:
    """One batch between stages: the working table (input columns with clean text, ids,
    score columns so far), the per-row rejection reason (None = alive), the index of the
    rejecting stage (-1 = none) and the input characters."""

    table: pa.Table
    reasons: np.ndarray
    stage_of: np.ndarray
    chars_in: np.ndarray
    row0: int


@dataclasses.dataclass(frozen=True)
class Segment:
    """Stages ``lo:hi`` run in one step; ``accelerator`` is that step's Beam resource hint."""

    index: int
    lo: int
    hi: int
    accelerator: Optional[str] = None


def plan_segments(stages: list[Stage]) -> list[Segment]:
    """Split the stage list into steps: a run of stages whose ``accelerator_hint()`` is the
    same non-null hint gets a step of its own (on Dataflow only that step asks for GPU
    workers); everything else runs in the steps between. Without hints: one step."""
    hints = [getattr(s, "accelerator_hint", lambda: None)() for s in stages]
    segs: list[Segment] = []
    lo = 0
    for k in range(1, len(stages) + 1):
        if k == len(stages) or hints[k] != hints[k - 1]:
            segs.append(Segment(len(segs), lo, k, hints[lo]))
            lo = k
    return segs or [Segment(0, 0, 0, None)]


class ShardProcessor:
    """Runs the configured stages over one shard at a time. One per worker."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.cfg = plan.cfg
        self.stages: Optional[list[Stage]] = None
        self._ready: set[int] = set()

    # -- setup -------------------------------------------------------------------------
    def build(self) -> list[Stage]:
        if self.stages is None:
            self.stages = build_stages(self.cfg.stages)
        return self.stages

    def setup(self, segment: Optional[Segment] = None) -> None:
        """Build the stages and load what the stages of ``segment`` (default: all) need;
        a worker that runs only a CPU step never loads a model stage's model."""
        self.build()
        rng = range(len(self.stages)) if segment is None else range(segment.lo, segment.hi)
        for k in rng:
            if k not in self._ready:
                self.stages[k].setup()
                self._ready.add(k)

    @property
    def has_global(self) -> bool:
        return any(s.kind == "global" for s in self.build())

    @property
    def segments(self) -> list[Segment]:
        return plan_segments(self.build())

    @property
    def single_phase(self) -> bool:
        """No global stage and one step: read, run every stage, write, in one pass."""
        return not self.has_global and len(self.segments) == 1

    def stage_fields(self) -> list[pa.Field]:
        fields: list[pa.Field] = []
        seen = set()
        for s in self.build():
            for f in s.fields():
                if f.name not in seen:
                    seen.add(f.name)
                    fields.append(f)
        return fields

    def schemas(self, shard: io.Shard):
        with io.open_read(shard.path) as f:
            import pyarrow.parquet as pq
            in_schema = pq.ParquetFile(f).schema_arrow
        inp = self.cfg.input
        kw = dict(input_schema=in_schema, text_column=inp.text_column, id_column=inp.id_column,
                  stage_fields=self.stage_fields())
        return (output_schema(rejected=False, **kw), output_schema(rejected=True, **kw),
                output_schema(rejected=True, internal=True, **kw))

    # -- one batch -----------------------------------------------------------------------
    def sanitize(self, raw: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """Text as valid non-null UTF-8 strings, engine rejection reasons, input chars."""
        n = len(raw)
        reasons = np.full(n, None, dtype=object)
        t = raw.type
        if pa.types.is_null(t):
            reasons[:] = C.R_NULL_TEXT
            return pa.array([""] * n, pa.string()), reasons, np.zeros(n, np.int64)
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            try:
                text = raw.cast(pa.large_string() if pa.types.is_large_binary(t) else pa.string())
                text.validate(full=True)
            except (pa.ArrowInvalid, UnicodeDecodeError):
                text = _decode_rows(raw.to_pylist(), reasons)
        else:
            text = raw
            try:
                text.validate(full=True)
            except pa.ArrowInvalid:
                # invalid UTF-8 inside a string column: find the rows at fault
                vals = pa.Array.from_buffers(pa.binary() if t == pa.string() else pa.large_binary(),
                                             len(raw), raw.buffers(), raw.null_count, raw.offset).to_pylist()
                text = _decode_rows(vals, reasons)
        if text.type == pa.large_string() and (pc.sum(pc.binary_length(text)).as_py() or 0) < 2**31 - 1:
            text = text.cast(pa.string())
        nulls = text.is_null().to_numpy(zero_copy_only=False)
        reasons[nulls & (reasons == None)] = C.R_NULL_TEXT  # noqa: E711
        text = pc.fill_null(text, "")
        nbytes = pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
        too_large = nbytes > self.cfg.input.max_text_bytes
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0).to_numpy(zero_copy_only=False)
        free = reasons == None  # noqa: E711
        reasons[free & too_large] = C.R_TOO_LARGE
        free = reasons == None  # noqa: E711
        reasons[free & empty] = C.R_EMPTY_TEXT
        chars = pc.utf8_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
        return text, reasons, chars

    def ids_for(self, shard: io.Shard, table: pa.Table, row0: int) -> pa.Array:
        n = table.num_rows
        rows = pa.array(np.arange(row0, row0 + n, dtype=np.int64)).cast(pa.string())
        derived = pc.binary_join_element_wise(pa.scalar(shard.rel), rows, ":")
        idc = self.cfg.input.id_column
        if idc is None:
            return derived
        ids = _as_array(table[idc]).cast(pa.string())
        return pc.if_else(ids.is_null(), derived, ids)

    @property
    def _idname(self) -> str:
        return self.cfg.input.id_column or C.ID

    def start_batch(self, shard: io.Shard, batch: pa.RecordBatch, row0: int, timers: dict[str, float]) -> BatchState:
        """The engine's own step: ids, text sanitised (``input.*`` reasons)."""
        inp = self.cfg.input
        table = pa.Table.from_batches([batch])
        n = table.num_rows
        t0 = time.perf_counter()
        ids = self.ids_for(shard, table, row0)
        text, reasons, chars_in = self.sanitize(_as_array(table[inp.text_column]))
        ti = table.schema.get_field_index(inp.text_column)
        table = table.set_column(ti, pa.field(inp.text_column, text.type), text)
        if inp.id_column is None:
            table = table.append_column(pa.field(C.ID, C.ID_TYPE), ids)
        else:
            table = table.set_column(table.schema.get_field_index(self._idname), pa.field(self._idname, C.ID_TYPE), ids)
        timers["input"] = timers.get("input", 0.0) + time.perf_counter() - t0
        return BatchState(table, reasons, np.full(n, -1, dtype=np.int16), chars_in, row0)

    def _contract(self, stage: Stage, got, declared: list[str], what: str) -> None:
        extra = sorted(set(got) - set(declared))
        missing = sorted(set(declared) - set(got))
        if extra or (missing and what == "returned"):
            raise StageContractError(
                f"stage {stage.id!r} ({type(stage).__module__}.{type(stage).__qualname__}) {what} columns "
                + (f"{extra} it does not declare" if extra else "")
                + (" and " if extra and missing else "")
                + (f"without the declared {missing}" if missing else "")
                + f"; declared: {declared}")

    def run_stages(self, shard: io.Shard, st: BatchState, lo: int, hi: int, timers: dict[str, float],
                   keys_out: Optional[dict[int, list[pa.Table]]] = None,
                   docs_in: Optional[dict[str, int]] = None) -> BatchState:
        """Stages ``lo:hi`` over one batch; each sees only the rows no earlier stage rejected."""
        inp = self.cfg.input
        table, reasons, stage_of = st.table, st.reasons, st.stage_of
        n = table.num_rows
        ti = table.schema.get_field_index(inp.text_column)
        idname = self._idname
        for k in range(lo, hi):
            stage = self.stages[k]
            t0 = time.perf_counter()
            alive = reasons == None  # noqa: E711
            alive_idx = np.flatnonzero(alive)
            full = alive_idx.size == n
            text = _as_array(table[inp.text_column])
            if full:
                sub, sub_text = table, text
            else:
                sub = table.take(pa.array(alive_idx))
                sub_text = _as_array(sub[inp.text_column])
            if docs_in is not None:
                docs_in[stage.id] = docs_in.get(stage.id, 0) + int(alive_idx.size)
            cmap = stage.column_map()
            declared = [b for b, _ in cmap]
            new_cols: dict[str, pa.Array] = {}
            if isinstance(stage, LocalStage):
                try:
                    out = stage.process(sub_text, sub) if alive_idx.size else None
                except (StageContractError, ConfigError, InputError):
                    raise
                except Exception as e:
                    raise StageFailure(stage.id, shard.rel, st.row0, st.row0 + n - 1, e) from e
                if out is not None:
                    self._contract(stage, list(out.columns), declared, "returned")
                    new_cols = dict(out.columns)
                    if out.reasons is not None:
                        r = _as_array(out.reasons).to_numpy(zero_copy_only=False)
                        hit = np.flatnonzero(pd_notnull(r))
                        if hit.size:
                            rows = alive_idx[hit]
                            reasons[rows] = r[hit]
                            stage_of[rows] = k
                    if out.text is not None:
                        if not stage.rewrites_text:
                            raise StageContractError(f"stage {stage.id!r} returned rewritten text but does not "
                                                     f"declare rewrites_text = True")
                        newt = _as_array(out.text)
                        if full:
                            text = newt
                        else:
                            text = pc.if_else(pa.array(alive), newt.take(_positions(alive_idx, n)), text)
                        table = table.set_column(ti, pa.field(inp.text_column, text.type), text)
            elif isinstance(stage, GlobalStage):
                try:
                    keys = stage.keys(sub_text, sub, _as_array(sub[idname])) if alive_idx.size else None
                except (StageContractError, ConfigError, InputError):
                    raise
                except Exception as e:
                    raise StageFailure(stage.id, shard.rel, st.row0, st.row0 + n - 1, e) from e
                if keys is not None:
                    for name in keys.column_names:
                        if name in declared:
                            new_cols[name] = _as_array(keys[name])
                    keys = keys.append_column(C.SHARD, pa.array(np.full(keys.num_rows, shard.index, np.int32)))
                    keys = keys.append_column(C.ROW, pa.array(alive_idx.astype(np.int64) + st.row0))
                    if keys_out is not None:
                        keys_out.setdefault(k, []).append(keys)
            # attach this stage's declared columns under their written names (null for rows it did not see)
            pos = None if full else _positions(alive_idx, n)
            for base, f in cmap:
                if base in new_cols:
                    col = _as_array(new_cols[base])
                    if col.type != f.type:
                        col = col.cast(f.type)
                    if pos is not None:
                        col = col.take(pos)
                else:
                    col = pa.nulls(n, f.type)
                if f.name in table.column_names:
                    table = table.set_column(table.schema.get_field_index(f.name), f, col)
                else:
                    table = table.append_column(f, col)
            timers[stage.id] = timers.get(stage.id, 0.0) + time.perf_counter() - t0
        return BatchState(table, reasons, stage_of, st.chars_in, st.row0)

    def run_batch(self, shard: io.Shard, batch: pa.RecordBatch, row0: int, timers: dict[str, float],
                  keys_out: Optional[dict[int, list[pa.Table]]] = None, docs_in: Optional[dict[str, int]] = None):
        """Every stage over one batch. Returns (table with text replaced and score columns,
        reasons (object ndarray), stage index of the rejection (int16), input chars)."""
        st = self.start_batch(shard, batch, row0, timers)
        st = self.run_stages(shard, st, 0, len(self.stages), timers, keys_out, docs_in)
        return st.table, st.reasons, st.stage_of, st.chars_in

    @staticmethod
    def to_work(st: BatchState) -> pa.Table:
        """A batch as work rows: the table plus reason, duplicate_of and the internal columns."""
        n = st.table.num_rows
        t = st.table.append_column(pa.field(C.REASON, C.REASON_TYPE), pa.array(st.reasons, pa.string()))
        t = t.append_column(pa.field(C.DUPLICATE_OF, C.ID_TYPE), pa.nulls(n, C.ID_TYPE))
        t = t.append_column(pa.field(C.ROW, pa.int64()), pa.array(np.arange(st.row0, st.row0 + n, dtype=np.int64)))
        t = t.append_column(pa.field(C.STAGE_IDX, pa.int16()), pa.array(st.stage_of))
        return t.append_column(pa.field(C.CHARS_IN, pa.int64()), pa.array(st.chars_in))

    @staticmethod
    def from_work(table: pa.Table) -> BatchState:
        rows = table[C.ROW].to_numpy()
        st = BatchState(table.drop_columns([C.REASON, C.DUPLICATE_OF, C.ROW, C.STAGE_IDX, C.CHARS_IN]),
                        table[C.REASON].to_numpy(zero_copy_only=False).astype(object),
                        table[C.STAGE_IDX].to_numpy().astype(np.int16).copy(),
                        table[C.CHARS_IN].to_numpy().astype(np.int64), int(rows[0]) if rows.size else 0)
        return st

    # -- whole shard, single phase ------------------------------------------------------
    def _count(self, manifest: dict, reasons: np.ndarray, chars_in: np.ndarray,
               kept_chars_out: int) -> None:
        rej = reasons != None  # noqa: E711
        manifest["rows_in"] += int(reasons.size)
        manifest["chars_in"] += int(chars_in.sum())
        manifest["kept"] += int((~rej).sum())
        manifest["rejected"] += int(rej.sum())
        manifest["kept_chars_out"] += int(kept_chars_out)
        if rej.any():
            r = reasons[rej].astype(str)
            u, inv = np.unique(r, return_inverse=True)
            docs = np.bincount(inv)
            chars = np.bincount(inv, weights=chars_in[rej])
            for name, d, c in zip(u, docs, chars):
                S.add_reason(manifest, str(name), int(d), int(c))

    def _split_write(self, table: pa.Table, reasons: np.ndarray, dups: Optional[pa.Array],
                     kept_w: io.ParquetOut, rej_w: io.ParquetOut) -> int:
        rej = reasons != None  # noqa: E711
        text_col = self.cfg.input.text_column
        kept_chars = 0
        if (~rej).any():
            kt = table.filter(pa.array(~rej)) if rej.any() else table
            kept_chars = int(pc.sum(pc.utf8_length(kt[text_col])).as_py() or 0)
            kept_w.write(kt)
        if rej.any():
            rt = table.filter(pa.array(rej))
            rr = pa.array(reasons[rej], pa.string())
            dd = dups.filter(pa.array(rej)) if dups is not None else pa.nulls(len(rr), C.ID_TYPE)
            rt = rt.append_column(pa.field(C.REASON, C.REASON_TYPE), rr)
            rt = rt.append_column(pa.field(C.DUPLICATE_OF, C.ID_TYPE), dd)
            rej_w.write(rt)
        return kept_chars

    def _writers(self, shard: io.Shard):
        kept_s, rej_s, work_s = self.schemas(shard)
        out = self.plan.out
        comp = self.cfg.output.compression
        kept_w = io.ParquetOut(io.join(out, S.KEPT_DIR, shard.name + ".parquet"), kept_s, comp)
        rej_w = io.ParquetOut(io.join(out, S.REJECTED_DIR, shard.name + ".parquet"), rej_s, comp)
        return kept_w, rej_w, work_s

    def _write_outputs(self, shard: io.Shard, manifest: dict, rows) -> None:
        """Write kept/rejected for a shard from (table, reasons, duplicate_of, input chars)
        batches, atomically, counting into the manifest."""
        kept_w, rej_w, _ = self._writers(shard)
        try:
            for table, reasons, dups, chars_in in rows:
                kc = self._split_write(table, reasons, dups, kept_w, rej_w)
                self._count(manifest, reasons, chars_in, kc)
            kept_w.commit()
            rej_w.commit()
        except BaseException:
            kept_w.abort()
            rej_w.abort()
            raise
        manifest["files"] = {"kept": f"{S.KEPT_DIR}/{shard.name}.parquet",
                             "rejected": f"{S.REJECTED_DIR}/{shard.name}.parquet"}

    def _stage_stats(self, lo: int = 0, hi: Optional[int] = None) -> dict[str, dict]:
        """Counters of stages that keep them (model stages: engine throughput and padding)."""
        out = {}
        for st in self.stages[lo:hi]:
            take = getattr(st, "take_stats", None)
            got = take() if take is not None else None
            if got:
                out[st.id] = got
        return out

    def _finish(self, shard: io.Shard, manifest: dict, stage_seconds: dict, seconds: float,
                docs_in: Optional[dict] = None, stage_stats: Optional[dict] = None, work_bytes: int = 0) -> dict:
        """Write the shard's manifest last: its presence marks the shard complete.
        ``work_bytes``: what this shard's steps wrote under ``_work/`` (work rows, key files)."""
        manifest["stage_seconds"] = stage_seconds
        manifest["work_bytes"] = int(work_bytes)
        manifest["stage_docs_in"] = dict(docs_in or {})
        if stage_stats:
            manifest["stage_stats"] = stage_stats
        manifest["seconds"] = seconds
        manifest["worker"] = {"pid": os.getpid(), "finished_at": time.time()}
        io.write_json(manifest_path(self.plan.out, shard), manifest)
        return manifest

    def process_shard(self, shard: io.Shard) -> dict:
        """Single-phase run (no global stage, one step): read, stages, write, manifest."""
        self.setup()
        t_start = time.perf_counter()
        manifest = S.empty_manifest(shard.name, shard.path, shard_fingerprint(self.plan, shard))
        timers: dict[str, float] = {}
        docs_in: dict[str, int] = {}

        def rows():
            row0 = 0
            for batch in io.iter_batches(shard.path, self.cfg.input.batch_rows):
                table, reasons, _, chars_in = self.run_batch(shard, batch, row0, timers, docs_in=docs_in)
                row0 += batch.num_rows
                yield table, reasons, None, chars_in

        self._write_outputs(shard, manifest, rows())
        return self._finish(shard, manifest, timers, time.perf_counter() - t_start, docs_in, self._stage_stats())

    # -- steps (global stages, model steps) ----------------------------------------------
    def _segment_done(self, shard: io.Shard, seg: Segment, key_paths: dict[int, str]) -> bool:
        out = self.plan.out
        fp = shard_fingerprint(self.plan, shard)
        if not all(io.exists(p) for p in key_paths.values()):
            return False
        if is_done(manifest_path(out, shard), fp):
            return True
        return is_done(segment_manifest_path(out, shard, seg, len(self.segments)), fp) and \
            io.exists(segment_rows_path(out, shard, seg, len(self.segments)))

    def run_segment(self, shard: io.Shard, j: int) -> dict[int, str]:
        """Step ``j`` of a shard: read the input (step 0) or the previous step's work rows,
        run the step's stages, write its work rows and the key files of its global stages.
        Returns {global stage index: key file path}. The last step without global stages
        writes kept/rejected and the shard manifest instead of work rows."""
        segs = self.segments
        seg = segs[j]
        self.setup(seg)
        out = self.plan.out
        fp = shard_fingerprint(self.plan, shard)
        gidx = [k for k in range(seg.lo, seg.hi) if self.stages[k].kind == "global"]
        key_paths = {k: work_keys_path(out, shard, k) for k in gidx}
        final = j == len(segs) - 1 and not self.has_global
        if final and is_done(manifest_path(out, shard), fp):
            return key_paths
        if not final and self._segment_done(shard, seg, key_paths):
            return key_paths
        timers: dict[str, float] = {}
        docs_in: dict[str, int] = {}
        keys_acc: dict[int, list[pa.Table]] = {}
        t_start = time.perf_counter()
        prev = {} if j == 0 else (io.read_json(segment_manifest_path(out, shard, segs[j - 1], len(segs))) or {})

        def states():
            if j == 0:
                row0 = 0
                for batch in io.iter_batches(shard.path, self.cfg.input.batch_rows):
                    yield self.start_batch(shard, batch, row0, timers)
                    row0 += batch.num_rows
            else:
                src = segment_rows_path(out, shard, segs[j - 1], len(segs))
                for batch in io.iter_batches(src, self.cfg.input.batch_rows):
                    yield self.from_work(pa.Table.from_batches([batch]))

        done = (self.run_stages(shard, st, seg.lo, seg.hi, timers, keys_acc, docs_in) for st in states())
        if final:
            manifest = S.empty_manifest(shard.name, shard.path, fp)
            self._write_outputs(shard, manifest, ((st.table, st.reasons, None, st.chars_in) for st in done))
            stage_seconds = {**prev.get("stage_seconds", {}), **timers}
            all_docs_in = {**prev.get("stage_docs_in", {}), **docs_in}
            self._finish(shard, manifest, stage_seconds,
                         float(prev.get("seconds", 0.0)) + time.perf_counter() - t_start, all_docs_in,
                         {**prev.get("stage_stats", {}), **self._stage_stats(seg.lo, seg.hi)},
                         int(prev.get("work_bytes", 0)))
            return key_paths
        _, _, work_s = self.schemas(shard)
        later = {f.name for st in self.stages[seg.hi:] for f in st.fields()}
        work_s = pa.schema([f for f in work_s if f.name not in later])   # columns written so far
        rows_w = io.ParquetOut(segment_rows_path(out, shard, seg, len(segs)), work_s, "zstd")
        rows = 0
        chars_total = 0
        try:
            for st in done:
                rows_w.write(self.to_work(st))
                rows += st.table.num_rows
                chars_total += int(st.chars_in.sum())
            rows_w.commit()
        except BaseException:
            rows_w.abort()
            raise
        work_bytes = file_size(rows_w.path)
        for k in gidx:
            parts = keys_acc.get(k, [])
            t = pa.concat_tables(parts, promote_options="permissive") if parts else self._empty_keys(shard, k)
            w = io.ParquetOut(key_paths[k], t.schema, "zstd")
            try:
                w.write(t)
                w.commit()
            except BaseException:
                w.abort()
                raise
            work_bytes += file_size(key_paths[k])
        io.write_json(segment_manifest_path(out, shard, seg, len(segs)), {
            "fingerprint": fp, "rows": rows, "chars_in": chars_total,
            "stage_seconds": {**prev.get("stage_seconds", {}), **timers},
            "stage_docs_in": {**prev.get("stage_docs_in", {}), **docs_in},
            "stage_stats": {**prev.get("stage_stats", {}), **self._stage_stats(seg.lo, seg.hi)},
            # bytes under _work/ this shard's steps wrote so far (this step's rows and keys included)
            "work_bytes": int(prev.get("work_bytes", 0)) + work_bytes,
            "seconds": float(prev.get("seconds", 0.0)) + time.perf_counter() - t_start})
        return key_paths

    def phase1(self, shard: io.Shard) -> dict[int, str]:
        """Every step of a shard in this worker (no step of its own for a model stage)."""
        paths: dict[int, str] = {}
        for j in range(len(self.segments)):
            paths.update(self.run_segment(shard, j))
        return paths

    def _empty_keys(self, shard: io.Shard, k: int) -> pa.Table:
        """Key schema of a shard with no surviving rows: run keys() on an empty batch."""
        stage = self.stages[k]
        inp = self.cfg.input
        try:
            empty = stage.keys(pa.array([], pa.string()), pa.table({inp.text_column: pa.array([], pa.string())}),
                               pa.array([], pa.string()))
        except Exception:
            empty = pa.table({})
        empty = empty.append_column(C.SHARD, pa.array([], pa.int32()))
        return empty.append_column(C.ROW, pa.array([], pa.int64()))

    def phase2(self, shard: io.Shard, decisions: list[tuple[int, pa.Table]]) -> dict:
        """Apply global decisions to the work rows of a shard and write kept/rejected."""
        self.build()
        out = self.plan.out
        fp = shard_fingerprint(self.plan, shard)
        mpath = manifest_path(out, shard)
        if is_done(mpath, fp):
            return io.read_json(mpath)
        segs = self.segments
        p1 = io.read_json(segment_manifest_path(out, shard, segs[-1], len(segs))) or {}
        t_start = time.perf_counter()
        manifest = S.empty_manifest(shard.name, shard.path, fp)
        decs = []
        for k, t in sorted(decisions, key=lambda kv: kv[0]):
            if t.num_rows == 0:
                continue
            self._check_decisions(k, t)
            order = pc.sort_indices(t[C.ROW])
            t = t.take(order)
            decs.append((k, t, t[C.ROW].to_numpy()))
        rows = (self._apply_decisions(pa.Table.from_batches([b]), decs)
                for b in io.iter_batches(work_rows_path(out, shard), self.cfg.input.batch_rows))
        self._write_outputs(shard, manifest, rows)
        stage_seconds = dict(p1.get("stage_seconds", {}))
        stage_seconds["apply_decisions"] = time.perf_counter() - t_start
        return self._finish(shard, manifest, stage_seconds,
                            float(p1.get("seconds", 0.0)) + time.perf_counter() - t_start,
                            p1.get("stage_docs_in", {}), p1.get("stage_stats", {}), int(p1.get("work_bytes", 0)))

    def _check_decisions(self, k: int, t: pa.Table) -> None:
        stage = self.stages[k]
        engine_cols = {C.SHARD, C.ROW, C.REASON, C.DUPLICATE_OF}
        declared = [b for b, _ in stage.column_map()]
        self._contract(stage, [c for c in t.column_names if c not in engine_cols], declared, "decided with")

    def _apply_decisions(self, table: pa.Table, decs: list):
        """One batch of work rows with the global decisions merged in: a global stage's
        rejection wins over a local one only if it comes earlier in the config."""
        rows = table[C.ROW].to_numpy()
        reasons = table[C.REASON].to_numpy(zero_copy_only=False).astype(object)
        stage_of = table[C.STAGE_IDX].to_numpy().copy()
        dups = _as_array(table[C.DUPLICATE_OF])
        for k, dt, drows in decs:
            lo, hi = np.searchsorted(drows, [rows[0], rows[-1] + 1]) if rows.size else (0, 0)
            if hi <= lo:
                continue
            seg = dt.slice(lo, hi - lo)
            pos_in_batch = np.searchsorted(rows, drows[lo:hi])
            src = np.full(rows.size, -1, np.int64)
            src[pos_in_batch] = np.arange(hi - lo)
            idx = pa.array(src, mask=src < 0)
            has = src >= 0
            for base, f in self.stages[k].column_map():          # annotations (kept rows too)
                if base in seg.column_names:
                    new = _as_array(seg[base]).cast(f.type).take(idx)
                    old = _as_array(table[f.name])
                    merged = pc.if_else(pc.is_valid(new), new, old)
                    table = table.set_column(table.schema.get_field_index(f.name), f, merged)
            if C.REASON in seg.column_names:
                dr = _as_array(seg[C.REASON]).take(idx).to_numpy(zero_copy_only=False)
                win = has & pd_notnull(dr) & ((stage_of < 0) | (stage_of > k))
                if win.any():
                    reasons[win] = dr[win]
                    stage_of[win] = k
                    if C.DUPLICATE_OF in seg.column_names:
                        dd = _as_array(seg[C.DUPLICATE_OF]).cast(C.ID_TYPE).take(idx)
                        dups = pc.if_else(pa.array(win), dd, dups)
        chars_in = table[C.CHARS_IN].to_numpy().astype(np.int64)
        base = table.drop_columns([C.REASON, C.DUPLICATE_OF, C.ROW, C.STAGE_IDX, C.CHARS_IN])
        return base, reasons, dups, chars_in


def _decode_rows(vals: list, reasons: np.ndarray) -> pa.Array:
    """Slow path, only for a batch that failed UTF-8 validation: decode row by row and
    mark the rows that are not valid UTF-8 (they become empty strings, rejected)."""
    out = []
    for i, v in enumerate(vals):
        if v is None:
            out.append(None)
            continue
        try:
            out.append(v.decode("utf-8"))
        except UnicodeDecodeError:
            reasons[i] = C.R_INVALID_UTF8
            out.append("")
    return pa.array(out, pa.string())


def pd_notnull(a: np.ndarray) -> np.ndarray:
    """Element-wise 'is not None' for an object ndarray."""
    return a != None  # noqa: E711


# -- global compute ----------------------------------------------------------------------

def read_keys(paths: list[str]) -> pa.Table:
    import pyarrow.parquet as pq
    tables = []
    for p in sorted(paths):
        with io.open_read(p) as f:
            tables.append(pq.read_table(f))
    tables = [t for t in tables if t.num_columns]
    if not tables:
        return pa.table({C.SHARD: pa.array([], pa.int32()), C.ROW: pa.array([], pa.int64())})
    return pa.concat_tables(tables, promote_options="permissive")


def exclude_rejected(keys: pa.Table, prior: list[pa.Table]) -> pa.Table:
    """Drop key rows that an earlier global stage rejected."""
    if not prior or keys.num_rows == 0:
        return keys
    refs = []
    for d in prior:
        if d.num_rows and C.REASON in d.column_names:
            d = d.filter(pc.is_valid(d[C.REASON]))
            refs.append((d[C.SHARD].to_numpy().astype(np.int64) << 40) | d[C.ROW].to_numpy().astype(np.int64))
    if not refs:
        return keys
    bad = np.unique(np.concatenate(refs))
    mine = (keys[C.SHARD].to_numpy().astype(np.int64) << 40) | keys[C.ROW].to_numpy().astype(np.int64)
    keep = ~np.isin(mine, bad)
    return keys.filter(pa.array(keep)) if not keep.all() else keys


def exclude_prior(keys: pa.Table, prior: list) -> pa.Table:
    """Drop key rows that an earlier global stage rejected. ``prior``: one side-input list
    of ``(shard, (k, ref))`` per earlier global stage (see :mod:`spill`); only the pieces of
    the shards these keys come from are read."""
    from thresher.pipelines import spill
    if not prior or keys.num_rows == 0:
        return keys
    shards = {int(s) for s in np.unique(keys[C.SHARD].to_numpy())}
    return exclude_rejected(keys, spill.prior_tables(prior, shards))


def compute_global(plan: Plan, k: int, key_paths: list[str], prior: list) -> tuple[int, pa.Table]:
    """Default global step: gather all keys of stage k on one worker and decide. No model
    is loaded: ``compute`` works on keys only. ``prior``: earlier global stages' decision
    refs (side-input lists, see :func:`exclude_prior`)."""
    cfg = plan.cfg
    stage = build_stages([cfg.stages[k]])[0]
    t0 = time.perf_counter()
    keys = exclude_prior(read_keys(key_paths), prior)
    dec = stage.compute(keys)
    if not isinstance(dec, Decisions):
        raise StageContractError(f"stage {stage.id!r}: compute() must return Decisions(table, stats), "
                                 f"got {type(dec).__name__}")
    seconds = time.perf_counter() - t0
    table = dec.table
    io.write_json(io.join(plan.out, S.GLOBAL_DIR, f"{stage.id}.json"), {
        "stage": stage.id, "fingerprint": plan.fingerprint, "keys": keys.num_rows,
        "decisions": table.num_rows,
        "rejected": int(pc.sum(pc.is_valid(table[C.REASON])).as_py() or 0) if C.REASON in table.column_names else 0,
        "seconds": seconds, **dec.stats})
    return k, table
