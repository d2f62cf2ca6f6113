"""The CLI end to end: `thresher run` with no arguments, sample, inspect, stages."""
import json
import os
import subprocess
import sys
import time

import duckdb
from conftest import ROOT


def _thresher(*args, cwd, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", "from thresher.pipelines.cli import entry; entry()", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_run_without_arguments_on_the_sample(tmp_path):
    t0 = time.time()
    r = _thresher("run", cwd=tmp_path)
    took = time.time() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    assert took < 180, f"thresher run took {took:.0f}s"
    out = tmp_path / "thresher-out"
    assert "reconciled: input 5,000 = kept" in r.stdout
    assert "shards" in r.stderr and "docs/s" in r.stderr          # progress lines
    assert "Traceback" not in r.stderr and "INFO:" not in r.stderr
    con = duckdb.connect()
    k = con.execute(f"select count(*) from read_parquet('{out}/kept/*.parquet')").fetchone()[0]
    j = con.execute(f"select count(*) from read_parquet('{out}/rejected/*.parquet')").fetchone()[0]
    assert k + j == 5000
    stats = json.load(open(out / "stats.json"))
    assert stats["reconciled"] and stats["kept_rows"] == k
    names = [s["id"] for s in stats["stages"]]
    from thresher.pipelines.cli import default_stages
    assert names == ["input"] + [s["name"] for s in default_stages()]
    # every default stage had work on the sample corpus
    for s in stats["stages"][1:]:
        assert s["rejected"] > 0, f"stage {s['id']} rejected nothing on the sample"
    # inspect works on it
    r2 = _thresher("inspect", str(out), cwd=tmp_path)
    assert r2.returncode == 0 and "documents: 5,000" in r2.stdout
    r3 = _thresher("inspect", str(out), "--json", cwd=tmp_path)
    assert json.loads(r3.stdout)["total"] == 5000


def test_sample_command_and_rerun_is_a_noop(tmp_path):
    r = _thresher("sample", str(tmp_path / "s"), "--docs", "600", "--seed", "3", "--shards", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "s")) == ["_truth", "shard-00000.parquet", "shard-00001.parquet",
                                                 "shard-00002.parquet"]
    args = ["run", "--input", str(tmp_path / "s"), "--output", str(tmp_path / "o")]
    assert _thresher(*args, cwd=tmp_path).returncode == 0
    r = _thresher(*args, cwd=tmp_path)
    assert r.returncode == 0 and "nothing to do" in r.stderr


def test_stages_lists_every_registered_stage(tmp_path):
    from thresher.pipelines import registry
    r = _thresher("stages", cwd=tmp_path)
    assert r.returncode == 0
    for name in registry.names():
        if registry.stage_class(name).__module__.startswith("thresher."):   # not the tests' own stages
            assert f"\n{name} (" in "\n" + r.stdout
