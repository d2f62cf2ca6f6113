"""The package shape and the stage contract: one namespace, one home per stage, model
stages inside `thresher run`, steps with accelerator hints, ScoreThenSelect, plugins."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, corpus, local_run

import thresher
from thresher.pipelines import api, stage_docs
from thresher.pipelines import engine as E
from thresher.scorers import registry
from thresher.scorers.base import Column, LocalStage, StageContractError, StageOutput


def _plugin_copy(site) -> str:
    """The test plugin's source copied next to its install target (pip builds in the tree)."""
    import shutil
    dst = os.path.join(os.path.dirname(str(site)), os.path.basename(str(site)) + "-src")
    shutil.copytree(os.path.join(ROOT, "tests", "data", "plugin"), dst, dirs_exist_ok=True)
    return dst


def real_texts(n: int, name: str = "wiki_summaries.parquet", offset: int = 0) -> pa.Table:
    t = pq.read_table(corpus(name), columns=["id", "text"]).slice(offset, n)
    return pa.table({"id": t["id"].cast(pa.string()), "text": t["text"]})


def shards_of(write_shards, table: pa.Table, k: int = 3, sub: str = "in") -> str:
    n = table.num_rows
    cuts = np.linspace(0, n, k + 1).astype(int)
    return write_shards({f"part-{i}.parquet": table.slice(a, b - a) for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))},
                        sub=sub, row_group_size=200)


def read_all(out: str) -> pa.Table:
    parts = [pq.read_table(f) for f in sorted(glob.glob(os.path.join(out, "kept", "*.parquet")))
             + sorted(glob.glob(os.path.join(out, "rejected", "*.parquet")))]
    t = pa.concat_tables(parts, promote_options="permissive")
    return t.take(pc.sort_indices(t, [("id", "ascending")]))


