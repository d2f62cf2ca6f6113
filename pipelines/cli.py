"""The ``thresher`` command line."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Optional

from thresher.schemas.config import ConfigError
from thresher.schemas.documents import InputError


def default_stages() -> list[dict]:
    """The default pipeline: every registered stage that declares a ``default_order``
    (the stages that need no model beyond what the project's dependencies ship)."""
    from thresher.scorers.registry import default_pipeline
    return default_pipeline()


def _err(msg: str, code: int = 2) -> int:
    sys.stderr.write(f"thresher: error: {msg}\n")
    return code


def _user_error_from(exc: BaseException) -> Optional[str]:
    """Beam wraps worker exceptions; find our own error message inside."""
    text = str(exc)
    for name in ("InputError", "ConfigError", "ParamError"):
        m = re.search(rf"{name}: (.+)", text)
        if m:
            return m.group(1).strip().splitlines()[0]
    return None


def print_summary(stats: dict, out: str, stream=sys.stdout) -> None:
    w = stream.write
    w(f"\nthresher: {stats['input_rows']:,} documents in {stats['shards']} shards → "
      f"kept {stats['kept_rows']:,}, rejected {stats['rejected_rows']:,} "
      f"({stats['wall_seconds']:.1f}s, {stats.get('docs_per_second') or 0:,.0f} docs/s)\n\n")
    w(f"{'stage':<20} {'in':>9} {'kept':>9} {'rejected':>9} {'rej %':>7} {'seconds':>8}\n")
    for st in stats["stages"]:
        pct = 100.0 * st["rejected"] / st["docs_in"] if st["docs_in"] else 0.0
        w(f"{st['id']:<20} {st['docs_in']:>9,} {st['kept']:>9,} {st['rejected']:>9,} {pct:>6.1f}% "
          f"{st['seconds']:>8.2f}\n")
        for r, v in sorted(st["reasons"].items(), key=lambda kv: -kv[1]["docs"]):
            w(f"  {r:<38} {v['docs']:>9,}\n")
    w(f"\nreconciled: input {stats['input_rows']:,} = kept {stats['kept_rows']:,} + rejected "
      f"{stats['rejected_rows']:,} → {stats['reconciled']}\n")
    w(f"outputs: {out}/kept/*.parquet, {out}/rejected/*.parquet, {out}/stats.json "
      f"(inspect: thresher inspect {out})\n")


def cmd_sample(args) -> int:
    from thresher.pipelines.sample import write_sample
    info = write_sample(args.dir, n_docs=args.docs, seed=args.seed, n_shards=args.shards)
    print(f"wrote {info['docs']:,} documents in {info['shards']} shards to {args.dir} "
          f"(ground truth: {info['truth']})")
    return 0


def cmd_run(args, beam_args: list[str]) -> int:
    from thresher.pipelines import api

    overrides = {}
    if args.config is None:
        raw: dict = {"stages": default_stages()}
        if args.input is None:
            sample_dir = os.path.join(args.output or "thresher-out", "_sample")
            if not os.path.isdir(sample_dir) or not any(f.endswith(".parquet") for f in os.listdir(sample_dir)):
                from thresher.pipelines.sample import write_sample
                info = write_sample(sample_dir, n_docs=args.sample_docs, seed=0, n_shards=8)
                print(f"thresher: no config and no --input: generated the sample corpus "
                      f"({info['docs']:,} documents) in {sample_dir}", file=sys.stderr)
            raw["input"] = {"path": os.path.join(sample_dir, "*.parquet"), "id_column": "id"}
        raw.setdefault("output", args.output or "thresher-out")
    else:
        raw = args.config
    if args.input:
        overrides["input"] = args.input
    if args.output:
        overrides["output"] = args.output
    try:
        cfg = api.load(raw, **overrides)
        d = cfg.to_dict()
        if args.text_column:
            d["input"]["text_column"] = args.text_column
        if args.id_column:
            d["input"]["id_column"] = args.id_column
        if args.overwrite:
            d["output"]["overwrite"] = True
        if args.runner:
            d["runner"] = args.runner
        if args.keep_work:
            d["output"]["keep_work"] = True
        t0 = time.time()
        stats = api.run(d, beam_args=beam_args, progress=not args.quiet,
                        log=lambda s: print(f"thresher: {s}", file=sys.stderr))
    except (ConfigError, InputError) as e:
        return _err(str(e))
    except api.ReconciliationError as e:
        return _err(str(e), 3)
    except Exception as e:  # Beam wraps worker errors
        msg = _user_error_from(e)
        if msg:
            return _err(msg)
        raise
    if not args.quiet:
        print_summary(stats, d["output"]["path"])
    _ = t0
    return 0


def cmd_inspect(args) -> int:
    from thresher.pipelines.inspect import render, summary
    try:
        s = summary(args.dir, examples=args.examples)
    except FileNotFoundError as e:
        return _err(str(e))
    if args.json:
        print(json.dumps(s, indent=2, default=str))
    else:
        print(render(s))
    return 0


def cmd_stages(args) -> int:
    from thresher.pipelines import registry
    if getattr(args, "markdown", False):
        from thresher.pipelines.stage_docs import markdown
        sys.stdout.write(markdown())
        return 0
    for name in registry.names():
        cls = registry.stage_class(name)
        print(f"{name} ({cls.kind}): {cls.doc}")
        for p, spec in cls.params.items():
            default = "required" if spec.required else repr(spec.default)
            print(f"    {p}: {default}  {spec.doc}")
        if cls.columns:
            print(f"    columns: {', '.join(c.name for c in cls.columns)}")
        if cls.reason_rules():
            print(f"    reasons: {', '.join(f'{name}.{r}' for r in cls.reason_rules())}")
    return 0


def _quiet_logs() -> None:
    import logging
    import warnings
    if os.environ.get("THRESHER_VERBOSE"):
        return
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    _filter_worker_stderr()


_NOISE = re.compile(r"^(INFO:|DEBUG:|WARNING:__main__:|WARNING:root:apitools|WARNING:apache_beam)")


def _filter_worker_stderr() -> None:
    """Beam's local worker processes log at INFO to the inherited stderr; drop that noise."""
    import threading
    try:
        real = os.dup(2)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
    except OSError:
        return

    def pump():
        with os.fdopen(r, "rb", buffering=0) as src, os.fdopen(real, "wb", buffering=0) as dst:
            buf = b""
            skipping = False
            while True:
                chunk = src.read(65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    text = line.decode("utf-8", "replace")
                    if _NOISE.match(text):
                        skipping = True
                        continue
                    if skipping and (line.startswith((b" ", b"\t")) or not line):
                        continue
                    skipping = False
                    dst.write(line + b"\n")
            if buf:
                dst.write(buf)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    restore = os.dup(real)

    def finish():
        try:
            sys.stderr.flush()
            os.dup2(restore, 2)   # closes the pipe's write end: the pump drains and stops
            sys.stderr = sys.__stderr__
            t.join(timeout=5)
        except OSError:
            pass

    import atexit
    atexit.register(finish)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # sub-commands implemented elsewhere take their own arguments
    if argv[:1] == ["score"]:
        from thresher.pipelines.commands.score import main as score_main
        return score_main(argv[1:])
    if argv[:2] == ["toxicity", "train"]:
        from thresher.pipelines.commands.toxicity import main_train
        return main_train(argv[2:])
    if argv[:2] == ["preselect", "train"]:
        from thresher.pipelines.commands.preselect import main as ps_main
        return ps_main(argv[2:])

    ap = argparse.ArgumentParser(prog="thresher", description="Curate LM pretraining corpora with Apache Beam.")
    from thresher import __version__
    ap.add_argument("--version", action="version", version=f"thresher {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    sp = sub.add_parser("sample", help="write the built-in sample corpus as Parquet shards")
    sp.add_argument("dir")
    sp.add_argument("--docs", type=int, default=5000)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--shards", type=int, default=8)

    rp = sub.add_parser("run", help="run a curation pipeline (extra --flags go to Beam)")
    rp.add_argument("config", nargs="?", help="YAML config; omitted: the default pipeline")
    rp.add_argument("--input", help="Parquet file, directory or glob (overrides the config)")
    rp.add_argument("--output", help="output directory (overrides the config)")
    rp.add_argument("--text-column")
    rp.add_argument("--id-column")
    rp.add_argument("--runner", help="Beam runner (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ...)")
    rp.add_argument("--overwrite", action="store_true", help="reuse an output directory written with another config")
    rp.add_argument("--keep-work", action="store_true", help="keep intermediate files (_work/)")
    rp.add_argument("--quiet", action="store_true")
    rp.add_argument("--sample-docs", type=int, default=5000, help=argparse.SUPPRESS)

    ip = sub.add_parser("inspect", help="DuckDB summary of an output directory")
    ip.add_argument("dir")
    ip.add_argument("--json", action="store_true")
    ip.add_argument("--examples", type=int, default=3)

    stp = sub.add_parser("stages", help="list stages, their parameters, columns and reasons")
    stp.add_argument("--markdown", action="store_true", help="print the README's stage reference (generated)")
    sub.add_parser("score", help="run one model task over a corpus (see: thresher score --help)")
    tp = sub.add_parser("toxicity", help="toxicity tools (thresher toxicity train --help)")
    tp.add_argument("action", choices=["train"])
    pp = sub.add_parser("preselect", help="PreSelect tools (thresher preselect train CONFIG)")
    pp.add_argument("action", choices=["train"])

    args, rest = ap.parse_known_args(argv)
    if args.cmd != "run" and rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.cmd == "sample":
        return cmd_sample(args)
    if args.cmd == "run":
        return cmd_run(args, rest)
    if args.cmd == "inspect":
        return cmd_inspect(args)
    if args.cmd == "stages":
        return cmd_stages(args)
    return 2


def entry() -> None:
    _quiet_logs()
    sys.exit(main())


if __name__ == "__main__":
    entry()
