"""Intermediates under ``_work/``: removed after a successful run unless ``keep_work``, their
peak bytes in ``stats.json``, and everything a resume needs kept when a run is interrupted
(a worker failure in either phase, SIGINT, SIGKILL), on the built-in sample corpus."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import local_run

from thresher import LocalStage, Param, StageOutput
from thresher.pipelines import engine as E
from thresher.pipelines.sample import write_sample
from thresher.scorers import registry

N_DOCS, N_SHARDS = 3000, 12          # 250 documents a shard: one batch a shard
# two global stages around a local filter: keys of both, work rows, a stage order that matters
STAGES = [{"name": "exact_dedup"}, {"name": "gopher_quality"}, {"name": "minhash_dedup"}]


@registry.register
class _Trap(LocalStage):
    """Keeps every row and adds nothing; while the file ``trap`` exists, its ``fail_at``-th
    batch in this process raises (a worker failure at a chosen point of phase 1)."""

    name = "test_trap"
    doc = "A test stage: a pass-through that fails on a chosen batch while a trap file exists."
    params = {"trap": Param(str, "", "fail while this file exists"),
              "fail_at": Param(int, 0, "the batch (1-based, in this process) that fails")}
    columns = ()
    calls = 0

    def process(self, text, batch):
        type(self).calls += 1
        if self.config["trap"] and os.path.exists(self.config["trap"]) and type(self).calls == self.config["fail_at"]:
            raise RuntimeError("trapped")
        return StageOutput(columns={})


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("sample"))
    write_sample(d, n_docs=N_DOCS, seed=0, n_shards=N_SHARDS)
    return d


def _cfg(src: str, out: str, stages=None, keep_work: bool = False) -> dict:
    return {"input": {"path": os.path.join(src, "shard-*.parquet"), "id_column": "id"},
            "output": {"path": out, "keep_work": keep_work}, "stages": list(stages or STAGES)}


@pytest.fixture(scope="module")
def clean(sample, tmp_path_factory) -> str:
    """The uninterrupted run of STAGES (default keep_work)."""
    out = str(tmp_path_factory.mktemp("clean") / "out")
    assert local_run(_cfg(sample, out))["reconciled"]
    return out


def digest(out: str) -> dict:
    return {os.path.relpath(f, out): hashlib.sha256(open(f, "rb").read()).hexdigest()
            for d in ("kept", "rejected") for f in sorted(glob.glob(os.path.join(out, d, "*.parquet")))}


def work_files(out: str) -> list[str]:
    """Every file under _work/ (relative; the spilled shuffle tables are in _work/_shuffle/)."""
    d = os.path.join(out, "_work")
    return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)


def manifests(out: str) -> dict[str, dict]:
    return {os.path.basename(f)[:-5]: json.load(open(f)) for f in glob.glob(os.path.join(out, "_manifests", "*.json"))}


def phase1_done(out: str) -> dict[str, dict]:
    """The phase-1 manifests of the shards whose local stages and keys are finished."""
    return {os.path.basename(f)[: -len(".p1.json")]: json.load(open(f))
            for f in glob.glob(os.path.join(out, "_work", "*.p1.json"))}


def assert_phase1_skipped(out: str, before: dict[str, dict]) -> None:
    """A resumed shard whose phase 1 was finished keeps that phase's timings exactly (they
    come from its phase-1 manifest; a recomputation would have measured new ones)."""
    after = manifests(out)
    for name, p1 in before.items():
        got = dict(after[name]["stage_seconds"])
        got.pop("apply_decisions")
        assert got == p1["stage_seconds"], f"{name}: phase 1 was recomputed on resume"
        assert after[name]["work_bytes"] == p1["work_bytes"] > 0


def assert_cleaned(out: str) -> dict:
    assert work_files(out) == [], work_files(out)
    stats = json.load(open(os.path.join(out, "stats.json")))
    assert stats["reconciled"] and stats["work_bytes_kept"] == 0
    assert stats["work_bytes_peak"] >= sum(m["work_bytes"] for m in manifests(out).values()) > 0
    return stats


# -- a successful run --------------------------------------------------------------------------------
def test_default_pipeline_removes_work_records_its_bytes_and_keep_work_keeps_the_keys(sample, tmp_path):
    stages = registry.default_pipeline()
    assert {"exact_dedup", "minhash_dedup"} <= {s["name"] for s in stages}
    gone, kept = str(tmp_path / "gone"), str(tmp_path / "kept")
    a = local_run(_cfg(sample, gone, stages))
    b = local_run(_cfg(sample, kept, stages, keep_work=True))
    # keep_work false: nothing left under _work/, the peak recorded in stats.json
    sa = assert_cleaned(gone)
    assert sa == a
    # keep_work true: the work rows and every global stage's keys of every shard are still there
    gidx = [k for k, s in enumerate(stages) if s["name"] in ("exact_dedup", "minhash_dedup")]
    left = work_files(kept)
    for i in range(N_SHARDS):
        for k in gidx:
            assert f"shard-{i:05d}.keys{k}.parquet" in left
        assert f"shard-{i:05d}.rows.parquet" in left and f"shard-{i:05d}.p1.json" in left
    on_disk = sum(os.path.getsize(os.path.join(kept, "_work", f)) for f in left)
    assert b["work_bytes_kept"] == b["work_bytes_peak"] == on_disk
    written = sum(m["work_bytes"] for m in manifests(kept).values())
    assert 0 < written <= on_disk
    # the global steps' decision tables went to files, by shard (refs crossed the runner)
    assert any(f.startswith("_shuffle/decisions_minhash_dedup/") for f in left)
    assert set(b["shuffle_bytes"]) >= {"decisions/exact_dedup", "decisions/minhash_dedup"}
    # MinHash signatures are most of it; the same run wrote the same bytes either way
    keys = E.read_keys(glob.glob(os.path.join(kept, "_work", f"*.keys{gidx[-1]}.parquet")))
    assert keys.num_rows > 0
    assert sum(m["work_bytes"] for m in manifests(gone).values()) == written
    assert abs(a["work_bytes_peak"] - b["work_bytes_peak"]) <= 0.01 * b["work_bytes_peak"]
    # the outputs are the same with and without keep_work
    assert digest(gone) == digest(kept)
    # a rerun of the completed run is a no-op that keeps the recorded peak
    mtimes = {f: os.path.getmtime(os.path.join(gone, f)) for f in digest(gone)}
    again = local_run(_cfg(sample, gone, stages))
    assert {f: os.path.getmtime(os.path.join(gone, f)) for f in mtimes} == mtimes
    assert again["work_bytes_peak"] == a["work_bytes_peak"] and again["work_bytes_kept"] == 0
    # a completed run with keep_work, rerun without it: the work is removed then
    again = local_run(_cfg(sample, kept, stages))
    assert work_files(kept) == [] and again["work_bytes_kept"] == 0
    assert again["work_bytes_peak"] == b["work_bytes_peak"]


def test_a_rerun_after_cleanup_recomputes_keys(sample, clean, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(clean, out)
    assert work_files(out) == []
    # a shard's outputs and manifest are lost: its decisions need every shard's keys again
    for sub in ("kept", "rejected"):
        os.remove(os.path.join(out, sub, "shard-00005.parquet"))
    os.remove(os.path.join(out, "_manifests", "shard-00005.json"))
    untouched = {f: os.path.getmtime(os.path.join(out, f)) for f in digest(out)}
    stats = local_run(_cfg(sample, out))
    assert digest(out) == digest(clean)
    assert {f: os.path.getmtime(os.path.join(out, f)) for f in untouched} == untouched   # the others skipped
    assert_cleaned(out)
    assert stats["work_bytes_peak"] > 0


def test_single_phase_run_writes_no_work(sample, tmp_path):
    stats = local_run(_cfg(sample, str(tmp_path / "o"), [{"name": "gopher_quality"}]))
    assert stats["work_bytes_peak"] == 0 == stats["work_bytes_kept"]
    assert work_files(str(tmp_path / "o")) == []


# -- interrupted runs keep what the resume needs --------------------------------------------------------
def test_worker_failure_in_phase1_keeps_the_finished_shards_work_and_the_resume_skips_them(sample, clean, tmp_path):
    out = str(tmp_path / "out")
    trap = tmp_path / "trap"
    trap.write_text("")
    # the trap keeps and adds nothing: the outputs equal those of STAGES alone; one batch a
    # shard, so its 5th batch is the 5th shard's
    cfg = _cfg(sample, out, [{"name": "test_trap", "trap": str(trap), "fail_at": 5}, *STAGES])
    _Trap.calls = 0
    with pytest.raises(Exception, match="trapped"):
        local_run(cfg)
    before = phase1_done(out)
    assert len(before) == 4 and not manifests(out)           # 4 shards through phase 1, then the failure
    left = work_files(out)
    for name in before:                                       # all a resume needs of them is there
        assert {f"{name}.rows.parquet", f"{name}.keys1.parquet", f"{name}.keys3.parquet"} <= set(left)
    trap.unlink()
    stats = local_run(cfg)
    assert_phase1_skipped(out, before)
    assert digest(out) == digest(clean)
    assert assert_cleaned(out) == stats


def test_worker_failure_in_phase2_keeps_the_work_and_the_resume_skips_finished_shards(sample, clean, tmp_path,
                                                                                   monkeypatch):
    out = str(tmp_path / "out")
    real = E.ShardProcessor.phase2
    calls = []

    def failing(self, shard, decisions):
        calls.append(shard.name)
        if len(calls) == 4:
            raise RuntimeError("worker lost")
        return real(self, shard, decisions)

    monkeypatch.setattr(E.ShardProcessor, "phase2", failing)
    with pytest.raises(Exception, match="worker lost"):
        local_run(_cfg(sample, out))
    monkeypatch.setattr(E.ShardProcessor, "phase2", real)
    done = manifests(out)
    assert len(done) == 3
    assert len(phase1_done(out)) == N_SHARDS                  # every shard's work rows and keys are kept
    assert len([f for f in work_files(out) if f.endswith(".rows.parquet")]) == N_SHARDS
    stats = local_run(_cfg(sample, out))
    assert {k: v for k, v in manifests(out).items() if k in done} == done   # finished shards not redone
    assert digest(out) == digest(clean)
    assert assert_cleaned(out) == stats


def _cli_config(tmp_path, sample: str, out) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(f"input: {{path: '{os.path.join(sample, 'shard-*.parquet')}', id_column: id}}\n"
                 f"output: {out}\nstages: {json.dumps(STAGES)}\n"
                 "pipeline_options: {direct_num_workers: 1}\n")
    return str(p)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_killed_run_then_resume_skips_finished_shards_and_cleans_up(sample, clean, tmp_path, sig):
    out = tmp_path / "out"
    cfg = _cli_config(tmp_path, sample, out)
    p = subprocess.Popen([sys.executable, "-m", "thresher", "run", cfg, "--quiet"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(glob.glob(str(out / "_work" / "*.p1.json"))) < 2:
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be interrupted"
    os.killpg(p.pid, sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), err
    before = phase1_done(str(out))
    assert len(before) >= 2
    assert not os.path.exists(out / "stats.json")             # the run did not finish: nothing removed
    for name in before:
        assert os.path.exists(out / "_work" / f"{name}.keys2.parquet")
    r = subprocess.run([sys.executable, "-m", "thresher", "run", cfg, "--quiet"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert_phase1_skipped(str(out), before)
    assert digest(str(out)) == digest(clean)
    assert_cleaned(str(out))                                   # a killed attempt's temporary files too


def test_cli_prints_the_peak(sample, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "thresher", "run", _cli_config(tmp_path, sample, out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    stats = json.load(open(out / "stats.json"))
    line = [ln for ln in r.stderr.splitlines() if "intermediates:" in ln]
    assert len(line) == 1 and f"({stats['work_bytes_peak']:,} bytes)" in line[0] and "removed" in line[0], r.stderr
    r = subprocess.run([sys.executable, "-m", "thresher", "run", _cli_config(tmp_path, sample, out), "--keep-work"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "nothing to do" in r.stderr and "intermediates:" not in r.stderr