# -- one package ----------------------------------------------------------------------------
def test_public_api_and_version():
    for name in ("run", "plan", "CurateShards", "ApplyStages", "Stage", "LocalStage", "GlobalStage",
                 "ModelStage", "ScoreThenSelect", "Decisions", "register"):
        assert getattr(thresher, name) is not None
    assert thresher.__version__ and thresher.__version__[0].isdigit()
    out = subprocess.run([sys.executable, "-m", "thresher", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"thresher {thresher.__version__}"


def test_wheel_installs_only_the_thresher_package(tmp_path):
    """A built wheel holds `thresher/` (with the C kernel and the word lists) and its
    dist-info, nothing at the top level named pipelines, schemas or scorers."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), ROOT], check=True, capture_output=True)
    whl = glob.glob(str(tmp_path / "thresher-*.whl"))[0]
    names = zipfile.ZipFile(whl).namelist()
    assert {n.split("/")[0] for n in names} == {"thresher", f"thresher-{thresher.__version__}.dist-info"}
    assert "thresher/scorers/filters/data/badwords/en.hard.txt" in names
    assert "thresher/scorers/models/stages.py" in names
    ep = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "thresher = thresher.pipelines.cli:entry" in ep


def test_no_sys_path_manipulation():
    hits = []
    for d in ("pipelines", "scorers", "schemas", "thresher", "tests", "benchmarks"):
        for f in glob.glob(os.path.join(ROOT, d, "**", "*.py"), recursive=True):
            if f.endswith("test_package.py"):
                continue
            if "sys.path.insert" in open(f, encoding="utf-8").read():
                hits.append(f)
    assert hits == []


# -- one home per stage ---------------------------------------------------------------------
def test_every_stage_declares_itself():
    for cls in registry.all_classes():
        assert cls.doc and cls.columns is not None, cls
        names = [c.name for c in cls.columns]
        assert len(names) == len(set(names))
    assert [s["name"] for s in registry.default_pipeline()] == [
        "language", "exact_dedup", "gopher_repetition", "gopher_quality", "c4", "fineweb", "toxicity",
        "minhash_dedup"]


def test_readme_stage_reference_is_generated():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert stage_docs.readme_section(readme) == stage_docs.markdown(), \
        "README stage reference is stale: replace it with the output of `thresher stages --markdown`"
    out = subprocess.run([sys.executable, "-m", "thresher", "stages", "--markdown"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == stage_docs.markdown()


def test_two_instances_of_a_stage_get_their_own_columns_and_reasons(tmp_path, write_shards):
    src = shards_of(write_shards, real_texts(300))
    stats = local_run({"input": src, "output": str(tmp_path / "out"), "stages": [
        {"name": "length", "id": "short", "max_chars": 400},
        {"name": "length", "min_chars": 200},
        {"name": "exact_dedup", "id": "exact"}]})
    assert stats["reconciled"]
    t = read_all(str(tmp_path / "out"))
    for col in ("short_chars", "short_words", "short_lines", "length_chars", "exact_exact_hash"):
        assert col in t.column_names, col
    reasons = set(t["reason"].to_pylist()) - {None}
    assert "short.too_long" in reasons and "length.too_short" in reasons
    chars = pc.utf8_length(t["text"]).to_numpy(zero_copy_only=False)
    assert (t["short_chars"].to_numpy(zero_copy_only=False) == chars).all()
    # the second stage saw only the rows the first kept
    seen = pc.is_valid(t["length_chars"]).to_numpy(zero_copy_only=False)
    assert (seen == (chars <= 400)).all()


@registry.register
class _Liar(LocalStage):
    name = "test_liar"
    doc = "A broken stage for the contract test: returns a column it does not declare."
    columns = (Column("test_liar_n", pa.int64(), "declared"),)

    def process(self, text, batch):
        return StageOutput(columns={"test_liar_n": pc.utf8_length(text).cast(pa.int64()),
                                    "undeclared": pc.utf8_length(text)})


@registry.register
class _Mute(LocalStage):
    name = "test_mute"
    doc = "A broken stage for the contract test: writes an undeclared reason."
    columns = ()

    def process(self, text, batch):
        return StageOutput(columns={}, reasons=pa.array([self.reason("nope")] * len(text)))


@pytest.mark.parametrize("stage,needle", [("test_liar", "['undeclared'] it does not declare"),
                                          ("test_mute", "writes reason rule 'nope'")])
def test_engine_rejects_undeclared_columns_and_reasons(tmp_path, write_shards, stage, needle):
    src = shards_of(write_shards, real_texts(50), k=1)
    p = api.plan({"input": src, "output": str(tmp_path / "o"), "stages": [{"name": stage}]})
    proc = E.ShardProcessor(p)
    proc.setup()
    batch = next(iter(pq.ParquetFile(p.shards[0].path).iter_batches()))
    with pytest.raises(StageContractError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        proc.run_batch(p.shards[0], batch, 0, {})


def test_stage_docs_in_is_filled(tmp_path, write_shards):
    src = shards_of(write_shards, real_texts(200), k=2)
    local_run({"input": src, "output": str(tmp_path / "o"),
               "stages": [{"name": "length", "max_chars": 300}, {"name": "gopher_quality"}]})
    ms = [json.load(open(f)) for f in glob.glob(str(tmp_path / "o" / "_manifests" / "*.json"))]
    assert sum(m["stage_docs_in"]["length"] for m in ms) == 200
    kept_by_length = sum(m["rows_in"] - m["reasons"].get("length.too_long", {"docs": 0})["docs"] for m in ms)
    assert sum(m["stage_docs_in"]["gopher_quality"] for m in ms) == kept_by_length


# -- plugins ---------------------------------------------------------------------------------
def test_third_party_stage_through_entry_points(tmp_path, write_shards):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), _plugin_copy(site)],
                   check=True, capture_output=True)
    texts = real_texts(120, "fortunes.parquet")
    loud = pa.table({"id": pa.array([f"loud{i}" for i in range(5)]),
                     "text": pa.array(["Stop! Now! Please! Really! " * (i + 1) for i in range(5)])})
    src = shards_of(write_shards, pa.concat_tables([texts, loud]), k=2)
    cfg = tmp_path / "cfg.yaml"
    out = tmp_path / "out"
    cfg.write_text(f"input: {src}\noutput: {out}\nstages:\n  - {{name: shout, max_bangs: 3}}\n  - {{name: length}}\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    listed = subprocess.run([sys.executable, "-m", "thresher", "stages"], env=env, capture_output=True, text=True)
    assert "shout (local)" in listed.stdout
    r = subprocess.run([sys.executable, "-m", "thresher", "run", str(cfg), "--quiet"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    t = read_all(str(out))
    assert "shout_bangs" in t.column_names and t.num_rows == 125
    rej = t.filter(pc.equal(t["reason"], "shout.too_loud"))
    assert {f"loud{i}" for i in range(5)} <= set(rej["id"].to_pylist())
    bangs = pc.count_substring(t["text"], "!").to_numpy(zero_copy_only=False)
    assert ((bangs > 3) == pc.equal(pc.fill_null(t["reason"], ""), "shout.too_loud").to_numpy(zero_copy_only=False)).all()
    # without the plugin on the path the same config is a clear config error
    r2 = subprocess.run([sys.executable, "-m", "thresher", "run", str(cfg), "--quiet", "--overwrite"],
                        capture_output=True, text=True)
    assert r2.returncode == 2 and "unknown stage 'shout'" in r2.stderr
