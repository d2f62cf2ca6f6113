"""The ``thresher`` command line."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from typing import Optional

from thresher.schemas.config import ConfigError
from thresher.schemas.documents import InputError


def default_stages() -> list[dict]:
    """The default pipeline: every registered stage that declares a ``default_order``
    (the stages that need no model beyond what the project's dependencies ship)."""
    from thresher.scorers.registry import default_pipeline
    return default_pipeline()


def _say(line: str) -> None:
    """Write one line to the real stderr (past the worker-log filter, even when muted)."""
    if _REAL_STDERR_FD is None:      # no worker-log filter (in-process use, tests)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        return
    try:
        os.write(_REAL_STDERR_FD, (line + "\n").encode("utf-8", "replace"))
    except OSError:
        sys.__stderr__.write(line + "\n")


def _err(msg: str, code: int = 2) -> int:
    try:
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
    _say(f"thresher: error: {msg}")
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
        if args.input is None and "://" in (args.output or ""):
            return _err("--input is needed with a remote --output (the sample corpus is written locally)")
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
        out_dir = d["output"]["path"]
        with _interruptible() as interrupted:
            stats = api.run(d, beam_args=beam_args, progress=not args.quiet,
                            log=lambda s: print(f"thresher: {s}", file=sys.stderr))
    except (ConfigError, InputError) as e:
        return _err(str(e))
    except api.ReconciliationError as e:
        return _err(str(e), 3)
    except BaseException as e:  # Beam wraps worker errors; Ctrl-C arrives as KeyboardInterrupt or inside them
        if _INTERRUPTED.is_set() or isinstance(e, KeyboardInterrupt) or "KeyboardInterrupt" in str(e)[:2000]:
            return _interrupted_exit(d)
        if isinstance(e, SystemExit):
            raise
        msg = _user_error_from(e)
        if msg:
            return _err(msg)
        return _work_error(e, out_dir)
    _ = interrupted
    if stats.get("dry_run"):
        from thresher.pipelines.cloud import describe
        print("\n".join(f"thresher: {line}" if not line.startswith("  ") else line for line in describe(stats)))
        return 0
    if not args.quiet:
        print_summary(stats, d["output"]["path"])
        if stats.get("stray_files"):
            print(f"thresher: note: {len(stats['stray_files'])} files under kept/ or rejected/ are not this run's and "
                  f"were not counted: {', '.join(stats['stray_files'][:3])}", file=sys.stderr)
    return 0


_INTERRUPTED = threading.Event()


@contextlib.contextmanager
def _interruptible():
    """Ctrl-C: remember it, mute the worker processes' tracebacks, raise KeyboardInterrupt here."""
    def handler(signum, frame):
        _INTERRUPTED.set()
        _MUTE.set()
        raise KeyboardInterrupt
    try:
        prev = signal.signal(signal.SIGINT, handler)
    except ValueError:      # not the main thread (e.g. called from a test thread)
        prev = None
    try:
        yield _INTERRUPTED
    finally:
        if prev is not None:
            signal.signal(signal.SIGINT, prev)


def _interrupted_exit(d: dict) -> int:
    from thresher.pipelines import io
    from thresher.schemas import stats as S
    out = d["output"]["path"]
    done = len(io.list_dir(io.join(out, S.MANIFEST_DIR), ".json"))
    run = io.read_json(io.join(out, S.RUN_FILE)) or {}
    total = len(run.get("shards", [])) or "?"
    _MUTE.set()
    _say(f"thresher: interrupted: {done} of {total} shards complete; rerun the same command to resume")
    return 130


def _work_error(exc: BaseException, out_dir: str) -> int:
    """An error while working: one line naming the stage, shard and rows, the full trace in a log file."""
    import traceback
    text = str(exc)
    m = re.search(r"StageFailure: (stage .+)", text)
    line = m.group(1).strip() if m else f"{type(exc).__name__}: {(text.splitlines() or [''])[0]}"
    line = re.sub(r"\s*\[while running '[^']*'\]\s*$", "", line)
    log = None
    try:
        from thresher.pipelines import io
        from thresher.schemas import stats as S
        log = io.join(out_dir, S.LOG_DIR, time.strftime("error-%Y%m%d-%H%M%S.log", time.gmtime()))
        io.makedirs(io.join(out_dir, S.LOG_DIR))
        body = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) + "\n" + text + "\n"
        with io.open_write(log) as f:          # the output's filesystem (local, s3://, gs://)
            f.write(body.encode("utf-8", "replace"))
    except Exception:  # noqa: BLE001 - the message matters more than the log
        log = None
    return _err(line + (f" (full trace: {log})" if log else ""), 1)


