"""The same pipeline through Beam's portable job API (what Flink/Spark/Dataflow v2 use)."""
import glob
import os
import socket
import subprocess
import sys
import time

import pyarrow.parquet as pq
from conftest import corpus, local_run


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def test_portable_runner_gives_identical_outputs(tmp_path):
    t = pq.read_table(corpus("fortunes.parquet"), columns=["id", "text"]).slice(0, 2000)
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(t.slice(0, 900), inp / "a.parquet")
    pq.write_table(t.slice(900), inp / "b.parquet")
    stages = [{"name": "length", "min_chars": 30}, {"name": "exact_dedup"}]
    local_run({"input": str(inp), "output": str(tmp_path / "local"), "stages": stages})
    port = _free_port()
    svc = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                            "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        from thresher.pipelines.api import run
        stats = run({"input": str(inp), "output": str(tmp_path / "portable"), "stages": stages,
                     "runner": "PortableRunner",
                     "pipeline_options": {"job_endpoint": f"localhost:{port}", "environment_type": "LOOPBACK"}},
                    progress=False)
    finally:
        svc.terminate()
        svc.wait(10)
    assert stats["reconciled"]
    for sub in ("kept", "rejected"):
        for f in sorted(glob.glob(str(tmp_path / "local" / sub / "*.parquet"))):
            g = str(tmp_path / "portable" / sub / os.path.basename(f))
            assert pq.read_table(f).equals(pq.read_table(g))
