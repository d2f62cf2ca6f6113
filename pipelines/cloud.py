"""What a run on a cluster needs from the launching process: thresher on the workers, and the
dry run.

**The worker package.** A runner whose workers start from a stock Beam image (Dataflow
without ``--sdk_container_image``; Flink, Spark or a portable job service with ``DOCKER``
workers and no image of their own) has no thresher on its workers. For those,
:func:`worker_package_args` writes a wheel of the thresher that is running here (the same
files, whatever the install: editable or not) and adds ``--extra_packages=<wheel>``; Beam
stages it, and the workers' boot installs it with its dependencies from the package index. It
is skipped when the job already says how its workers get their software:
``--sdk_container_image`` / ``--environment_config`` (an image built from ``deploy/Dockerfile``,
which is what large and model-stage jobs should use), ``--extra_packages``, ``--setup_file``
or ``--prebuild_sdk_container_engine``, and for ``LOOPBACK`` / ``EXTERNAL`` environments
(workers in processes that import the thresher installed there).

**The dry run** (``--dry_run=True``, any runner): the plan (config, every shard footer,
preflight) and the Beam job are built, nothing runs, and nothing under the output path is read
or written: the directory's identity check needs the real output filesystem, and a dry run is
for checking a job offline (no credentials, no network), so it is left to the real
submission. On Dataflow the job is built by Beam's DataflowRunner itself (``result.job``
holds it: the pipeline proto, the environments with their staged files); on other runners the
pipeline proto is built with the runner's default environment. The result lists the steps of
the thresher transform with their resource hints.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import tempfile
import zipfile
from collections.abc import Callable
from typing import Any, Optional

from thresher.pipelines import engine as E

#: the packages of thresher, as the import system sees them (``package-dir`` maps them to
#: the repository's top-level folders; an installed wheel has them under ``thresher/``)
PACKAGES = ("thresher", "thresher.pipelines", "thresher.scorers", "thresher.schemas")
DATAFLOW_RUNNERS = {"DataflowRunner", "TestDataflowRunner"}
PORTABLE_RUNNERS = {"FlinkRunner", "SparkRunner", "PortableRunner"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd", ".dylib")
_EPOCH = (1980, 1, 1, 0, 0, 0)
ACCELERATOR_URN = "beam:resources:accelerator:v1"


def _options(cfg, beam_args: Optional[list[str]]):
    from thresher.pipelines.api import pipeline_options
    return pipeline_options(cfg, beam_args)


def runner_name(opts) -> str:
    from apache_beam.options.pipeline_options import StandardOptions
    r = opts.view_as(StandardOptions).runner or "DirectRunner"
    r = r if isinstance(r, str) else type(r).__name__
    r = r.rsplit(".", 1)[-1]
    return r if r.endswith("Runner") else r + "Runner"


def needs_worker_package(opts) -> bool:
    """Do this job's workers start without thresher (see the module docstring)?"""
    from apache_beam.options.pipeline_options import PortableOptions, SetupOptions, WorkerOptions
    setup = opts.view_as(SetupOptions)
    if setup.extra_packages or setup.setup_file or setup.prebuild_sdk_container_engine:
        return False            # the user says how the workers get their software
    image = opts.view_as(WorkerOptions).sdk_container_image
    runner = runner_name(opts)
    if runner in DATAFLOW_RUNNERS:
        return not image
    if runner in PORTABLE_RUNNERS:
        portable = opts.view_as(PortableOptions)
        env = (portable.environment_type or "").upper()
        if not env:
            env = "LOOPBACK" if _local_master(opts, runner) else "DOCKER"
        return env == "DOCKER" and not (image or portable.environment_config)
    return False


def _local_master(opts, runner: str) -> bool:
    """Flink's ``[local]``/``[auto]`` and Spark's ``local[...]`` masters run LOOPBACK by default."""
    import re

    from apache_beam.options.pipeline_options import FlinkRunnerOptions, SparkRunnerOptions
    if runner == "FlinkRunner":
        return opts.view_as(FlinkRunnerOptions).flink_master in ("[local]", "[auto]")
    if runner == "SparkRunner":
        return bool(re.match(r"^local(\[.+\])?$", opts.view_as(SparkRunnerOptions).spark_master_url or ""))
    return False