def cmd_inspect(args) -> int:
    from thresher.pipelines.inspect import render, summary
    try:
        s = summary(args.dir, examples=args.examples, by=args.by, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
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
    # a failing stage is reported in one thresher line (the trace goes to a log file)
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore")
    _filter_worker_stderr()


_NOISE = re.compile(r"^(INFO:|DEBUG:|WARNING:__main__:|WARNING:root:apitools|WARNING:apache_beam)")


#: set after Ctrl-C: the worker processes' dying words are not the user's business
_MUTE = threading.Event()
_REAL_STDERR_FD = None


def _filter_worker_stderr() -> None:
    """Beam's local worker processes log at INFO to the inherited stderr; drop that noise."""
    global _REAL_STDERR_FD
    try:
        real = os.dup(2)
        _REAL_STDERR_FD = os.dup(real)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
    except OSError:
        return

    def pump():
        with os.fdopen(r, "rb", buffering=0) as src, os.fdopen(real, "wb", buffering=0) as dst:
            buf = b""
            skipping = False
            erroring = False
            while True:
                chunk = src.read(65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if _MUTE.is_set():
                        continue
                    text = line.decode("utf-8", "replace")
                    if text.startswith("ERROR:apache_beam") or text.startswith("ERROR:root"):
                        erroring = True      # a worker's error report: thresher prints its own line
                        continue
                    if erroring and not text.startswith(("thresher", "[thresher]")):
                        continue
                    erroring = False
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
    if argv[:1] == ["prox"] and argv[1:2] and argv[1] in ("exec", "teach", "train"):
        from thresher.pipelines.commands import prox
        return {"exec": prox.main_exec, "teach": prox.main_teach, "train": prox.main_train}[argv[1]](argv[2:])
    if argv[:2] == ["preselect", "train"]:
        from thresher.pipelines.commands.preselect import main as ps_main
        return ps_main(argv[2:])
    if argv[:1] == ["experiment"]:
        from thresher.pipelines.commands.experiment import main as exp_main
        return exp_main(argv[1:])
    if argv[:1] == ["mates"] and argv[1:2] and argv[1] in ("probe", "fit", "loop"):
        from thresher.pipelines.commands import mates
        return {"probe": mates.main_probe, "fit": mates.main_fit, "loop": mates.main_loop}[argv[1]](argv[2:])

    ap = argparse.ArgumentParser(prog="thresher", description="Curate LM pretraining corpora with Apache Beam.")
    from thresher import __version__
    ap.add_argument("--version", action="version", version=f"thresher {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    fmt = argparse.ArgumentDefaultsHelpFormatter
    sp = sub.add_parser("sample", help="write the built-in sample corpus as Parquet shards", formatter_class=fmt,
                        description="Write the built-in sample corpus (prose, web pages with boilerplate, spam, "
                                    "code, math, other languages, offensive text, exact and near duplicates, "
                                    "empty and oversized documents) as Parquet shards, with the ground truth in "
                                    "DIR/_truth/truth.parquet.")
    sp.add_argument("dir", help="output directory for the shards")
    sp.add_argument("--docs", type=int, default=5000, help="documents to write")
    sp.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same corpus)")
    sp.add_argument("--shards", type=int, default=8, help="number of Parquet shards")

    rp = sub.add_parser("run", help="run a curation pipeline (extra --flags go to Beam)",
                        description="Run a curation pipeline: every input row ends in OUTPUT/kept/ or "
                                    "OUTPUT/rejected/ (with its reason), counts are reconciled, and OUTPUT/stats.json "
                                    "records every stage. Without CONFIG: the default pipeline on --input, or on a "
                                    "freshly generated sample corpus. An output directory holds one run: rerunning "
                                    "the same command resumes it; another config or input needs --overwrite or "
                                    "another directory. Unknown --flags are passed to Beam as pipeline options.")
    rp.add_argument("config", nargs="?", help="YAML config; omitted: the default pipeline")
    rp.add_argument("--input", help="Parquet file, directory or glob (overrides the config)")
    rp.add_argument("--output", help="output directory (overrides the config; default without a config: "
                                     "./thresher-out)")
    rp.add_argument("--text-column", help="text column (overrides input.text_column; default text)")
    rp.add_argument("--id-column", help="id column (overrides input.id_column; default: a column named id, "
                                        "else ids derived from shard and row)")
    rp.add_argument("--runner", help="Beam runner (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ...; "
                                     "default DirectRunner)")
    rp.add_argument("--overwrite", action="store_true",
                    help="remove the files of another run in the output directory first")
    rp.add_argument("--keep-work", action="store_true", help="keep intermediate document rows (_work/)")
    rp.add_argument("--quiet", action="store_true", help="no progress and no summary table")
    rp.add_argument("--sample-docs", type=int, default=5000, help=argparse.SUPPRESS)

    ip = sub.add_parser("inspect", help="DuckDB summary of an output directory", formatter_class=fmt,
                        description="Summarise a run's output with DuckDB: counts by reason, score distributions, "
                                    "a seeded random sample of rejected documents per reason; --by groups them by "
                                    "any column.")
    ip.add_argument("dir", help="a thresher output directory")
    ip.add_argument("--json", action="store_true", help="print the summary as JSON")
    ip.add_argument("--examples", type=int, default=3, help="example documents per reason")
    ip.add_argument("--by", default=None, help="group counts and score quantiles by this column (e.g. language)")
    ip.add_argument("--seed", type=int, default=0, help="seed of the random examples")

    stp = sub.add_parser("stages", help="list stages, their parameters, columns and reasons")
    stp.add_argument("--markdown", action="store_true", help="print the README's stage reference (generated)")
    sub.add_parser("score", help="run one model task over a corpus (see: thresher score --help)")
    tp = sub.add_parser("toxicity", help="toxicity tools (thresher toxicity train --help)")
    tp.add_argument("action", choices=["train"])
    xp = sub.add_parser("prox", help="ProX tools: exec (run a program), teach (make pairs), train (a refining model)")
    xp.add_argument("action", choices=["exec", "teach", "train"])
    pp = sub.add_parser("preselect", help="PreSelect tools (thresher preselect train CONFIG)")
    pp.add_argument("action", choices=["train"])
    sub.add_parser("experiment", help="train small LMs on each arm's selection at equal tokens "
                                      "(thresher experiment CONFIG)")
    mp = sub.add_parser("mates", help="MATES tools: probe (oracle influence), fit (influence model), loop CONFIG")
    mp.add_argument("action", choices=["probe", "fit", "loop"])

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
