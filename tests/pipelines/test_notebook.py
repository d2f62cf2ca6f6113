"""The DuckDB inspection notebook runs end to end on a real output directory, from the repository
root and from notebooks/, shows its figures inline and saves them as PNG in <out>/inspect/."""
import base64
import os

import nbformat
import pytest
from conftest import ROOT, corpus, local_run
from nbclient import NotebookClient

NOTEBOOK = os.path.join(ROOT, "notebooks", "inspect.ipynb")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    import pyarrow.parquet as pq
    tmp = tmp_path_factory.mktemp("nb")
    t = pq.read_table(corpus("fortunes.parquet"), columns=["id", "text"]).slice(0, 3000)
    inp = tmp / "in"
    inp.mkdir()
    pq.write_table(t.slice(0, 1500), inp / "a.parquet")
    pq.write_table(t.slice(1500), inp / "b.parquet")
    out = tmp / "out"
    local_run({"input": str(inp), "output": str(out),
               "stages": [{"name": "language"}, {"name": "length", "min_chars": 40}, {"name": "exact_dedup"}]})
    return out


def _execute(nb, cwd):
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
    return nb


def test_notebook_source_is_plain():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert 'matplotlib.use("Agg")' not in src and "%matplotlib inline" in src
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "THRESHER_OUT" in first.source and "OUT =" in first.source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"


@pytest.mark.parametrize("where", ["root", "notebooks"])
def test_inspect_notebook_executes(out_dir, monkeypatch, where):
    out = out_dir
    for p in (out / "inspect").glob("*.png"):
        p.unlink()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("THRESHER_OUT", str(out))
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    _execute(nb, ROOT if where == "root" else os.path.join(ROOT, "notebooks"))
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outs)
    assert str(out) in text and "kept" in text and "= 3000; input 3000" in text
    # figures are embedded in the executed notebook (shown inline) ...
    pngs = [base64.b64decode(o["data"]["image/png"]) for o in outs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2 and all(p.startswith(b"\x89PNG") and len(p) > 1000 for p in pngs)
    # ... and saved next to the output
    assert os.path.getsize(out / "inspect" / "score_histograms.png") > 1000
    assert os.path.getsize(out / "inspect" / "rejections_by_reason.png") > 1000
    # the run's thresholds, the per-language breakdown and the seeded examples are there
    html = "".join(o.get("data", {}).get("text/plain", "") for o in outs)
    assert "language.threshold=0.65" in text and "length.too_short" in html and "exact_dedup.duplicate" in html


@pytest.mark.parametrize("where", ["root", "notebooks"])
@pytest.mark.parametrize("env,expected", [(None, "thresher-out"), ("runs/a", os.path.join("runs", "a"))])
def test_output_directory_parameter(monkeypatch, where, env, expected):
    """Without THRESHER_OUT the notebook reads <repository>/thresher-out; a relative THRESHER_OUT is
    taken from the repository root; the same from either directory."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    nb.cells = [first, nbformat.v4.new_code_cell("print(OUT)")]
    if env is None:
        monkeypatch.delenv("THRESHER_OUT", raising=False)
    else:
        monkeypatch.setenv("THRESHER_OUT", env)
    _execute(nb, ROOT if where == "root" else os.path.join(ROOT, "notebooks"))
    printed = nb.cells[-1].outputs[0]["text"].strip()
    assert printed == os.path.join(os.path.realpath(ROOT), expected)