def worker_package_args(cfg, beam_args: Optional[list[str]], log: Callable[[str], None] = lambda s: None,
                        dest: Optional[str] = None) -> list[str]:
    """``beam_args`` plus ``--extra_packages=<a wheel of this thresher>`` where the workers need it."""
    beam_args = list(beam_args or [])
    opts = _options(cfg, beam_args)
    if not needs_worker_package(opts):
        return beam_args
    wheel = build_wheel(dest or tempfile.mkdtemp(prefix="thresher-worker-"))
    log(f"staging {os.path.basename(wheel)} for the workers (--extra_packages); give the workers an image with "
        f"thresher (--sdk_container_image, deploy/Dockerfile) to skip this")
    if any(st.get("name") in _model_stage_names() for st in cfg.to_dict()["stages"]):
        log("note: model stages need torch and transformers on the workers, which the wheel does not pull in: "
            "use a worker image (deploy/Dockerfile or deploy/Dockerfile.gpu)")
    return beam_args + [f"--extra_packages={wheel}"]


def _model_stage_names() -> set[str]:
    from thresher.pipelines import registry
    out = set()
    for name in registry.names():
        cls = registry.stage_class(name)
        if "accelerator" in getattr(cls, "params", {}):
            out.add(name)
    return out


# -- the wheel -------------------------------------------------------------------------------

def _files() -> dict[str, str]:
    """Archive name -> file on disk for every file of thresher's packages."""
    out: dict[str, str] = {}
    for pkg in PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"cannot find the {pkg} package to stage for the workers")
        root = list(spec.submodule_search_locations)[0]
        prefix = pkg.replace(".", "/")
        for dp, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
            for f in files:
                if f.startswith(".") or f.endswith(_SKIP_SUFFIXES):
                    continue
                rel = os.path.relpath(os.path.join(dp, f), root).replace(os.sep, "/")
                out.setdefault(f"{prefix}/{rel}", os.path.join(dp, f))
    return out


