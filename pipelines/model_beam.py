"""Beam wrappers around the model-scorer tasks (``scorers/models``).

The model is loaded once per worker process through
``apache_beam.utils.shared.Shared`` (one handle per task spec, so two
transforms with the same spec share a model and two different models in one
pipeline do not collide) and shared by the threads of that
process under a lock. The engine does its own token-budget batching inside
each Arrow table, so the unit of work here is a ``pa.Table``.

* :class:`ModelTaskSpec`: picklable description of a task (task name, model
  path, options); ``build()`` loads the model and makes the task.
* :class:`ScoreTableDoFn` / :func:`ScoreTables`: ``pa.Table`` (or
  ``(key, pa.Table)``) in, the same table plus the task's columns out.
* :class:`ScoreShardDoFn`: a Parquet shard path in, the scored shard written
  to the output directory under a temporary name and renamed; yields a small
  stats dict; logs its progress (rows of the footer's total, rate, ETA) at most
  every ``progress_interval_s`` and after the last batch. One output file per input shard; no shuffle of text. Local
  paths, or any Beam filesystem URL (``gs://``, ``s3://``; remote paths are
  written through ``FileSystems`` and renamed, which is copy + delete there).
* :class:`TextTaskModelHandler`: a ``ModelHandler`` for ``RunInference`` over
  plain strings (Beam's own batching), returning one dict of outputs per text.

Counters (namespace ``thresher.model``): ``docs``, ``doc_tokens``,
``processed_tokens``, ``padded_tokens``, ``batches``, ``oom_events``,
``model_ms``, ``shards_written``, ``shards_skipped``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.utils import shared

from thresher.pipelines import io as _io
from thresher.pipelines.io import is_remote

log = logging.getLogger(__name__)

NAMESPACE = "thresher.model"
_COUNTERS = ("docs", "doc_tokens", "processed_tokens", "padded_tokens", "batches", "oom_events")

#: how many times ``ModelTaskSpec.build`` ran in this process (tests check one load per process)
BUILD_COUNT = 0


def _logged_build(spec, make):
    """Build a task (counted in BUILD_COUNT) and log how long loading took."""
    global BUILD_COUNT
    BUILD_COUNT += 1
    t0 = time.perf_counter()
    task = make()
    log.info("loaded %s for %s in %.1fs (device %s)", spec.model, spec.task, time.perf_counter() - t0,
             task.engine.device)
    return task


@dataclasses.dataclass(frozen=True)
class ModelTaskSpec:
    """What to run: ``build_task(task, model, head=head, weights_dtype=…, **options)``."""

    task: str
    model: str
    options: tuple = ()              # sorted (name, value) pairs; use ModelTaskSpec.make
    text_column: str = "text"
    head: Optional[str] = None
    weights_dtype: Optional[str] = None

    @classmethod
    def make(cls, task: str, model: str, *, text_column: str = "text", head: Optional[str] = None,
             weights_dtype: Optional[str] = None, **options: Any) -> ModelTaskSpec:
        opts = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()
                            if v is not None))
        return cls(task, model, opts, text_column, head, weights_dtype)

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)

    def build(self):
        from thresher.scorers.models import build_task
        opts = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.options}
        return _logged_build(self, lambda: build_task(self.task, self.model, head=self.head,
                                                      weights_dtype=self.weights_dtype, **opts))


@dataclasses.dataclass(frozen=True)
class StageTaskSpec:
    """A model stage's task, as ``thresher score`` runs it: built by the stage's own loader
    (``ModelStage.load``: the same validation, options and process-wide cache as
    ``thresher run``), with every output of the task and an optional column prefix."""

    stage: str
    params: tuple = ()
    text_column: str = "text"
    column_prefix: Optional[str] = None

    @classmethod
    def make(cls, stage: str, params: dict, *, text_column: str = "text",
             column_prefix: Optional[str] = None) -> StageTaskSpec:
        return cls(stage, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items())),
                   text_column, column_prefix)

    @property
    def task(self) -> str:
        from thresher.scorers.registry import get
        return get(self.stage).task

    @property
    def model(self) -> str:
        return dict(self.params)["model"]

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)

    def build(self):
        from thresher.scorers.registry import get
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.params}
        return _logged_build(self, lambda: get(self.stage)(**params).load(column_prefix=self.column_prefix).task)


class _Loaded:
    """Weak-referenceable holder for ``Shared`` (task + a lock for threads)."""

    def __init__(self, task):
        self.task = task
        self.lock = threading.Lock()


class _Counters:
    def __init__(self):
        self.c = {n: Metrics.counter(NAMESPACE, n) for n in _COUNTERS}
        self.model_ms = Metrics.counter(NAMESPACE, "model_ms")

    def snapshot(self, stats) -> tuple:
        return tuple(getattr(stats, n) for n in _COUNTERS) + (stats.model_s,)

    def report(self, before: tuple, stats) -> None:
        after = self.snapshot(stats)
        for n, a, b in zip(_COUNTERS, before, after):
            if b - a:
                self.c[n].inc(int(b - a))
        self.model_ms.inc(int((after[-1] - before[-1]) * 1000))


# One Shared handle per task spec per process: every DoFn instance of the same
# spec (several transforms, several threads) gets the same loaded model.
_SHARED_BY_SPEC: dict[str, shared.Shared] = {}
_SHARED_LOCK = threading.Lock()


def acquire_task(spec: ModelTaskSpec) -> _Loaded:
    """The process-wide loaded task for ``spec`` (built on first use)."""
    key = spec.key()
    with _SHARED_LOCK:
        handle = _SHARED_BY_SPEC.setdefault(key, shared.Shared())
    return handle.acquire(lambda: _Loaded(spec.build()), tag=key)


class _TaskDoFnBase(beam.DoFn):
    def __init__(self, spec: ModelTaskSpec):
        self.spec = spec
        self._loaded: Optional[_Loaded] = None

    def setup(self):
        self._loaded = acquire_task(self.spec)  # keep a strong reference while the DoFn lives
        self._counters = _Counters()

    def _score(self, table: pa.Table) -> pa.Table:
        loaded = self._loaded
        with loaded.lock:
            stats = loaded.task.stats
            before = self._counters.snapshot(stats)
            out = loaded.task.score_table(table, self.spec.text_column)
            self._counters.report(before, stats)
        return out

    def fields(self) -> list[pa.Field]:
        return self._loaded.task.fields()


class ScoreTableDoFn(_TaskDoFnBase):
    """``pa.Table`` -> table + task columns; ``(key, pa.Table)`` keeps the key."""

    def process(self, element) -> Iterator[Any]:
        if isinstance(element, tuple) and len(element) == 2 and isinstance(element[1], pa.Table):
            yield element[0], self._score(element[1])
        else:
            yield self._score(element)


class ScoreTables(beam.PTransform):
    """``beam.ParDo(ScoreTableDoFn(spec))`` with a readable default label."""

    def __init__(self, spec: ModelTaskSpec, label: Optional[str] = None):
        super().__init__(label or f"Score[{spec.task}]")
        self.spec = spec

    def expand(self, pcoll):
        return pcoll | beam.ParDo(ScoreTableDoFn(self.spec))


def output_path(input_path: str, output_dir: str) -> str:
    name = input_path.rstrip("/").rsplit("/", 1)[-1] if is_remote(input_path) else os.path.basename(input_path)
    if is_remote(output_dir):
        return output_dir.rstrip("/") + "/" + name
    return os.path.join(output_dir, name)


# filesystem access lives in one place (pipelines/io.py)
_exists, _open_read, _open_write = _io.exists, _io.open_read, _io.open_write


_rename = _io.rename


def _remove(path: str) -> None:
    try:
        if is_remote(path):
            from apache_beam.io.filesystems import FileSystems
            if FileSystems.exists(path):
                FileSystems.delete([path])
        elif os.path.exists(path):
            os.remove(path)
    except Exception:  # noqa: BLE001 - best-effort cleanup after the real error
        log.warning("could not remove temporary file %s", path)


def _duration(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    if s < 100:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ShardProgress:
    """Progress of one shard: ``update(rows_done)`` returns a line such as
    ``scored 5,000/23,100 rows of part-000.parquet · 812 docs/s · ETA 22s`` when
    ``interval_s`` has passed since the last line (or the start), and always
    once every row is done; ``None`` otherwise."""

    def __init__(self, name: str, total_rows: int, interval_s: float = 2.0, clock=time.perf_counter):
        self.name, self.total, self.interval = name, int(total_rows), float(interval_s)
        self.clock = clock
        self.t0 = self.last = clock()

    def update(self, rows: int) -> Optional[str]:
        now = self.clock()
        if rows < self.total and now - self.last < self.interval:
            return None
        self.last = now
        dt = now - self.t0
        rate = rows / dt if dt > 0 else float("inf")
        eta = (self.total - rows) / rate if rate and rate != float("inf") else 0.0
        rate_s = f"{rate:,.0f}" if rate != float("inf") else "-"
        return (f"scored {rows:,}/{self.total:,} rows of {self.name} · {rate_s} docs/s · "
                f"ETA {_duration(eta)}")


class ScoreShardDoFn(_TaskDoFnBase):
    """Score one Parquet shard into ``output_dir/<same file name>``, atomically.

    The shard is read ``batch_rows`` rows at a time (bounded memory), each
    batch scored and written as one row group of a temporary file, which is
    renamed over the final name at the end. An existing output is skipped
    unless ``overwrite``. Progress (rows of the footer's row count, docs/s, ETA)
    is logged at INFO at most every ``progress_interval_s`` seconds per shard,
    and after the last batch.
    """

    progress_interval_s = 2.0

    def __init__(self, spec: ModelTaskSpec, output_dir: str, batch_rows: int = 5000,
                 overwrite: bool = False, compression: str = "zstd"):
        super().__init__(spec)
        self.output_dir = output_dir
        self.batch_rows = batch_rows
        self.overwrite = overwrite
        self.compression = compression

    def setup(self):
        super().setup()
        self._written = Metrics.counter(NAMESPACE, "shards_written")
        self._skipped = Metrics.counter(NAMESPACE, "shards_skipped")

    def process(self, input_path: str) -> Iterator[dict]:
        final = output_path(input_path, self.output_dir)
        if _exists(final) and not self.overwrite:
            self._skipped.inc()
            yield {"shard": input_path, "output": final, "rows": None, "skipped": True}
            return
        if not is_remote(self.output_dir):
            os.makedirs(self.output_dir, exist_ok=True)
        name = final.rsplit("/", 1)[-1]
        tmp = final[: len(final) - len(name)] + f".{name}.tmp-{uuid.uuid4().hex[:12]}"
        t0 = time.perf_counter()
        rows = 0
        writer = sink = None
        try:
            with _open_read(input_path) as src:
                pf = pq.ParquetFile(src)
                if self.spec.text_column not in pf.schema_arrow.names:
                    raise KeyError(f"{input_path}: no column {self.spec.text_column!r} "
                                   f"(columns: {pf.schema_arrow.names})")
                sink = _open_write(tmp)
                progress = ShardProgress(name, pf.metadata.num_rows, self.progress_interval_s)
                for rb in pf.iter_batches(batch_size=self.batch_rows):
                    out = self._score(pa.Table.from_batches([rb]))
                    if writer is None:
                        writer = pq.ParquetWriter(sink, out.schema, compression=self.compression)
                    writer.write_table(out)
                    rows += out.num_rows
                    line = progress.update(rows)
                    if line is not None:
                        log.info("%s", line)
                if writer is None:  # empty shard: same columns, zero rows
                    schema = pf.schema_arrow
                    for f in self.fields():
                        if f.name in schema.names:
                            schema = schema.set(schema.get_field_index(f.name), f)
                        else:
                            schema = schema.append(f)
                    writer = pq.ParquetWriter(sink, schema, compression=self.compression)
                    writer.write_table(schema.empty_table())
            writer.close()
            writer = None
            sink.close()
            sink = None
            _rename(tmp, final)
        except BaseException:
            for closer in (writer, sink):
                if closer is not None:
                    try:
                        closer.close()
                    except Exception:  # noqa: BLE001 - cleaning up after the real error
                        pass
            _remove(tmp)
            raise
        self._written.inc()
        dt = time.perf_counter() - t0
        log.info("scored %s: %d rows in %.1fs -> %s", input_path, rows, dt, final)
        yield {"shard": input_path, "output": final, "rows": rows, "skipped": False, "seconds": round(dt, 3)}


class TextTaskModelHandler(ModelHandler):
    """``RunInference`` handler: each element is a text (or None), each
    inference a dict ``{column: value}`` of the task's outputs."""

    def __init__(self, spec: ModelTaskSpec, min_batch_size: int = 1, max_batch_size: int = 1024):
        super().__init__()
        self.spec = spec
        self._batch = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def load_model(self) -> _Loaded:
        return _Loaded(self.spec.build())

    def run_inference(self, batch: Sequence[Optional[str]], model: _Loaded,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        with model.lock:
            cols = model.task(list(batch))
        names = list(cols)
        values = [cols[n].to_pylist() for n in names]
        return [PredictionResult(example=text, inference=dict(zip(names, row)), model_id=self.spec.model)
                for text, row in zip(batch, zip(*values))]

    def get_num_bytes(self, batch: Sequence[Optional[str]]) -> int:
        return sum(len(t.encode("utf-8")) if t else 0 for t in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return dict(self._batch)


def query_counters(result) -> dict[str, int]:
    """The ``thresher.model`` counters of a finished pipeline result."""
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    try:
        res = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    except Exception:  # noqa: BLE001 - some runners do not report metrics
        return out
    for c in res.get("counters", []):
        v = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(v or 0)
    return out


__all__ = ["ModelTaskSpec", "StageTaskSpec", "acquire_task", "is_remote", "ScoreTableDoFn", "ScoreTables",
           "ScoreShardDoFn", "ShardProgress", "TextTaskModelHandler", "output_path", "query_counters", "NAMESPACE"]
