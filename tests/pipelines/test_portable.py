"""The same pipelines through Beam's portable job API (the Fn API path Flink, Spark and Dataflow
Runner v2 use) and through the DirectRunner's multi-process mode: files identical to the
one-worker, in-process DirectRunner's.

What runs: a local job service (``local_job_service_main``) and a worker pool
(``worker_pool_main``), one of each for the module, both started here and torn down by process
group. Jobs go to them with ``--runner=PortableRunner`` and ``environment_type`` LOOPBACK (the SDK
worker in this process) or EXTERNAL (SDK worker processes the pool starts, 2 per job). Compared,
for the default pipeline and for a dedup + rule filters + PreSelect pipeline on ~2,200 real
documents in 3 uneven shards: every kept/ and rejected/ file byte for byte, every
``_global/*.json`` number and the counts of ``stats.json``; the manifests' worker PIDs show where
the shards really ran. The same for 2 DirectRunner worker processes on the shards under other
names (other shard indices), and for the distributed variants of the global steps (one line
each in ``VARIANTS``) on 2 EXTERNAL workers. A failed job fails the test with the job service's
log (where Beam puts the traceback); a hung job is cancelled at a timeout.

Beam 2.77's Python job service runs every job with one SDK worker: its ``FnApiRunner`` is entered
through ``run_via_runner_api``, which never reads a worker count (``direct_num_workers`` and
``sdk_worker_parallelism`` are both ignored; measured: one worker started by the pool, one PID).
So the service started here is the stock ``local_job_service_main`` with one addition: it takes
the job's ``sdk_worker_parallelism`` (the portable option Flink and Spark honour) as the runner's
worker count. A job without the option runs exactly as on the stock service.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import bench, corpus, local_run, output_files

#: a run that takes longer is cancelled (a hung job must not hang the suite); runs take 3-15 s here
JOB_TIMEOUT_S = 150
#: after the timeout, the services are killed if the run still has not returned
KILL_GRACE_S = 20
EXTERNAL_WORKERS = 2

POOL_ARGV = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port={port}"]

# The stock job service, plus the worker count from the job's sdk_worker_parallelism.
_JOB_SERVICE = """
import logging, signal, sys
from apache_beam.options.pipeline_options import PortableOptions
from apache_beam.runners.portability import local_job_service_main
from apache_beam.runners.portability.fn_api_runner import fn_runner
_run = fn_runner.FnApiRunner.run_via_runner_api
def run_via_runner_api(self, proto, options):
    self._num_workers = max(1, int(options.view_as(PortableOptions).sdk_worker_parallelism or 1))
    return _run(self, proto, options)