def _metadata(version: str) -> tuple[str, str]:
    """METADATA and entry_points.txt, from the installed distribution's own."""
    from importlib import metadata as md
    try:
        dist = md.distribution("thresher")
        meta = dist.metadata
        requires = meta.get_all("Requires-Dist") or []
        extras = meta.get_all("Provides-Extra") or []
        python = meta.get("Requires-Python") or ">=3.10"
        summary = meta.get("Summary") or ""
        entry_points = dist.read_text("entry_points.txt") or ""
    except md.PackageNotFoundError:       # a source tree on sys.path, not installed
        requires, extras, python, summary = [], [], ">=3.10", ""
        entry_points = "[console_scripts]\nthresher = thresher.pipelines.cli:entry\n"
    lines = ["Metadata-Version: 2.1", "Name: thresher", f"Version: {version}", f"Summary: {summary}",
             f"Requires-Python: {python}"]
    lines += [f"Requires-Dist: {r}" for r in requires] + [f"Provides-Extra: {e}" for e in extras]
    return "\n".join(lines) + "\n", entry_points


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(dest: str) -> str:
    """A pure-Python wheel (``py3-none-any``) of the running thresher in ``dest``; its path.
    The bytes depend on the files only (sorted entries, fixed times), so the same code gives
    the same wheel and Beam's staging reuses it. The optional compiled n-gram kernel is left
    out (workers use the numpy path: same results)."""
    from thresher import __version__
    version = __version__
    name = f"thresher-{version.replace('-', '_')}-py3-none-any.whl"
    info = f"thresher-{version.replace('-', '_')}.dist-info"
    metadata, entry_points = _metadata(version)
    os.makedirs(dest, exist_ok=True)
    path = os.path.join(dest, name)
    tmp = path + ".tmp"
    record = []
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        def put(arc: str, data: bytes) -> None:
            zi = zipfile.ZipInfo(arc, date_time=_EPOCH)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
            record.append(_record_line(arc, data))
        for arc, src in sorted(_files().items()):
            with open(src, "rb") as f:
                put(arc, f.read())
        put(f"{info}/METADATA", metadata.encode())
        put(f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: thresher\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        put(f"{info}/entry_points.txt", entry_points.encode())
        put(f"{info}/top_level.txt", b"thresher\n")
        zi = zipfile.ZipInfo(f"{info}/RECORD", date_time=_EPOCH)
        zi.external_attr = 0o644 << 16
        z.writestr(zi, "\n".join(record + [f"{info}/RECORD,,"]) + "\n", compress_type=zipfile.ZIP_DEFLATED)
    os.replace(tmp, path)
    return path


# -- the dry run -------------------------------------------------------------------------------

def is_dry_run(cfg, beam_args: Optional[list[str]]) -> bool:
    from apache_beam.options.pipeline_options import TestOptions
    return bool(_options(cfg, beam_args).view_as(TestOptions).dry_run)


def dry_run(p: E.Plan, beam_args: Optional[list[str]], name: str = "Thresher") -> dict[str, Any]:
    """Build the job of plan ``p`` without running it (see the module docstring)."""
    import apache_beam as beam

    from thresher.pipelines.transforms import CurateShards
    opts = _options(p.cfg, beam_args)
    runner = runner_name(opts)
    bp = beam.Pipeline(options=opts)
    _ = bp | name >> CurateShards(p, finalize=False)
    job = None
    if runner in DATAFLOW_RUNNERS:
        result = bp.run()           # --dry_run: Beam builds the Dataflow job and submits nothing
        job = result.job
        proto = job.proto_pipeline
    else:
        proto = bp.to_runner_api(default_environment=bp.runner.default_environment(opts))
    return {"dry_run": True, "runner": runner, "output": p.out, "shards": len(p.shards),
            "input_rows": sum(s.num_rows for s in p.shards), "steps": steps(proto, name),
            "environments": environments(proto), "pipeline_proto": proto, "job": job}


def steps(proto, name: str = "Thresher") -> list[dict[str, Any]]:
    """The thresher transform's steps in the order they were applied, each with the resource
    hints of the environments its leaf transforms run in."""
    t = proto.components.transforms
    root = next((tid for tid, tr in t.items() if tr.unique_name == name), None)
    if root is None:
        return []
    envs = proto.components.environments

    def hints(tid: str) -> dict[str, str]:
        tr = t[tid]
        got: dict[str, str] = {}
        if tr.environment_id and tr.environment_id in envs:
            for urn, v in envs[tr.environment_id].resource_hints.items():
                got[urn] = v.decode("utf-8", "replace")
        for sub in tr.subtransforms:
            for k, v in hints(sub).items():
                got.setdefault(k, v)
        return got

    out = []
    for tid in t[root].subtransforms:
        h = hints(tid)
        out.append({"name": t[tid].unique_name[len(name) + 1:], "transform": t[tid].unique_name,
                    "accelerator": h.get(ACCELERATOR_URN), "resource_hints": h})
    return out


def environments(proto) -> dict[str, dict[str, Any]]:
    """Each environment of the proto: its kind, container image and staged files."""
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2 as R
    out = {}
    for eid, env in proto.components.environments.items():
        image = None
        if env.urn == common_urns.environments.DOCKER.urn:
            image = R.DockerPayload.FromString(env.payload).container_image
        staged = []
        for dep in env.dependencies:
            if dep.role_urn == common_urns.artifact_roles.STAGING_TO.urn:
                staged.append(R.ArtifactStagingToRolePayload.FromString(dep.role_payload).staged_name)
        out[eid] = {"urn": env.urn, "image": image, "staged": sorted(staged),
                    "resource_hints": {k: v.decode("utf-8", "replace") for k, v in env.resource_hints.items()}}
    return out


def describe(result: dict[str, Any]) -> list[str]:
    """The lines ``thresher run --dry_run=True`` prints."""
    lines = [f"dry run on {result['runner']}: the job was built and not submitted; nothing under "
             f"{result['output']} was read or written",
             f"plan: {result['shards']} shards, {result['input_rows']:,} documents", "steps:"]
    for st in result["steps"]:
        extra = {k.split(":")[2] if k.count(":") >= 2 else k: v for k, v in st["resource_hints"].items()}
        lines.append(f"  {st['name']}" + ("".join(f"  [{k}={v}]" for k, v in sorted(extra.items()))))
    images = sorted({e["image"] for e in result["environments"].values() if e["image"]})
    staged = sorted({s for e in result["environments"].values() for s in e["staged"]})
    if images:
        lines.append(f"worker image: {', '.join(images)}")
    if staged:
        lines.append(f"staged for the workers: {', '.join(staged)}")
    return lines
