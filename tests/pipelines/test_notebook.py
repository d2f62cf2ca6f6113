"""The DuckDB inspection notebook runs end to end on a real output directory."""
import os

import nbformat
from conftest import ROOT, corpus, local_run
from nbclient import NotebookClient


def test_inspect_notebook_executes(tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    t = pq.read_table(corpus("fortunes.parquet"), columns=["id", "text"]).slice(0, 3000)
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(t.slice(0, 1500), inp / "a.parquet")
    pq.write_table(t.slice(1500), inp / "b.parquet")
    out = tmp_path / "out"
    local_run({"input": str(inp), "output": str(out),
               "stages": [{"name": "length", "min_chars": 40}, {"name": "exact_dedup"}]})
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "inspect.ipynb"), as_version=4)
    monkeypatch.setenv("THRESHER_OUT", str(out))
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "kept" in outputs and "= 3000; input 3000" in outputs
    assert os.path.getsize(out / "_score_histograms.png") > 1000
    assert os.path.exists(out / "_rejections_by_stage.png")
