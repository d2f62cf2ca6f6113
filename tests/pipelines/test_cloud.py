"""Thresher beyond the local filesystem and the local runner, offline and with no network but
127.0.0.1 (every other connection or name lookup from this process is recorded and fails).

- **S3**: a real S3 API over HTTP (``moto`` in server mode, started here) with input and output on
  ``s3://`` through Beam's own S3 filesystem and the standard ``--s3_*`` options given to
  ``thresher run``: the outputs equal a local run's byte for byte, every file of the run's own
  state (run identity, manifests, stats, ``_work/``, ``_global/``) is on S3 and nothing is written
  locally, a resume after a lost shard redoes only that shard, another config is refused in one
  line, ``--overwrite`` clears the previous run's objects; thresher's io on S3 (atomic writes,
  listings without temporaries, prefix removal, discovery, shard sizes).
- **Dataflow**: ``--dry_run=True --no_auth`` builds the job with Beam's DataflowRunner, without
  credentials or network: the job's pipeline proto holds the engine's steps, the accelerator hint
  of the model step, and thresher's own wheel staged for the workers (or the image given instead).
- **The worker wheel** installs with pip and imports as thresher, data files included.
- **Flink and Spark**: ``--runner=FlinkRunner/SparkRunner`` with their master options go through
  Beam's runner up to the Java job server's command line (captured: jar and arguments); in place of
  the ``java`` process an in-process job service on 127.0.0.1 takes the job over gRPC, and the
  outputs equal the local run's.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import io as _io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import bench, corpus, local_run

from thresher.pipelines import cli, cloud
from thresher.pipelines import io as tio
from thresher.pipelines.api import run
from thresher.schemas.documents import InputError

KEY = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
STAGES = [{"name": "length", "min_chars": 50}, {"name": "exact_dedup"}, {"name": "minhash_dedup"}]
BEAM_PIN = "2.77.0"
TIMES = {"seconds", "wall_seconds", "docs_per_second", "finished_at", "pid", "worker", "wall_s"}


# -- no network but 127.0.0.1 --------------------------------------------------------------------

_LOCAL = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "", None}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Record (and refuse) any connection or name lookup to a host other than this machine."""
    attempts: list = []
    real_connect, real_connect_ex, real_gai = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def host_of(address):
        return address[0] if isinstance(address, tuple) else None     # AF_UNIX: a path

    def connect(self, address):
        if host_of(address) not in _LOCAL:
            attempts.append(address)
            raise OSError(f"test is offline: connect to {address!r}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if host_of(address) not in _LOCAL:
            attempts.append(address)
            return 101
        return real_connect_ex(self, address)

    def getaddrinfo(host, *a, **k):
        if (host.decode() if isinstance(host, bytes) else host) not in _LOCAL:
            attempts.append(host)
            raise socket.gaierror(socket.EAI_NONAME, f"test is offline: {host}")
        return real_gai(host, *a, **k)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert not attempts, f"network used: {attempts[:5]}"


# -- an S3 server ---------------------------------------------------------------------------------

def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class S3:
    def __init__(self, endpoint: str):
        import boto3
        self.endpoint = endpoint
        self.client = boto3.client("s3", endpoint_url=endpoint, **KEY)
        self.args = [f"--s3_endpoint_url={endpoint}", f"--s3_access_key_id={KEY['aws_access_key_id']}",
                     f"--s3_secret_access_key={KEY['aws_secret_access_key']}", f"--s3_region_name={KEY['region_name']}"]
        self.buckets = 0

    def bucket(self) -> str:
        self.buckets += 1
        name = f"thresher-{self.buckets}"
        self.client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        out, token = {}, None
        while True:
            kw = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            r = self.client.list_objects_v2(**kw)
            out.update({o["Key"]: o["Size"] for o in r.get("Contents", [])})
            if not r.get("IsTruncated"):
                return out
            token = r["NextContinuationToken"]

    def get(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def delete(self, bucket: str, *keys: str) -> None:
        for k in keys:
            self.client.delete_object(Bucket=bucket, Key=k)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("moto.server", reason="the dev extra installs moto[server]")
    pytest.importorskip("apache_beam.io.aws.s3filesystem", reason="the aws extra installs boto3")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            if time.time() > deadline:
                pytest.fail(f"moto server did not listen within 60 s: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield S3(f"http://127.0.0.1:{port}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# -- a real corpus in 3 uneven shards ---------------------------------------------------------------

@pytest.fixture(scope="module")
def docs() -> pa.Table:
    """~630 real documents: the near-duplicate benchmark's planted families (wiki summaries,
    handbook pages, web pages, fortunes) plus 30 exact copies under new ids."""
    corpus("wiki_summaries.parquet")
    t = bench("neardup_data", "thresher_bench_neardup_data").build(n_docs=600, seed=7).select(["id", "text"])
    t = pa.table({"id": t["id"].cast(pa.string()), "text": t["text"].cast(pa.string())})
    src = t.take(pa.array(np.random.default_rng(3).choice(t.num_rows, 30, replace=False)))
    copies = pa.table({"id": pa.array([f"copy-{i}" for i in range(30)]), "text": src["text"]})
    return pa.concat_tables([t, copies]).take(pa.array(np.random.default_rng(0).permutation(t.num_rows + 30)))


def _parquet_bytes(t: pa.Table) -> bytes:
    b = _io.BytesIO()
    pq.write_table(t, b, row_group_size=100)
    return b.getvalue()


def _layout(docs: pa.Table) -> dict[str, bytes]:
    """Input files by relative path: 3 uneven shards (one in a sub-folder) and a decoy in a
    ``_``-folder, which discovery skips locally and on S3 alike."""
    n = docs.num_rows
    cuts = [0, n // 5, n // 5 + n // 2, n]
    files = {f"part-{i}.parquet": _parquet_bytes(docs.slice(cuts[i], cuts[i + 1] - cuts[i])) for i in range(2)}
    files["more/part-2.parquet"] = _parquet_bytes(docs.slice(cuts[2], n - cuts[2]))
    files["_scratch/decoy.parquet"] = _parquet_bytes(docs.slice(0, 10))
    return files


@pytest.fixture(scope="module")
def local_input(docs, tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("local-in")
    for rel, data in _layout(docs).items():
        os.makedirs(os.path.dirname(d / rel), exist_ok=True)
        (d / rel).write_bytes(data)
    return str(d)


@pytest.fixture(scope="module")
def local_out(local_input, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("local-out") / "out")
    stats = local_run({"input": local_input, "output": out, "stages": STAGES})
    assert stats["reconciled"] and stats["rejected_rows"] >= 30
    return out


def _upload(s3: S3, bucket: str, docs: pa.Table, prefix: str = "in/") -> str:
    for rel, data in _layout(docs).items():
        s3.put(bucket, prefix + rel, data)
    return f"s3://{bucket}/{prefix}"


def _yaml(path, cfg: dict) -> str:
    import yaml
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _local_files(out: str, *dirs: str) -> dict[str, bytes]:
    got = {}
    for d in dirs:
        for f in sorted(glob.glob(os.path.join(out, d, "*"))):
            got[f"{d}/{os.path.basename(f)}"] = open(f, "rb").read()
    return got


def _drop_times(x):
    if isinstance(x, dict):
        return {k: _drop_times(v) for k, v in x.items() if k not in TIMES}
    if isinstance(x, list):
        return [_drop_times(v) for v in x]
    return x


# -- S3 end to end ------------------------------------------------------------------------------------

def test_s3_run_equals_local_resumes_and_keeps_one_run_per_directory(s3, docs, local_out, tmp_path, monkeypatch,
                                                                     capsys):
    bucket = s3.bucket()
    inp = _upload(s3, bucket, docs)
    out = f"s3://{bucket}/out"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)        # anything thresher wrongly wrote locally would land here
    cfg_path = _yaml(tmp_path / "s3.yaml", {"input": inp, "output": {"path": out, "keep_work": True},
                                             "stages": STAGES, "pipeline_options": {"direct_num_workers": 1}})

    # 1. the CLI with the standard S3 options, as a user runs it
    assert cli.main(["run", cfg_path, "--quiet", *s3.args]) == 0
    keys = s3.keys(bucket, "out/")
    names = {k[len("out/"):] for k in keys}
    shards = ["part-0", "part-1", "more__part-2"]
    for s in shards:
        assert {f"kept/{s}.parquet", f"rejected/{s}.parquet", f"_manifests/{s}.json"} <= names
    assert {"_run.json", "stats.json", "_global/exact_dedup.json", "_global/minhash_dedup.json"} <= names
    assert any(n.startswith("_work/") for n in names), "keep_work: the work files stay, on S3"
    assert not any("/.tmp-" in k or k.startswith(".tmp-") for k in keys), "no temporary object is left"
    assert not any("decoy" in n for n in names)
    assert os.listdir(cwd) == [], f"written locally: {os.listdir(cwd)}"

    # the same bytes as the local run, the same stats and global-step records
    local = _local_files(local_out, "kept", "rejected")
    assert sorted(local) == sorted(n for n in names if n.startswith(("kept/", "rejected/")))
    for rel, data in local.items():
        assert _sha(s3.get(bucket, f"out/{rel}")) == _sha(data), rel
    stats = json.loads(s3.get(bucket, "out/stats.json"))
    lstats = json.load(open(os.path.join(local_out, "stats.json")))
    assert stats["reconciled"] is True and stats["input_rows"] == docs.num_rows
    for key in ("input_rows", "kept_rows", "rejected_rows", "input_chars", "kept_chars", "shards"):
        assert stats[key] == lstats[key], key
    assert _drop_times(stats["stages"]) == _drop_times(lstats["stages"])
    for g in ("exact_dedup", "minhash_dedup"):
        assert _drop_times(json.loads(s3.get(bucket, f"out/_global/{g}.json"))) == \
            _drop_times(json.load(open(os.path.join(local_out, "_global", f"{g}.json"))))

    # 2. resume: shard part-1 lost its outputs (a worker died before writing them); the rerun
    # redoes that shard only
    before = {s: json.loads(s3.get(bucket, f"out/_manifests/{s}.json"))["worker"]["finished_at"] for s in shards}
    s3.delete(bucket, "out/_manifests/part-1.json", "out/kept/part-1.parquet", "out/rejected/part-1.parquet",
              "out/stats.json")
    stats2 = run(cfg_path, beam_args=s3.args, progress=False)
    after = {s: json.loads(s3.get(bucket, f"out/_manifests/{s}.json"))["worker"]["finished_at"] for s in shards}
    assert after["part-0"] == before["part-0"] and after["more__part-2"] == before["more__part-2"]
    assert after["part-1"] > before["part-1"]
    assert stats2["reconciled"] and stats2["kept_rows"] == lstats["kept_rows"]
    for rel, data in local.items():
        assert _sha(s3.get(bucket, f"out/{rel}")) == _sha(data), rel

    # 3. another config in the same directory: refused before any work, in one line
    other = _yaml(tmp_path / "other.yaml", {"input": inp, "output": out, "pipeline_options": {"direct_num_workers": 1},
                                            "stages": [{"name": "length", "min_chars": 400}, *STAGES[1:]]})
    capsys.readouterr()
    before_keys = s3.keys(bucket, "out/")
    assert cli.main(["run", other, "--quiet", *s3.args]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith(f"thresher: error: config error at output.path: {out} holds") and \
        "holds the output of another run" in err[0] and "min_chars: 50 -> 400" in err[0], err
    assert s3.keys(bucket, "out/") == before_keys

    # 4. --overwrite: the previous run's objects go first (prefix removal on S3), then the new run
    assert cli.main(["run", other, "--quiet", "--overwrite", *s3.args]) == 0
    names = {k[len("out/"):] for k in s3.keys(bucket, "out/")}
    fp = json.loads(s3.get(bucket, "out/_run.json"))["fingerprint"]
    assert not any(n.startswith("_work/") for n in names), "no keep_work: _work/ removed on S3 too"
    for s in shards:
        assert json.loads(s3.get(bucket, f"out/_manifests/{s}.json"))["fingerprint"].startswith(fp + ":")
    new_stats = json.loads(s3.get(bucket, "out/stats.json"))
    assert new_stats["config_fingerprint"] == fp and new_stats["reconciled"]
    assert new_stats["stages"][1]["id"] == "length"
    assert new_stats["stages"][1]["rejected"] > lstats["stages"][1]["rejected"]   # min_chars 400 rejects more
    assert os.listdir(cwd) == []


def test_io_on_s3(s3, docs):
    bucket = s3.bucket()
    tio.set_options(s3.args)
    base = f"s3://{bucket}"

    # an atomic write: a temporary name until commit, then the final name only
    w = tio.AtomicWriter(f"{base}/d/a.json")
    w.f.write(b'{"v": 1}')
    w.f.close()
    assert [k for k in s3.keys(bucket, "d/")] == [f"d/{w.tmp.rsplit('/', 1)[1]}"]
    assert w.tmp.rsplit("/", 1)[1].startswith(".tmp-")
    assert tio.list_dir(f"{base}/d", ".json") == []          # temporaries are never listed
    tio.rename(w.tmp, w.path)
    assert list(s3.keys(bucket, "d/")) == ["d/a.json"] and tio.read_json(f"{base}/d/a.json") == {"v": 1}
    tio.write_json(f"{base}/d/a.json", {"v": 2})             # replaces the existing object
    assert list(s3.keys(bucket, "d/")) == ["d/a.json"] and tio.read_json(f"{base}/d/a.json") == {"v": 2}
    w = tio.AtomicWriter(f"{base}/d/b.json")
    w.f.write(b"partial")
    w.abort()
    assert list(s3.keys(bucket, "d/")) == ["d/a.json"]

    # removal of a "directory" takes everything under the prefix and nothing beside it
    for k in ("d/sub/x.parquet", "d/sub/deep/y.json", "dx/keep.json"):
        s3.put(bucket, k, b"x")
    tio.remove(f"{base}/d")
    assert sorted(s3.keys(bucket)) == ["dx/keep.json"]
    tio.remove(f"{base}/dx/keep.json")
    assert s3.keys(bucket) == {}

    # discovery as locally: recursive, `_` folders skipped, the run's output excluded, sizes kept
    inp = _upload(s3, bucket, docs, "corpus/")
    for rel in ("out/kept/part-0.parquet", "out/_work/x.parquet"):
        s3.put(bucket, "corpus/" + rel, _parquet_bytes(docs.slice(0, 5)))
    shards = tio.describe_shards(inp, "text", "id", exclude=f"{inp}out")
    sizes = s3.keys(bucket, "corpus/")
    assert [s.rel for s in shards] == ["more/part-2.parquet", "part-0.parquet", "part-1.parquet"]
    assert [s.name for s in shards] == ["more__part-2", "part-0", "part-1"]
    assert [s.size for s in shards] == [sizes["corpus/" + s.rel] for s in shards]
    assert sum(s.num_rows for s in shards) == docs.num_rows
    assert tio.discover(f"{inp}part-*.parquet") == [f"{inp}part-0.parquet", f"{inp}part-1.parquet"]
    batches = list(tio.iter_batches(f"{inp}part-0.parquet", 50))
    assert max(b.num_rows for b in batches) == 50
    assert pa.Table.from_batches(batches).equals(docs.slice(0, docs.num_rows // 5))
    with pytest.raises(InputError, match="matched no Parquet files"):   # Beam's S3 listing: a missing bucket is empty
        tio.describe_shards("s3://no-such-bucket-here/in/", "text", None)


def test_work_error_log_lands_on_s3(s3, capsys):
    """An error during work on an S3 output: one line naming the log, the log on S3."""
    bucket = s3.bucket()
    tio.set_options(s3.args)
    try:
        raise RuntimeError("StageFailure: stage length failed on shard part-0 rows 0-99: boom")
    except RuntimeError as e:
        assert cli._work_error(e, f"s3://{bucket}/out") == 1
    err = capsys.readouterr().err.strip().splitlines()
    logs = [k for k in s3.keys(bucket) if k.startswith("out/_logs/error-")]
    assert len(err) == 1 and err[0].startswith("thresher: error: stage length failed on shard part-0")
    assert len(logs) == 1 and f"(full trace: s3://{bucket}/{logs[0]})" in err[0]
    assert b"RuntimeError" in s3.get(bucket, logs[0])


# -- Dataflow, offline ----------------------------------------------------------------------------------

ACCEL = "type:nvidia-l4;count:1;install-nvidia-driver"
DATAFLOW = ["--runner=DataflowRunner", "--project=thresher-test-project", "--region=us-central1",
            "--temp_location=gs://thresher-test-bucket/tmp", "--dry_run=True", "--no_auth"]
MODEL_STAGES = [{"name": "length", "min_chars": 50}, {"name": "exact_dedup"},
                {"name": "lm_loss", "model": "/models/scorer-lm", "accelerator": ACCEL},
                {"name": "minhash_dedup"}]


@pytest.fixture
def small_input(docs, tmp_path) -> str:
    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):
        pq.write_table(docs.slice(i * 60, 60), d / f"part-{i}.parquet")
    return str(d)


def _step_envs(proto, step: str) -> set[str]:
    """Environments of the leaf transforms under ``Thresher/<step>``."""
    t = proto.components.transforms
    prefix = f"Thresher/{step}"
    return {tr.environment_id for tr in t.values()
            if (tr.unique_name == prefix or tr.unique_name.startswith(prefix + "/")) and tr.environment_id
            and not tr.subtransforms}


def test_dataflow_dry_run_builds_the_job_offline(small_input, tmp_path, monkeypatch, capsys):
    from apache_beam.portability.api import beam_runner_api_pb2 as R
    pytest.importorskip("apache_beam.runners.dataflow.internal.apiclient", reason="the gcp extra")
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = "gs://thresher-test-bucket/curated"
    cfg = _yaml(tmp_path / "df.yaml", {"input": small_input, "output": out, "stages": MODEL_STAGES,
                                       "runner": "DataflowRunner"})

    t0 = time.time()
    assert cli.main(["run", cfg, *DATAFLOW]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("thresher: dry run on DataflowRunner: the job was built and not submitted")
    assert f"nothing under {out} was read or written" in printed[0]
    steps = [ln.strip() for ln in printed if ln.startswith("  ")]
    assert steps[:2] == ["Shards", "Spread"]
    assert "Step0[length,exact_dedup]" in steps and "Step2[minhash_dedup]" in steps
    assert f"Step1[lm_loss]  [accelerator={ACCEL}]" in steps
    assert steps[-2:] == ["JoinDecisions", "ApplyAndWrite"]
    assert not [s for s in steps if "accelerator" in s and "lm_loss" not in s]
    wheel = f"thresher-{__import__('thresher').__version__}-py3-none-any.whl"
    assert any(ln.startswith("thresher: staged for the workers: ") and wheel in ln for ln in printed)
    assert os.listdir(cwd) == []

    # the job itself, as Beam's DataflowRunner built it
    r = run(cfg, beam_args=DATAFLOW, progress=False)
    assert r["dry_run"] and r["runner"] == "DataflowRunner"
    proto = r["job"].proto_pipeline
    names = {tr.unique_name for tr in proto.components.transforms.values()}
    for step in ("Shards", "Spread", "Step0[length,exact_dedup]", "Step1[lm_loss]", "Step2[minhash_dedup]",
                 "AllKeys", "Gather[exact_dedup]", "Decide[minhash_dedup]", "AllDecisions", "JoinDecisions",
                 "ApplyAndWrite"):
        assert f"Thresher/{step}" in names, step
    envs = proto.components.environments
    gpu = _step_envs(proto, "Step1[lm_loss]")
    assert gpu and all(envs[e].resource_hints["beam:resources:accelerator:v1"] == ACCEL.encode() for e in gpu)
    for step in ("Step0[length,exact_dedup]", "Step2[minhash_dedup]", "ApplyAndWrite"):
        assert all("beam:resources:accelerator:v1" not in envs[e].resource_hints for e in _step_envs(proto, step))
    for e in envs.values():       # every environment installs the wheel, from a manifest of extra packages
        staged = {R.ArtifactStagingToRolePayload.FromString(d.role_payload).staged_name for d in e.dependencies}
        assert {wheel, "extra_packages.txt"} <= staged
        assert R.DockerPayload.FromString(e.payload).container_image.endswith(f"beam_python3.11_sdk:{BEAM_PIN}")

    # with a worker image, the image is the software: nothing is staged
    image = "us-central1-docker.pkg.dev/thresher-test-project/thresher/worker:0.1.0"
    r = run(cfg, beam_args=[*DATAFLOW, f"--sdk_container_image={image}"], progress=False)
    for e in r["job"].proto_pipeline.components.environments.values():
        assert R.DockerPayload.FromString(e.payload).container_image == image
        staged = {R.ArtifactStagingToRolePayload.FromString(d.role_payload).staged_name for d in e.dependencies}
        assert not any(s.endswith(".whl") for s in staged) and "extra_packages.txt" not in staged
    assert time.time() - t0 < 60


def test_worker_wheel_installs_and_imports_as_thresher(tmp_path):
    import thresher
    a = cloud.build_wheel(str(tmp_path / "a"))
    b = cloud.build_wheel(str(tmp_path / "b"))
    assert open(a, "rb").read() == open(b, "rb").read(), "the same code gives the same wheel"
    with zipfile.ZipFile(a) as z:
        names = set(z.namelist())
        info = f"thresher-{thresher.__version__}.dist-info"
        meta = z.read(f"{info}/METADATA").decode()
        record = z.read(f"{info}/RECORD").decode().splitlines()
        for line in record:
            name, digest, size = line.rsplit(",", 2)
            if digest:
                import base64
                data = z.read(name)
                assert int(size) == len(data)
                assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    assert {"thresher/__init__.py", "thresher/pipelines/transforms.py", "thresher/pipelines/commands/score.py",
            "thresher/scorers/filters/length.py", "thresher/schemas/config.py",
            "thresher/scorers/filters/data/badwords/en.hard.txt"} <= names
    assert not any("__pycache__" in n or n.endswith((".pyc", ".so")) for n in names)
    assert f"Requires-Dist: apache-beam=={BEAM_PIN}" in meta.splitlines()
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                        "--target", str(target), a], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    code = ("import thresher, thresher.pipelines.transforms as t, thresher.scorers.filters.length as l; "
            "from thresher.scorers.filters import rules; print(thresher.__file__); print(t.__file__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                       env={**os.environ, "PYTHONPATH": str(target)})
    assert r.returncode == 0, r.stderr
    assert all(line.startswith(str(target)) for line in r.stdout.split()), r.stdout


# -- Flink and Spark: Beam's runners up to the job server's java command line -----------------------------

@pytest.fixture
def java_job_server(monkeypatch):
    """In place of ``java -jar <job server jar> ...``: an in-process job service on 127.0.0.1
    (Beam's own, the one behind ``--job_endpoint=embed``), reached by the runner over gRPC as
    the jar's would be. Records each command line the runner would have started."""
    from apache_beam.runners.portability import job_server, local_job_service, spark_runner
    from apache_beam.utils import subprocess_server
    commands: list[list[str]] = []
    services = []

    def start_process(self):
        commands.append(list(self._cmd))
        servicer = local_job_service.LocalJobServicer()
        port = servicer.start_grpc_server(0)
        services.append(servicer)
        return None, f"localhost:{port}"

    monkeypatch.setattr(subprocess_server.SubprocessServer, "start_process", start_process)
    monkeypatch.setattr(job_server.JavaJarJobServer, "local_jar", staticmethod(lambda url, *a, **k: url))
    monkeypatch.setattr(spark_runner, "JOB_SERVER_CACHE", {})
    yield commands
    for s in services:
        s.stop()


@pytest.mark.parametrize("runner,flags,expect", [
    ("FlinkRunner", ["--flink_master=flink-jobmanager:8081", "--parallelism=2"],
     ["--flink-master", "http://flink-jobmanager:8081"]),
    ("SparkRunner", ["--spark_master_url=spark://spark-master:7077"],
     ["--spark-master-url", "spark://spark-master:7077"]),
])
def test_flink_and_spark_runners_up_to_the_job_server(runner, flags, expect, java_job_server, local_input,
                                                      local_out, tmp_path):
    out = str(tmp_path / "out")
    stats = run({"input": local_input, "output": out, "runner": runner, "stages": STAGES},
                beam_args=[*flags, "--environment_type=LOOPBACK"], progress=False)
    assert len(java_job_server) == 1
    cmd = java_job_server[0]
    jar = {"FlinkRunner": f"beam-runners-flink-2.2-job-server-{BEAM_PIN}.jar",
           "SparkRunner": f"beam-runners-spark-3-job-server-{BEAM_PIN}.jar"}[runner]
    assert cmd[0] == "java" and cmd[cmd.index("-jar") + 1].endswith("/" + jar), cmd
    i = cmd.index(expect[0])
    assert cmd[i:i + 2] == expect
    assert "--job-port" in cmd and "--artifact-port" in cmd
    assert stats["reconciled"]
    local = _local_files(local_out, "kept", "rejected")
    assert _local_files(out, "kept", "rejected") == local


def test_portable_dry_run_names_the_worker_software(small_input, tmp_path, capsys):
    cfg = _yaml(tmp_path / "f.yaml", {"input": small_input, "output": str(tmp_path / "out"), "stages": STAGES})
    image = "registry.example/thresher-worker:0.1.0"
    flink = ["--runner=FlinkRunner", "--flink_master=flink-jobmanager:8081", "--dry_run=True"]
    assert cli.main(["run", cfg, *flink, "--environment_type=DOCKER", f"--environment_config={image}"]) == 0
    printed = capsys.readouterr().out
    assert f"thresher: worker image: {image}" in printed and ".whl" not in printed
    assert "  Shards" in printed and "  ApplyAndWrite" in printed
    # DOCKER workers from Beam's stock image: thresher's wheel goes with the job
    assert cli.main(["run", cfg, *flink, "--environment_type=DOCKER"]) == 0
    printed = capsys.readouterr().out
    assert f"beam_python3.11_sdk:{BEAM_PIN}" in printed and "-py3-none-any.whl" in printed
    # LOOPBACK and EXTERNAL workers import the thresher installed where they run: nothing staged
    assert cli.main(["run", cfg, *flink, "--environment_type=LOOPBACK"]) == 0
    assert ".whl" not in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "out"), "a dry run writes nothing under the output"
