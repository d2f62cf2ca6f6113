"""Beam composite transforms.

- :class:`CurateShards` — the whole curation job as one PTransform over the
  plan's shards (PBegin → PCollection of shard manifests). ``thresher run`` uses it.
- :class:`ApplyStages` — local stages over a PCollection of ``pa.Table`` batches,
  for users who bring their own Beam reading and writing.

Only shard descriptors, key-file paths and references to spilled tables cross a shuffle;
document text stays inside the worker that reads its shard.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Optional

import apache_beam as beam
import pyarrow as pa

from thresher.pipelines import engine as E
from thresher.pipelines import io
from thresher.schemas import columns as C


class _ShardDoFn(beam.DoFn):
    def __init__(self, plan: E.Plan, segment: Optional[int] = None):
        self.plan = plan
        self.segment = segment
        self.proc: Optional[E.ShardProcessor] = None

    def setup(self):
        self.proc = E.ShardProcessor(self.plan)
        segs = self.proc.segments
        # a step loads only its own stages' models
        self.proc.setup(segs[self.segment] if self.segment is not None else None)


class ProcessShard(_ShardDoFn):
    """Single-phase: one shard in, its manifest out (outputs written by the worker)."""

    def process(self, shard: io.Shard):
        fp = E.shard_fingerprint(self.plan, shard)
        mpath = E.manifest_path(self.plan.out, shard)
        if E.is_done(mpath, fp):
            yield io.read_json(mpath)
            return
        yield self.proc.process_shard(shard)


class Phase1(_ShardDoFn):
    """Local stages + key extraction, every step in this worker. Emits (global stage index, key file path)."""

    def process(self, shard: io.Shard):
        yield from self.proc.phase1(shard).items()


KEYS_TAG = "keys"


class RunStep(_ShardDoFn):
    """One step of a shard (``segment``): reads the input or the previous step's work rows
    from the output filesystem, runs the step's stages, writes its work rows. Main output:
    the shard (for the next step) or, for the last step without global stages, its
    manifest; tagged output ``keys``: (global stage index, key file path)."""

    def process(self, shard: io.Shard):
        segs = self.proc.segments
        j = self.segment
        for k, path in self.proc.run_segment(shard, j).items():
            yield beam.pvalue.TaggedOutput(KEYS_TAG, (k, path))
        if j == len(segs) - 1 and not self.proc.has_global:
            yield io.read_json(E.manifest_path(self.plan.out, shard))
        else:
            yield shard


class Phase2(_ShardDoFn):
    """Decisions applied to a shard's work rows; needs no model, so none is loaded."""

    def setup(self):
        self.proc = E.ShardProcessor(self.plan)
        self.proc.build()

    def process(self, element):
        from thresher.pipelines import spill
        _, grouped = element
        shards = list(grouped["shard"])
        decisions = spill.load_decisions(grouped["dec"]) if shards else []
        for shard in shards:
            yield self.proc.phase2(shard, decisions)


def _gather_compute(plan: E.Plan, k: int):
    def fn(paths, *prior):
        return E.compute_global(plan, k, list(paths), list(prior))
    return fn


def gather_step(plan: E.Plan, k: int, key_paths, prior: list, stage_id: str):
    """The one-worker global step: every key file of stage ``k`` gathered, ``compute`` on one
    worker, the decisions spilled by shard → ``(shard, (k, ref))``. ``prior``: the refs of
    earlier global stages (side-input lists)."""
    side = [beam.pvalue.AsList(d) for d in prior]
    return (key_paths | f"Gather[{stage_id}]" >> beam.combiners.ToList()
            | f"Decide[{stage_id}]" >> beam.Map(_gather_compute(plan, k), *side)
            | f"Spill[{stage_id}]" >> beam.FlatMap(_spill_decisions(plan, k, stage_id)))


def _spill_decisions(plan: E.Plan, k: int, stage_id: str):
    """A global step's ``(k, table)`` pieces → per-shard refs ``(shard, (k, ref))``: the tables
    go to ``_work/_shuffle/``, only refs cross the runner (see :mod:`spill`)."""
    def fn(kd):
        from thresher.pipelines import spill
        kk, table = kd
        yield from spill.spill_decisions(plan.out, stage_id, kk, table)
    return fn


def _finish_fn(plan: E.Plan, t0: float):
    def fn(manifests):
        from thresher.pipelines import api
        return api.finish(plan, time.time() - t0)["reconciled"]
    return fn


def _resolve(path: str):
    """``"module:function"`` -> the function."""
    import importlib
    mod, _, fn = path.partition(":")
    return getattr(importlib.import_module(mod), fn)


def hinted(transform: beam.PTransform, accelerator: Optional[str]) -> beam.PTransform:
    """``transform`` with Beam's accelerator resource hint (runners without GPUs ignore it)."""
    return transform.with_resource_hints(accelerator=accelerator) if accelerator else transform