fn_runner.FnApiRunner.run_via_runner_api = run_via_runner_api
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
logging.basicConfig()
logging.getLogger().setLevel(logging.INFO)
local_job_service_main.run(sys.argv[1:])
"""

#: run-to-run noise, never compared
TIMES = {"seconds", "wall_seconds", "docs_per_second", "wall_s", "docs_per_s", "tokens_per_s"}


# -- the services ----------------------------------------------------------------------------

def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _tail(path: str, n: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - n))
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"<{path}: {e}>"


class Services:
    """One job service and one worker pool, each in its own process group (the pool's SDK
    workers are in the pool's group), stderr to a log file each."""

    def __init__(self, logdir):
        self.logdir = str(logdir)
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts = 0

    def spawn(self, name: str, argv: list[str], path_first: str = os.path.dirname(sys.executable)) -> int:
        """Start a process in a group of its own; returns the port it will listen on when its
        argv has ``{port}``. ``path_first``: first on PATH (the pool starts each SDK worker as
        ``python`` from PATH: the venv's ``bin``)."""
        env = dict(os.environ, PATH=path_first + os.pathsep + os.environ.get("PATH", ""))
        port = _free_port()
        log = os.path.join(self.logdir, f"{name}-{self.starts}.log")
        with open(log, "wb") as err:
            p = subprocess.Popen([a.format(port=port) for a in argv], stdout=subprocess.DEVNULL, stderr=err,
                                 env=env, start_new_session=True)
        p.log = log
        self.procs[name] = p
        return port

    def start(self) -> None:
        self.starts += 1
        port_file = os.path.join(self.logdir, f"job-port-{self.starts}")
        self.spawn("job_service", [sys.executable, "-c", _JOB_SERVICE, "--port", "0", "--port_file", port_file])
        self.pool_port = self.spawn("worker_pool", POOL_ARGV)
        self.job_port = None
        t_end = time.time() + 60
        while time.time() < t_end and self.job_port is None:
            self.check()
            txt = open(port_file).read().strip() if os.path.exists(port_file) else ""
            self.job_port = int(txt.rsplit(":", 1)[-1]) if txt else None
            time.sleep(0.1)
        self.wait_listening(self.job_port, self.pool_port, t_end=t_end)

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}{self.tails()}")

    def wait_listening(self, *ports, t_end: float) -> None:
        while time.time() < t_end:
            self.check()
            if all(p and self._listening(p) for p in ports):
                return
            time.sleep(0.1)
        raise RuntimeError(f"ports {ports} not listening in time{self.tails()}")

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def alive(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs.values())

    def ensure(self) -> None:
        if not self.alive():
            self.stop()
            self.start()

    def stop(self, *names: str) -> None:
        """End the processes (all, or those named) and every process of their groups."""
        procs = {n: p for n, p in self.procs.items() if not names or n in names}
        for p in procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        for n, p in procs.items():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)   # the group: SDK workers the pool started too
            p.wait(5)
            del self.procs[n]

    def cancel_jobs(self) -> None:
        """Cancel every unfinished job on the service (the client then returns CANCELLED)."""
        import grpc
        from apache_beam.portability.api import beam_job_api_pb2 as J
        from apache_beam.portability.api import beam_job_api_pb2_grpc as JG
        done = {J.JobState.DONE, J.JobState.FAILED, J.JobState.CANCELLED, J.JobState.UPDATED,
                J.JobState.DRAINED}
        with contextlib.suppress(Exception), grpc.insecure_channel(f"localhost:{self.job_port}") as ch:
            stub = JG.JobServiceStub(ch)
            for job in stub.GetJobs(J.GetJobsRequest(), timeout=10).job_info:
                if job.state not in done:
                    stub.Cancel(J.CancelJobRequest(job_id=job.job_id), timeout=10)

    def pool_workers_started(self) -> int:
        with open(self.procs["worker_pool"].log, encoding="utf-8", errors="replace") as f:
            return f.read().count("Starting worker with command")

    def tails(self) -> str:
        return "".join(f"\n--- {name} log ({p.log}), tail ---\n{_tail(p.log)}" for name, p in self.procs.items())


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    s = Services(tmp_path_factory.mktemp("portable-logs"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


class JobTimeout(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float, on_timeout=lambda: None, hard=lambda: None):
    """Raise JobTimeout in this (the main) thread after ``seconds``; ``on_timeout`` runs first
    (cancel the job). ``hard`` runs from another thread ``KILL_GRACE_S`` later if the run has
    still not returned (a wait the signal could not interrupt)."""
    def _alarm(*_):
        on_timeout()
        raise JobTimeout(f"the run took more than {seconds} s")
    main = threading.current_thread() is threading.main_thread()    # signals reach the main thread only
    if main:
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    killer = threading.Timer(seconds + (KILL_GRACE_S if main else 0), lambda: (on_timeout(), hard()))
    killer.daemon = True
    killer.start()
    try:
        yield
    finally:
        if main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        killer.cancel()


def submit(services: Services, cfg: dict, env: str, timeout: float = JOB_TIMEOUT_S, **options) -> dict:
    """``thresher.run`` on the PortableRunner against the services, cancelled at ``timeout``
    (then the services are restarted for the next run: a hung job is left in them)."""
    from thresher.pipelines.api import run
    services.ensure()
    opts = {"job_endpoint": f"localhost:{services.job_port}", "environment_type": env, **options}
    if env == "EXTERNAL":
        opts.setdefault("environment_config", f"localhost:{services.pool_port}")
    try:
        with deadline(timeout, services.cancel_jobs, services.stop):
            return run(dict(cfg, runner="PortableRunner", pipeline_options=opts), progress=False)
    except JobTimeout:
        services.timed_out = services.tails()
        services.stop()
        raise


def portable_run(services: Services, cfg: dict, env: str, timeout: float = JOB_TIMEOUT_S, **options) -> dict:
    """:func:`submit`; a failure or a timeout fails the test with the services' log tails (a
    job's traceback is only in the job service's log)."""
    try:
        return submit(services, cfg, env, timeout, **options)
    except Exception as e:  # noqa: BLE001  (the job's failure, with the logs that explain it)
        logs = getattr(services, "timed_out", None) if isinstance(e, JobTimeout) else services.tails()
        text = str(e) if len(str(e)) < 3000 else f"{str(e)[:800]}\n[...]\n{str(e)[-2200:]}"
        pytest.fail(f"portable run ({env}) failed: {type(e).__name__}: {text}{logs}", pytrace=False)


def direct_run(cfg: dict, timeout: float = JOB_TIMEOUT_S, **options) -> dict:
    with deadline(timeout):
        if options:
            return local_run(dict(cfg, pipeline_options=options))
        return local_run(cfg)   # one in-process worker


# -- inputs and pipelines --------------------------------------------------------------------

def _table(name: str, n: int, offset: int = 0) -> pa.Table:
    t = pq.read_table(corpus(name), columns=["id", "text"]).slice(offset, n)
    return pa.table({"id": t["id"].cast(pa.string()), "text": t["text"].cast(pa.string())})


@pytest.fixture(scope="module")
def pool() -> pa.Table:
    """~2,200 real documents (1.4 M characters): the near-duplicate benchmark's planted families
    and hard negatives (wiki summaries, handbook pages, web pages), unfiltered web pages, fortunes
    in five languages and tweets, plus 80 exact copies under new ids; shuffled."""
    corpus("wiki_summaries.parquet")
    nd = bench("neardup_data", "thresher_bench_neardup_data").build(n_docs=2000, seed=7)
    background = pc.equal(nd["kind"], "background")     # long handbook pages and fortunes: fewer
    nd = nd.filter(pc.invert(pc.and_(background, pc.is_in(nd["source"], pa.array(["fortunes", "handbook"])))))
    t = pa.concat_tables([nd.select(["id", "text"]), _table("web_sample.parquet", 150),
                          _table("fortunes.parquet", 800, 20_000), _table("toxicity_labelled.parquet", 250)])
    rng = np.random.default_rng(1)
    src = t.take(pa.array(rng.choice(t.num_rows, 80, replace=False)))
    t = pa.concat_tables([t, pa.table({"id": pa.array([f"copy-{i}" for i in range(80)]), "text": src["text"]})])
    assert len(set(t["id"].to_pylist())) == t.num_rows
    return t.take(pa.array(np.random.default_rng(0).permutation(t.num_rows)))


#: shard file in the plain layout -> its name in the shuffled layout (indices 0,1,2 -> 1,2,0)
RENAMED = {"part-0": "b-first", "part-1": "c-second", "part-2": "a-third"}


@pytest.fixture(scope="module")
def inputs(pool, tmp_path_factory):
    """The same 3 uneven shards twice: ``plain`` (a directory) and ``shuffled`` (a glob; other
    file names, so every shard has another index)."""
    d = tmp_path_factory.mktemp("inputs")
    n = pool.num_rows
    cuts = [0, n // 4, n // 4 + n // 2, n]
    (d / "plain").mkdir()
    (d / "shuffled").mkdir()
    for i in range(3):
        part = pool.slice(cuts[i], cuts[i + 1] - cuts[i])
        pq.write_table(part, d / "plain" / f"part-{i}.parquet", row_group_size=300)
        pq.write_table(part, d / "shuffled" / f"{RENAMED[f'part-{i}']}.parquet", row_group_size=300)
    return {"plain": str(d / "plain"), "shuffled": str(d / "shuffled" / "*.parquet")}


def default_stages(_clf: str) -> list[dict]:
    """What `thresher run` runs without a config (every stage with a default_order)."""
    from thresher.pipelines.cli import default_stages as cli_default
    return cli_default()


def dedup_select_stages(clf: str) -> list[dict]:
    return [{"name": "exact_dedup"},
            {"name": "minhash_dedup"},
            {"name": "length", "min_chars": 80},
            {"name": "gopher_repetition"},
            {"name": "fineweb"},
            {"name": "preselect", "model": clf, "top_fraction_chars": 0.5, "global_step": "gather"}]


PIPELINES = {"default": default_stages, "dedup_select": dedup_select_stages}


@pytest.fixture(scope="module")
def reference(inputs, style_classifier, tmp_path_factory):
    """The one-worker, in-process DirectRunner run of each pipeline: computed once, on demand."""
    base = tmp_path_factory.mktemp("reference")
    done: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in done:
            out = str(base / name)
            stats = direct_run(config(inputs["plain"], out, PIPELINES[name](style_classifier)))
            assert stats["reconciled"]
            done[name] = out
        return done[name]
    return get


def config(inp: str, out: str, stages: list[dict]) -> dict:
    return {"input": {"path": inp, "id_column": "id"}, "output": out, "stages": stages}


# -- comparisons -----------------------------------------------------------------------------

files = output_files


def table(data: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(data))


def globals_(out: str) -> dict[str, dict]:
    got = {}
    for p in sorted(glob.glob(os.path.join(out, "_global", "*.json"))):
        with open(p) as f:
            got[os.path.basename(p)[:-5]] = json.load(f)
    return got


def drop(d, keys: set):
    if isinstance(d, dict):
        return {k: drop(v, keys) for k, v in d.items() if k not in keys}
    if isinstance(d, list):
        return [drop(v, keys) for v in d]
    return d


def stats_of(out: str) -> dict:
    with open(os.path.join(out, "stats.json")) as f:
        return json.load(f)


def counts(out: str, extra: set = frozenset()) -> dict:
    """stats.json without the config itself (runner, options), the timings and the peak bytes of
    ``_work/`` (its step records hold the worker's PID and clock: a few bytes more or less)."""
    return drop(stats_of(out), TIMES | {"config", "work_bytes_peak"} | set(extra))


def pids(out: str) -> set[int]:
    got = set()
    for p in glob.glob(os.path.join(out, "_manifests", "*.json")):
        with open(p) as f:
            got.add(json.load(f)["worker"]["pid"])
    return got


def renamed(key: str, rename: dict) -> str:
    sub, name = key.split("/")
    return f"{sub}/{rename.get(name[:-8], name[:-8])}.parquet"


def assert_same_files(ref: str, out: str, rename: dict = {}, log: str = "") -> None:  # noqa: B006
    """Every kept/ and rejected/ file, byte for byte (``rename``: a shard's name in ``out``)."""
    a, b = files(ref), files(out)
    a = {renamed(k, rename): v for k, v in a.items()}
    assert sorted(a) == sorted(b) and len(a) == 6, f"{sorted(a)} != {sorted(b)}{log}"
    for name, data in a.items():
        if data != b[name]:
            same = table(data).equals(table(b[name]))
            pytest.fail(f"{name} differs from the DirectRunner's (as a table: {'equal' if same else 'different'}){log}",
                        pytrace=False)


def _common(a: dict, b: dict) -> tuple[dict, dict]:
    both = set(a) & set(b)
    assert {"decisions", "rejected"} <= both, (sorted(a), sorted(b))
    return {k: a[k] for k in both}, {k: b[k] for k in both}


def assert_same_decisions(ref: str, out: str, volatile: set = frozenset(), computed_otherwise: str = "",
                          log: str = "") -> None:
    """Every ``_global/*.json`` record and the counts of ``stats.json``. ``computed_otherwise``: a
    global stage whose step ran another algorithm: its record is compared on the numbers both
    records report (its decisions and rejections at least), and the bytes it shuffled and wrote
    to ``_work/`` are not compared."""
    skip = TIMES | set(volatile)
    ga, gb = globals_(ref), globals_(out)
    assert sorted(ga) == sorted(gb) and ga, f"{sorted(ga)} != {sorted(gb)}{log}"
    for sid in ga:
        x, y = drop(ga[sid], skip), drop(gb[sid], skip)
        if sid == computed_otherwise:
            x, y = _common(x, y)
        assert x == y, f"_global/{sid}.json{log}"
    # another global step shuffles other tables, and its decision tables are laid out its own way
    ca, cb = counts(ref, skip | ({"shuffle_bytes"} if computed_otherwise else set())), \
        counts(out, skip | ({"shuffle_bytes"} if computed_otherwise else set()))
    for row_a, row_b in zip(ca["stages"], cb["stages"]):
        if row_a["id"] == computed_otherwise:
            row_a["global"], row_b["global"] = _common(row_a["global"], row_b["global"])
    assert ca == cb, f"stats.json counts differ{log}"
    assert ca["reconciled"] and ca["stray_files"] == []
    if not computed_otherwise:     # another global step writes other work files
        pa_, pb = stats_of(ref)["work_bytes_peak"], stats_of(out)["work_bytes_peak"]
        assert abs(pa_ - pb) < 1024 < pa_, (pa_, pb)


def check_pipeline_did_work(ref: str) -> None:
    """Every stage of the reference run decided something: the comparisons are not vacuous."""
    st = counts(ref)
    assert st["input_rows"] > 2000 and 0 < st["kept_rows"] < st["input_rows"]
    for row in st["stages"][1:]:
        assert row["rejected"] > 0, row["id"]
    for row in st["stages"]:
        if row.get("kind") == "global":
            assert row["global"]["rejected"] > 0, row["id"]


# -- the portable path -----------------------------------------------------------------------

@pytest.mark.parametrize("env", ["LOOPBACK", "EXTERNAL"])
@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_portable_runner_gives_the_direct_runners_files(services, inputs, reference, style_classifier,
                                                        tmp_path, pipeline, env):
    ref = reference(pipeline)
    check_pipeline_did_work(ref)
    out = str(tmp_path / "out")
    services.ensure()
    started = services.pool_workers_started()
    extra = {"sdk_worker_parallelism": EXTERNAL_WORKERS} if env == "EXTERNAL" else {}
    stats = portable_run(services, config(inputs["plain"], out, PIPELINES[pipeline](style_classifier)), env, **extra)
    log = services.tails()
    assert stats["reconciled"], log
    assert_same_files(ref, out, log=log)
    assert_same_decisions(ref, out, log=log)
    ran = pids(out)
    if env == "LOOPBACK":
        assert ran == {os.getpid()}, ran          # the SDK worker ran inside this process
        assert services.pool_workers_started() == started
    else:
        # the pool started 2 SDK worker processes for the job, and both of them wrote shards
        assert services.pool_workers_started() - started == EXTERNAL_WORKERS, log
        assert len(ran) == EXTERNAL_WORKERS and os.getpid() not in ran, ran
        assert not ran & {p.pid for p in services.procs.values()}


# -- the DirectRunner's 2 worker processes, another shard order ------------------------------

def _by_id(out: str, sub: str) -> pa.Table:
    t = pa.concat_tables([table(v) for k, v in files(out).items() if k.startswith(sub + "/")])
    return t.take(pc.sort_indices(t, [("id", "ascending")]))


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_two_worker_processes_and_another_shard_order_keep_and_reject_the_same(inputs, reference, style_classifier,
                                                                             tmp_path, pipeline):
    """``direct_running_mode=multi_processing`` with 2 workers, on the same shards under other
    names from a glob (every shard has another index). Decisions depend on content and ids only:
    the same documents are kept and rejected, with the same columns, reasons and duplicate_of,
    and shard by shard the files are the same bytes."""
    ref = reference(pipeline)
    out = str(tmp_path / "out")
    stats = direct_run(config(inputs["shuffled"], out, PIPELINES[pipeline](style_classifier)),
                       direct_running_mode="multi_processing", direct_num_workers=2)
    assert stats["reconciled"]
    ran = pids(out)
    assert len(ran) == 2 and os.getpid() not in ran, ran
    for sub in ("kept", "rejected"):
        a, b = _by_id(ref, sub), _by_id(out, sub)
        assert a.num_rows > 0 and a.equals(b), sub
    assert_same_files(ref, out, rename=RENAMED)
    # the input paths are part of the run's identity: the fingerprints differ, nothing else
    assert_same_decisions(ref, out, volatile={"fingerprint", "config_fingerprint"})


# -- global-stage variants on the portable path ----------------------------------------------

#: One line per variant of a global step: (stage, its params, what its _global record must say,
#: driver-side module patches). Each runs the dedup_select pipeline with the change, EXTERNAL
#: with 2 SDK worker processes, and must give the one-worker gather / union-find run's files and
#: decisions.
VARIANTS = [
    pytest.param("minhash_dedup", {"components": "distributed", "partitions": 4},
                 {"mode": "distributed", "partitions": 4}, {}, id="minhash-components-distributed"),
    # a gather cap of 5 rows: the boundary is found by the refinement levels, on the workers
    pytest.param("preselect", {"global_step": "distributed"}, {"global_step": "distributed"},
                 {"thresher.pipelines.select_beam.GATHER_MAX_ROWS": 5}, id="preselect-global-step-distributed"),
    pytest.param("exact_dedup", {"global_step": "distributed", "partitions": 3}, {"global_step": "distributed"}, {},
                 id="exact-global-step-distributed"),
]


@pytest.mark.parametrize("stage,params,record,patches", VARIANTS)
def test_global_step_variant_on_the_portable_path_equals_one_worker(services, inputs, reference, style_classifier,
                                                                    tmp_path, monkeypatch, stage, params, record,
                                                                    patches):
    ref = reference("dedup_select")
    for target, value in patches.items():
        monkeypatch.setattr(target, value)
    stages = dedup_select_stages(style_classifier)
    assert sum(s["name"] == stage for s in stages) == 1
    stages = [dict(s, **params) if s["name"] == stage else s for s in stages]
    out = str(tmp_path / "out")
    stats = portable_run(services, config(inputs["plain"], out, stages), "EXTERNAL",
                         sdk_worker_parallelism=EXTERNAL_WORKERS)
    log = services.tails()
    assert stats["reconciled"], log
    g = globals_(out)[stage]
    assert {k: g.get(k) for k in record} == record, g          # the variant really ran
    assert len(pids(out)) == EXTERNAL_WORKERS
    assert_same_files(ref, out, log=log)
    # the params are part of the run's identity: the fingerprints differ
    assert_same_decisions(ref, out, volatile={"global_step", "fingerprint", "config_fingerprint"},
                          computed_otherwise=stage, log=log)
    if "max_rows_per_task" in g:
        assert g["max_rows_per_task"] < stats["input_rows"]    # no task held every key


# -- failures come back with the job service's traceback; a hung job is cut off ----------------

def test_a_failed_job_fails_with_the_job_services_traceback(services, inputs, tmp_path):
    """EXTERNAL workers from a port where no pool listens: the job fails in the job service, and
    the test failure carries the service's log, where Beam's traceback is."""
    cfg = config(inputs["plain"], str(tmp_path / "out"), [{"name": "length", "min_chars": 10}])
    t0 = time.time()
    with pytest.raises(pytest.fail.Exception) as got:
        portable_run(services, cfg, "EXTERNAL", environment_config=f"localhost:{_free_port()}")
    msg = str(got.value)
    assert "RuntimeError" in msg and "FAILED" in msg, msg
    assert "StartWorker" in msg.split("--- job_service log", 1)[1], msg      # the traceback, from the log
    assert time.time() - t0 < 60
    assert services.alive()


def test_a_hung_job_is_cancelled_at_the_timeout(services, inputs, tmp_path):
    """A worker pool whose `python` is no Beam interpreter (its SDK workers die at start, the
    mistake beam-notes §9 describes): the job waits for workers that never come, up to Beam's
    own 300 s. The timeout cancels it, the run raises in seconds and the services are stopped
    (``ensure`` starts fresh ones for a later run)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\nexit 3\n")
    (fake / "python").chmod(0o755)
    services.ensure()
    port = services.spawn("broken_pool", POOL_ARGV, path_first=str(fake))
    try:
        services.wait_listening(port, t_end=time.time() + 60)
        cfg = config(inputs["plain"], str(tmp_path / "out"), [{"name": "length", "min_chars": 10}])
        t0 = time.time()
        with pytest.raises(JobTimeout):
            submit(services, cfg, "EXTERNAL", timeout=5, environment_config=f"localhost:{port}")
        assert time.time() - t0 < 5 + KILL_GRACE_S
        assert "Starting worker with command" in services.timed_out       # it did ask for workers
        assert not services.procs                                         # all stopped, groups killed
    finally:
        services.stop("broken_pool")
