"""Dataflow Flex Template entry point: a thresher job from the template's parameters.

The launcher image (``deploy/dataflow/Dockerfile``) runs this file as
``python launch.py --config=gs://... [--input=...] [--output=...] [--overwrite=true]
[--keep_work=true] <pipeline options>``: the template's own parameters are the ones in
``PARAMETERS`` (and ``metadata.json``); every other ``--flag`` (project, region, staging and temp
locations, ``sdk_container_image``, machine types, ...) goes to Beam unchanged.

Unlike ``thresher run``, the launcher does not wait for the job: the job's bookkeeping (the
output directory's identity check, then ``stats.json``, the reconciliation and the removal of
``_work/``) is part of the job itself (``CurateShards`` with ``finalize=True``): the directory is
checked here, before the job is submitted, and the job's last step writes ``stats.json`` on a
worker. ``--dry_run=True`` builds the job and prints its steps without submitting it.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Optional

#: the template's parameters (metadata.json lists the same names)
PARAMETERS = ("config", "input", "output", "overwrite", "keep_work")


def _bool(value: str) -> bool:
    v = str(value).strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The template's parameters, and the rest (pipeline options for Beam)."""
    ap = argparse.ArgumentParser(prog="launch.py", allow_abbrev=False,
                                 description="thresher as a Dataflow Flex Template")
    ap.add_argument("--config", required=True, help="the thresher YAML config (gs:// or a path in the image)")
    ap.add_argument("--input", help="Parquet file, directory or glob (overrides the config's input)")
    ap.add_argument("--output", help="output directory (overrides the config's output)")
    ap.add_argument("--overwrite", type=_bool, default=False, help="remove another run's files in the output first")
    ap.add_argument("--keep_work", type=_bool, default=False, help="keep the intermediate rows under _work/")
    return ap.parse_known_args(argv)


def fetch_config(path: str, dest_dir: Optional[str] = None) -> str:
    """A local copy of the config (read through Beam's filesystems when it is remote)."""
    if "://" not in path:
        return path
    from apache_beam.io.filesystems import CompressionTypes, FileSystems
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        data = f.read()
    dest = os.path.join(dest_dir or tempfile.mkdtemp(prefix="thresher-template-"),
                        path.rstrip("/").rsplit("/", 1)[-1] or "config.yaml")
    with open(dest, "wb") as f:
        f.write(data)
    return dest


def build_config(args: argparse.Namespace, beam_args: list[str]) -> dict:
    """The run's config: the template's config file with the parameters applied."""
    from thresher.pipelines import api
    overrides = {"input": args.input, "output": args.output}
    runner = next((a.split("=", 1)[1] for a in beam_args if a.startswith("--runner=")), None)
    d = api.load(fetch_config(args.config), **overrides).to_dict()
    d["runner"] = runner or "DataflowRunner"
    if args.overwrite:
        d["output"]["overwrite"] = True
    if args.keep_work:
        d["output"]["keep_work"] = True
    return d


def main(argv: Optional[list[str]] = None) -> int:
    from thresher.pipelines import api, cloud
    from thresher.pipelines import io as tio
    from thresher.pipelines.cli import _err
    from thresher.schemas.config import ConfigError
    from thresher.schemas.documents import InputError

    args, beam_args = parse(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = build_config(args, beam_args)         # the runner goes into the config
        beam_args = [a for a in beam_args if not a.startswith("--runner=")]
        tio.set_options(beam_args, cfg.get("pipeline_options"))
        p = api.plan(cfg)
        beam_args = cloud.worker_package_args(p.cfg, beam_args, log=lambda s: print(f"thresher: {s}"))
        if cloud.is_dry_run(p.cfg, beam_args):
            lines = cloud.describe(cloud.dry_run(p, beam_args))
            print("\n".join(ln if ln.startswith("  ") else f"thresher: {ln}" for ln in lines))
            return 0
        import apache_beam as beam

        from thresher.pipelines.transforms import CurateShards
        bp = beam.Pipeline(options=api.pipeline_options(p.cfg, beam_args))
        _ = bp | "Thresher" >> CurateShards(p)      # checks the output directory now, writes stats.json last
        bp.run()
    except (ConfigError, InputError) as e:
        return _err(str(e))
    print(f"thresher: job submitted: {len(p.shards)} shards into {p.out} (stats.json when it ends)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