class CurateShards(beam.PTransform):
    """The thresher job: shards → outputs + manifests (PBegin → PCollection[dict]).

    Without global stages and model steps: one ParDo per shard. A model stage configured
    with an ``accelerator`` hint gets a ParDo of its own with that resource hint; each step
    reads its shard's rows from the previous step's work file (text never crosses a
    shuffle). Global stages cross the shuffle as key-file paths and references to tables
    written under ``_work/_shuffle/`` (:mod:`spill`): no table crosses the runner."""

    def __init__(self, plan: E.Plan, finalize: bool = True):
        super().__init__()
        self.plan = plan
        self.finalize = finalize

    def expand(self, pbegin):
        if not self.finalize:
            return self._curate(pbegin)
        # in a user's own pipeline: the same bookkeeping as `thresher run` (the directory
        # check before any work, stats.json, reconciliation and cleanup after the last shard)
        from thresher.pipelines import api
        api._check_output_dir(self.plan, self.plan.cfg)
        t0 = time.time()
        manifests = self._curate(pbegin)
        _ = (manifests
             | "AllManifests" >> beam.combiners.ToList()
             | "Finish" >> beam.Map(_finish_fn(self.plan, t0)))
        return manifests

    def _curate(self, pbegin):
        plan = self.plan
        proc = E.ShardProcessor(plan)
        stages = proc.build()
        segs = proc.segments
        shards = (pbegin
                  | "Shards" >> beam.Create(plan.shards)
                  | "Spread" >> beam.Reshuffle())
        gidx = [k for k, s in enumerate(stages) if s.kind == "global"]
        if not gidx and len(segs) == 1:
            return shards | "Curate" >> beam.ParDo(ProcessShard(plan))

        if len(segs) == 1:
            keys = shards | "LocalStagesAndKeys" >> beam.ParDo(Phase1(plan))
            last = shards
        else:
            key_parts = []
            cur = shards
            for seg in segs:
                ids = ",".join(stages[k].id for k in range(seg.lo, seg.hi)) or "none"
                res = cur | f"Step{seg.index}[{ids}]" >> hinted(
                    beam.ParDo(RunStep(plan, seg.index)).with_outputs(KEYS_TAG, main="out"), seg.accelerator)
                key_parts.append(res[KEYS_TAG])
                cur = res["out"]
            if not gidx:
                return cur
            keys = tuple(key_parts) | "AllKeys" >> beam.Flatten()
            last = cur
        decisions = []
        for k in gidx:
            stage = stages[k]
            paths = keys | f"KeysOf[{stage.id}]" >> beam.Filter(lambda kv, k=k: kv[0] == k) \
                | f"Path[{stage.id}]" >> beam.Map(lambda kv: kv[1])
            step = stage.distributed_step()
            # every global step gives (shard, (k, ref)) decision refs; earlier stages'
            # refs reach later ones as side-input lists
            if step is not None:
                decisions.append(_resolve(step)(plan, k, paths, decisions))
            else:
                decisions.append(gather_step(plan, k, paths, decisions, stage.id))
        all_dec = tuple(decisions) | "AllDecisions" >> beam.Flatten()
        by_shard = last | "ShardKey" >> beam.Map(lambda s: (s.index, s))
        return ({"shard": by_shard, "dec": all_dec}
                | "JoinDecisions" >> beam.CoGroupByKey()
                | "ApplyAndWrite" >> beam.ParDo(Phase2(plan)))


class ApplyStages(beam.PTransform):
    """Local stages over ``pa.Table`` batches: adds score columns and ``reason``.

    Rows are not dropped here: ``reason`` is null for rows every stage kept. Use
    e.g. ``| beam.Map(lambda t: t.filter(pc.is_null(t['reason'])))`` to keep only
    survivors. Global stages are not allowed (they need :class:`CurateShards`).
    """

    def __init__(self, stages: list[dict], text_column: str = "text", id_column: Optional[str] = None):
        super().__init__()
        self.stage_specs = stages
        self.text_column = text_column
        self.id_column = id_column

    def expand(self, pcoll):
        config = {"input": {"path": "<pcollection>", "text_column": self.text_column,
                            "id_column": self.id_column},
                  "output": {"path": "<none>"}, "stages": self.stage_specs}
        return pcoll | beam.ParDo(_ApplyStagesFn(config))


class _ApplyStagesFn(beam.DoFn):
    def __init__(self, config: dict):
        self.config = config

    def setup(self):
        from thresher.schemas.config import parse_config
        cfg = parse_config(self.config)
        self.proc = E.ShardProcessor(E.Plan(cfg.to_dict(), [], "inline"))
        if self.proc.has_global:
            raise ValueError("ApplyStages takes local stages only; global stages need CurateShards")
        self.proc.setup()
        self.shard = io.Shard(index=0, path="<pcollection>", rel="pcoll", name="pcoll", num_rows=0,
                              size=0, fingerprint="")
        self.row0 = 0

    def process(self, table: pa.Table) -> Iterable[pa.Table]:
        timers: dict[str, float] = {}
        for batch in table.to_batches():
            out, reasons, _, _ = self.proc.run_batch(self.shard, batch, self.row0, timers)
            self.row0 += batch.num_rows
            yield out.append_column(pa.field(C.REASON, C.REASON_TYPE), pa.array(reasons, pa.string()))
