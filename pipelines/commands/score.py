"""``thresher score TASK --model PATH --input DIR_OR_GLOB --output DIR [...]``.

Reads Parquet shards (a file, a directory of ``*.parquet``, or a glob; local
paths or Beam filesystem URLs such as ``gs://``), runs a model task on the text column through the Beam wrapper, and
writes one output file per input shard (same name) holding the input rows plus
the task's columns. Each output is written under a temporary name and renamed.
Existing outputs are skipped (a rerun finishes the rest) unless
``--overwrite``. Unknown ``--flags`` are passed to Beam as pipeline options
(e.g. ``--direct_num_workers=2 --direct_running_mode=multi_processing``).

Tasks: causal_lm_loss (lm_loss_sum, lm_tokens, lm_chars, lm_bpc),
encoder_score (score | score_<i>), generate (generated).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Optional

# Beam's apitools warning is dropped by the filter thresher.pipelines installs at import.

TASK_NAMES = ("causal_lm_loss", "encoder_score", "generate")
#: the model stage that runs each task
STAGE_OF_TASK = {"causal_lm_loss": "lm_loss", "encoder_score": "classifier", "generate": "generate"}
_LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
_TASK_ONLY = {
    "stride": ("causal_lm_loss",), "prepend_bos": ("causal_lm_loss",),
    "label": ("encoder_score",),
    "max_new_tokens": ("generate",), "stop": ("generate",), "system": ("generate",),
    "prompt": ("generate",), "template": ("generate",),
}


def _fail(msg: str) -> int:
    """A user mistake: one line, exit code 2 (no traceback)."""
    sys.stderr.write(f"thresher: error: {msg}\n")
    return 2


def resolve_inputs(spec: str) -> list[str]:
    """Sorted Parquet files named by a file, a directory, or a glob (local or a
    Beam filesystem URL such as ``gs://bucket/dir``)."""
    from thresher.pipelines.io import discover
    from thresher.schemas.documents import InputError
    try:
        files = discover(os.path.expanduser(spec))
    except InputError as e:
        raise SystemExit(f"thresher score: {e}") from None
    except Exception as e:  # noqa: BLE001 - report any filesystem error as a usage error
        raise SystemExit(f"thresher score: cannot list {spec!r}: {e}") from None
    if not files:
        raise SystemExit(f"thresher score: no Parquet files under {spec!r}")
    return _unique_names(files)


def _unique_names(files: list[str]) -> list[str]:
    names: dict[str, str] = {}
    for p in files:
        b = p.rstrip("/").rsplit("/", 1)[-1]
        if b in names:
            raise SystemExit(f"thresher score: two inputs share the file name {b!r} ({names[b]}, {p}); "
                             f"outputs are named after inputs")
        names[b] = p
    return files


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError("use auto, cpu, cuda or cuda:N")
    return value


def _positive(value: str) -> int:
    v = int(value)
    if v < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="thresher score", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=TASK_NAMES)
    ap.add_argument("--model", required=True, help="HF checkpoint dir, thresher head dir, or fastText .bin")
    ap.add_argument("--head", default=None, help="thresher head dir to put on the encoder at --model")
    ap.add_argument("--input", required=True, help="Parquet file, directory or glob (local or gs://…)")
    ap.add_argument("--output", required=True, help="output directory")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--device", type=_device, default="auto", help="auto|cpu|cuda|cuda:N (default auto)")
    ap.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                    help="compute dtype (auto: bf16 autocast on CUDA, fp32 on CPU)")
    ap.add_argument("--weights-dtype", choices=("fp32", "bf16", "fp16"), default=None)
    ap.add_argument("--max-tokens-per-batch", type=_positive, default=None,
                    help="padded tokens per batch (batch size × longest); default 16384 CPU / 32768 CUDA")
    ap.add_argument("--max-batch-size", type=_positive, default=None)
    ap.add_argument("--max-length", type=_positive, default=None,
                    help="tokens per model input (context window / encoder length / document in a prompt)")
    ap.add_argument("--truncation", choices=("head", "head_tail", "windows"), default=None,
                    help="default: windows for causal_lm_loss, head otherwise")
    ap.add_argument("--max-doc-tokens", type=_positive, default=None,
                    help="with --truncation windows: score only the first N tokens of each document")
    ap.add_argument("--column-prefix", default="", help="prefix for the output column names")
    ap.add_argument("--stride", type=_positive, default=None, help="causal_lm_loss: new tokens per window")
    ap.add_argument("--no-bos", dest="prepend_bos", action="store_false", default=None,
                    help="causal_lm_loss: do not prepend BOS (the first token is then not scored)")
    ap.add_argument("--label", default=None, help="encoder_score: keep one output (label name or index)")
    ap.add_argument("--max-new-tokens", type=_positive, default=None, help="generate (default 256)")
    ap.add_argument("--stop", action="append", default=None, help="generate: stop string (repeatable)")
    ap.add_argument("--system", default=None, help="generate: system message")
    ap.add_argument("--prompt", default=None, help="generate: user message, {text} = the document")
    ap.add_argument("--template", default=None, help="generate: auto|chat|fallback|none|custom with {user}")
    ap.add_argument("--batch-rows", type=_positive, default=5000, help="rows read and scored at a time")
    ap.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    ap.add_argument("--compression", default="zstd")
    ap.add_argument("--runner", default="FnApiRunner",
                    help="Beam runner (default FnApiRunner: the local runner, no Prism download)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = build_parser()
    args, beam_args = ap.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    bad = [a for a in beam_args if not a.startswith("--")]
    if bad:
        ap.error(f"unrecognized arguments: {' '.join(bad)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)   # thresher's own INFO lines only

    model = os.path.abspath(os.path.expanduser(args.model))
    if not os.path.exists(model) and args.runner not in _LOCAL_RUNNERS:  # e.g. baked into the workers' image
        logging.warning("model %s is not on this machine; the workers must have it", model)
    from thresher.pipelines import io
    io.set_options(beam_args)      # s3:// / gs:// listings in this process need the run's options
    inputs = resolve_inputs(args.input)
    output = args.output if "://" in args.output else os.path.abspath(os.path.expanduser(args.output))
    if any(p.rstrip("/").rsplit("/", 1)[0] == output.rstrip("/") for p in inputs):
        ap.error("--output must differ from the input directory")

    # the command runs the model stage of its task (the same parameters, validation, loading
    # and process-wide model cache as `thresher run`), writing every output of the task
    params = {"model": model, "device": args.device, "dtype": args.dtype, "weights_dtype": args.weights_dtype,
              "max_tokens_per_batch": args.max_tokens_per_batch, "max_batch_size": args.max_batch_size,
              "max_length": args.max_length, "truncation": args.truncation, "max_doc_tokens": args.max_doc_tokens}
    if args.head is not None:
        if args.task != "encoder_score":
            ap.error("--head applies to encoder_score only")
        params["head"] = os.path.abspath(os.path.expanduser(args.head))
    for name, tasks in _TASK_ONLY.items():
        v = getattr(args, name)
        if v is None:
            continue
        if args.task not in tasks:
            ap.error(f"--{name.replace('_', '-')} applies to {', '.join(tasks)} only")
        params[name] = int(v) if name == "label" and str(v).isdigit() else v
    from thresher.scorers.base import ParamError
    from thresher.scorers.registry import get as stage_class
    cls = stage_class(STAGE_OF_TASK[args.task])
    try:
        stage = cls(**{k: v for k, v in params.items() if v is not None})
        import pyarrow as pa

        from thresher.scorers.base import PreflightContext
        stage.preflight(PreflightContext(input_schema=pa.schema([]), columns=frozenset(),
                                         local=args.runner in _LOCAL_RUNNERS))
    except ParamError as e:
        return _fail(f"--{e.key.replace('_', '-')}: {e.message}")

    import pyarrow.parquet as pq

    from thresher.pipelines.model_beam import _open_read

    with _open_read(inputs[0]) as f:
        first = pq.ParquetFile(f).schema_arrow
    if args.text_column not in first.names:
        ap.error(f"{inputs[0]}: no column {args.text_column!r} (columns: {first.names})")

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from thresher.pipelines.model_beam import ScoreShardDoFn, StageTaskSpec, query_counters

    spec = StageTaskSpec.make(cls.name, {k: v for k, v in params.items() if v is not None},
                              text_column=args.text_column, column_prefix=args.column_prefix or None)
    opts = PipelineOptions([f"--runner={args.runner}", *beam_args])
    t0 = time.perf_counter()
    p = beam.Pipeline(options=opts)
    _ = (p
         | "Shards" >> beam.Create(inputs)
         | "Spread" >> beam.Reshuffle()
         | "Score" >> beam.ParDo(ScoreShardDoFn(spec, output, batch_rows=args.batch_rows,
                                                overwrite=args.overwrite, compression=args.compression)))
    result = p.run()
    result.wait_until_finish()
    wall = time.perf_counter() - t0
    c = query_counters(result)
    docs = c.get("docs", 0)
    summary = {
        "task": args.task, "model": model, "shards": len(inputs), "written": c.get("shards_written", 0),
        "skipped": c.get("shards_skipped", 0), "docs": docs, "doc_tokens": c.get("doc_tokens", 0),
        "wall_s": round(wall, 2), "docs_per_s": round(docs / wall, 1) if wall else None,
        "tokens_per_s": round(c.get("doc_tokens", 0) / wall, 1) if wall else None,
        "padding_waste": round(1 - c["processed_tokens"] / c["padded_tokens"], 4) if c.get("padded_tokens") else None,
        "oom_events": c.get("oom_events", 0), "model_s": round(c.get("model_ms", 0) / 1000, 2),
        "output": output,
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
