"""The foundation contract: conservation, identity, bad input, resume, determinism."""
import glob
import hashlib
import json
import os
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import corpus, local_run

from thresher.pipelines.api import ReconciliationError, plan
from thresher.schemas.config import ConfigError
from thresher.schemas.documents import InputError


def _fortune_shards(tmp_path, n_shards=4, limit=8000):
    """Real fortunes (with natural exact duplicates) split into uneven shards."""
    t = pq.read_table(corpus("fortunes.parquet"), columns=["id", "lang", "text"]).slice(0, limit)
    d = tmp_path / "fortunes"
    d.mkdir()
    cuts = np.linspace(0, t.num_rows, n_shards + 1).astype(int)
    cuts[1] = cuts[1] // 3  # uneven
    for i in range(n_shards):
        pq.write_table(t.slice(cuts[i], cuts[i + 1] - cuts[i]), d / f"part-{i:02d}.parquet", row_group_size=700)
    return str(d), t


def _files_digest(out):
    h = {}
    for f in sorted(glob.glob(os.path.join(out, "kept", "*.parquet")) + glob.glob(os.path.join(out, "rejected", "*.parquet"))):
        h[os.path.relpath(f, out)] = hashlib.sha256(pq.read_table(f).to_pandas().to_csv().encode()).hexdigest() \
            if False else hashlib.sha256(open(f, "rb").read()).hexdigest()
    return h


def test_conservation_and_dedup_on_real_fortunes(tmp_path):
    inp, t = _fortune_shards(tmp_path)
    out = str(tmp_path / "out")
    stats = local_run({"input": {"path": inp, "id_column": "id"}, "output": out,
                       "stages": [{"name": "length", "min_chars": 20}, {"name": "exact_dedup"}]})
    assert stats["reconciled"] is True
    assert stats["input_rows"] == t.num_rows == stats["kept_rows"] + stats["rejected_rows"]
    con = duckdb.connect()
    k = con.execute(f"select count(*) from read_parquet('{out}/kept/*.parquet')").fetchone()[0]
    r = con.execute(f"select count(*) from read_parquet('{out}/rejected/*.parquet')").fetchone()[0]
    assert k + r == t.num_rows
    # every input id appears exactly once in the outputs
    ids = con.execute(f"select id from read_parquet('{out}/kept/*.parquet') union all "
                      f"select id from read_parquet('{out}/rejected/*.parquet')").fetchall()
    assert sorted(i[0] for i in ids) == sorted(t["id"].to_pylist())
    # extra columns carried through untouched
    lang = dict(con.execute(f"select id, lang from read_parquet('{out}/kept/*.parquet')").fetchall())
    src = dict(zip(t["id"].to_pylist(), t["lang"].to_pylist()))
    assert all(src[i] == l for i, l in lang.items())
    # exact duplicates: each duplicate_of is a kept document with the same normalised text
    dups = con.execute(f"select r.id, r.duplicate_of, r.exact_hash = k.exact_hash from "
                       f"read_parquet('{out}/rejected/*.parquet') r join read_parquet('{out}/kept/*.parquet') k "
                       f"on r.duplicate_of = k.id where r.reason = 'exact_dedup.duplicate'").fetchall()
    n_dup = con.execute(f"select count(*) from read_parquet('{out}/rejected/*.parquet') "
                        f"where reason = 'exact_dedup.duplicate'").fetchone()[0]
    assert n_dup > 0 and len(dups) == n_dup and all(x[2] for x in dups)
    # no two kept rows share a normalised text
    assert con.execute(f"select count(*) - count(distinct exact_hash) from "
                       f"read_parquet('{out}/kept/*.parquet')").fetchone()[0] == 0
    # length rejections carry their score; stage stats chain
    short = con.execute(f"select max(length_chars) from read_parquet('{out}/rejected/*.parquet') "
                        f"where reason = 'length.too_short'").fetchone()[0]
    assert short is not None and short < 20
    st = {s["id"]: s for s in stats["stages"]}
    assert st["exact_dedup"]["docs_in"] == st["length"]["kept"]
    assert st["exact_dedup"]["rejected"] == n_dup
    on_disk = json.load(open(os.path.join(out, "stats.json")))
    assert on_disk["kept_rows"] == k and on_disk["reconciled"]
    assert not glob.glob(os.path.join(out, "_work", "*.rows.parquet"))
    assert len(glob.glob(os.path.join(out, "_manifests", "*.json"))) == 4


def test_same_output_whatever_workers_and_shard_layout(tmp_path):
    inp, t = _fortune_shards(tmp_path, n_shards=4, limit=5000)
    cfg = {"input": {"path": inp, "id_column": "id"},
           "stages": [{"name": "length", "min_chars": 20}, {"name": "exact_dedup"}]}
    a = local_run({**cfg, "output": str(tmp_path / "a")}, workers=1)
    b = local_run({**cfg, "output": str(tmp_path / "b"),
                   "pipeline_options": {"direct_num_workers": 2, "direct_running_mode": "multi_processing"}})
    assert _files_digest(str(tmp_path / "a")) == _files_digest(str(tmp_path / "b"))
    # a different shard layout (2 shards, reversed row order) keeps the same documents
    d2 = tmp_path / "relayout"
    d2.mkdir()
    rev = t.take(pa.array(np.arange(t.num_rows)[::-1].copy()))
    pq.write_table(rev.slice(0, 1234), d2 / "x.parquet")
    pq.write_table(rev.slice(1234), d2 / "y.parquet")
    c = local_run({**cfg, "input": {"path": str(d2), "id_column": "id"}, "output": str(tmp_path / "c")})
    con = duckdb.connect()
    ka = {r[0] for r in con.execute(f"select id from read_parquet('{tmp_path}/a/kept/*.parquet')").fetchall()}
    kc = {r[0] for r in con.execute(f"select id from read_parquet('{tmp_path}/c/kept/*.parquet')").fetchall()}
    assert ka == kc
    assert a["kept_rows"] == b["kept_rows"] == c["kept_rows"]


def test_rerun_skips_and_resume_after_interruption(tmp_path):
    inp, _ = _fortune_shards(tmp_path, n_shards=4, limit=4000)
    out = str(tmp_path / "out")
    cfg = {"input": {"path": inp, "id_column": "id"}, "output": out,
           "stages": [{"name": "exact_dedup"}, {"name": "length", "min_chars": 30}]}
    local_run(cfg)
    before = _files_digest(out)
    mtimes = {f: os.path.getmtime(os.path.join(out, f)) for f in before}
    local_run(cfg)  # nothing to do: files untouched
    assert {f: os.path.getmtime(os.path.join(out, f)) for f in before} == mtimes
    # interrupted run: one shard's outputs and manifest missing, a stray temporary file left behind
    victim = sorted(before)[0]
    name = os.path.basename(victim)[:-8]
    for sub in ("kept", "rejected"):
        os.remove(os.path.join(out, sub, name + ".parquet"))
    os.remove(os.path.join(out, "_manifests", name + ".json"))
    open(os.path.join(out, "kept", ".tmp-dead-" + name + ".parquet"), "wb").write(b"partial")
    stats = local_run(cfg)
    assert stats["reconciled"]
    assert _files_digest(out) == before


def test_other_config_needs_overwrite(tmp_path):
    inp, _ = _fortune_shards(tmp_path, n_shards=2, limit=500)
    out = str(tmp_path / "out")
    local_run({"input": inp, "output": out, "stages": ["length"]})
    with pytest.raises(ConfigError, match="output.path"):
        local_run({"input": inp, "output": out, "stages": [{"name": "length", "min_chars": 5}]})
    s = local_run({"input": inp, "output": {"path": out, "overwrite": True},
                   "stages": [{"name": "length", "min_chars": 5}]})
    assert s["reconciled"]


def test_bad_rows_become_rejections(tmp_path, write_shards):
    big = "word " * (50_000_000 // 5)  # a 50 MB document (> the default 10 MB limit)
    inp = write_shards({
        "a.parquet": {"text": ["A fine document about rivers.", None, "", "   \n ", big, "ok text here"],
                      "url": ["u1", "u2", "u3", "u4", "u5", "u6"]},
        "b.parquet": pa.table({"text": pa.array([], pa.string()), "url": pa.array([], pa.string())}),
    })
    out = str(tmp_path / "out")
    t0 = time.time()
    stats = local_run({"input": inp, "output": out, "stages": [{"name": "length"}, {"name": "exact_dedup"}]})
    assert time.time() - t0 < 60
    assert stats["input_rows"] == 6 and stats["reconciled"]
    rej = pq.read_table(os.path.join(out, "rejected", "a.parquet")).to_pydict()
    got = dict(zip(rej["id"], rej["reason"]))
    assert got == {"a.parquet:1": "input.null_text", "a.parquet:2": "input.empty_text",
                   "a.parquet:3": "input.empty_text", "a.parquet:4": "input.too_large"}
    kept = pq.read_table(os.path.join(out, "kept", "a.parquet")).to_pydict()
    assert kept["id"] == ["a.parquet:0", "a.parquet:5"] and kept["url"] == ["u1", "u6"]
    assert pq.read_table(os.path.join(out, "kept", "b.parquet")).num_rows == 0


def test_invalid_utf8_is_rejected_per_row(tmp_path, write_shards):
    inp = write_shards({"bin.parquet": pa.table({"text": pa.array(
        [b"valid text one", b"bad \xff\xfe bytes", "caf\u00e9 ok".encode()], pa.binary())})})
    out = str(tmp_path / "out")
    stats = local_run({"input": inp, "output": out, "stages": ["length"]})
    assert stats["kept_rows"] == 2
    rej = pq.read_table(os.path.join(out, "rejected", "bin.parquet")).to_pydict()
    assert rej["reason"] == ["input.invalid_utf8"] and rej["id"] == ["bin.parquet:1"]
    kept = pq.read_table(os.path.join(out, "kept", "bin.parquet"))
    assert kept.schema.field("text").type == pa.string()
    assert kept["text"].to_pylist() == ["valid text one", "caf\u00e9 ok"]


def test_schema_errors_name_the_culprit(tmp_path, write_shards):
    inp = write_shards({"x.parquet": {"body": ["hello"]}})
    with pytest.raises(InputError, match=r"x\.parquet.*text column 'text' not found.*body"):
        plan({"input": inp, "output": str(tmp_path / "o"), "stages": []})
    inp2 = write_shards({"y.parquet": {"text": [1, 2, 3]}}, sub="in2")
    with pytest.raises(InputError, match=r"y\.parquet.*type int64"):
        plan({"input": inp2, "output": str(tmp_path / "o"), "stages": []})
    inp3 = write_shards({"z.parquet": {"text": ["a"]}}, sub="in3")
    with pytest.raises(InputError, match=r"id column 'doc' not found"):
        plan({"input": {"path": inp3, "id_column": "doc"}, "output": str(tmp_path / "o"), "stages": []})


def test_corrupt_and_truncated_shards(tmp_path, write_shards):
    inp = write_shards({"good.parquet": {"text": ["hello world"] * 10}})
    data = open(os.path.join(inp, "good.parquet"), "rb").read()
    open(os.path.join(inp, "trunc.parquet"), "wb").write(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"trunc\.parquet: not a readable Parquet file"):
        plan({"input": inp, "output": str(tmp_path / "o"), "stages": []})
    os.remove(os.path.join(inp, "trunc.parquet"))
    open(os.path.join(inp, "junk.parquet"), "wb").write(b"this is not parquet at all" * 10)
    with pytest.raises(InputError, match=r"junk\.parquet"):
        plan({"input": inp, "output": str(tmp_path / "o"), "stages": []})
    with pytest.raises(InputError, match="matched no Parquet files"):
        plan({"input": str(tmp_path / "nothing" / "*.parquet"), "output": str(tmp_path / "o"), "stages": []})


def test_corrupt_page_inside_a_shard_is_a_clear_error(tmp_path, write_shards):
    t = pa.table({"text": [f"document number {i} " * 20 for i in range(3000)]})
    inp = write_shards({"c.parquet": t}, row_group_size=1000)
    path = os.path.join(inp, "c.parquet")
    md = pq.ParquetFile(path).metadata
    rg = md.row_group(1).column(0)
    data = bytearray(open(path, "rb").read())
    start = rg.data_page_offset
    for i in range(start, start + 400):  # smash the page body, keep the footer intact
        data[i] = 0xAB
    open(path, "wb").write(bytes(data))
    from thresher.pipelines.cli import main
    rc = main(["run", "--input", inp, "--output", str(tmp_path / "o"), "--quiet", "--direct_num_workers=1"])
    assert rc == 2


def test_cli_errors_are_clean(tmp_path, capsys, write_shards):
    from thresher.pipelines.cli import main
    inp = write_shards({"a.parquet": {"text": ["hello"]}})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"input: {{path: {inp}}}\noutput: {tmp_path}/o\nstages:\n  - {{name: lenght}}\n")
    assert main(["run", str(cfg)]) == 2
    assert "unknown stage 'lenght' (did you mean 'length'?)" in capsys.readouterr().err
    cfg.write_text(f"input: {{path: {inp}}}\noutput: {tmp_path}/o\nstages:\n  - {{name: length, min_chars: many}}\n")
    assert main(["run", str(cfg)]) == 2
    assert "stages[0].min_chars: expected int" in capsys.readouterr().err
    cfg.write_text("input: [unclosed\n")
    assert main(["run", str(cfg)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_reconciliation_failure_is_loud(tmp_path, write_shards, monkeypatch):
    from thresher.pipelines import engine as E
    inp = write_shards({"a.parquet": {"text": ["one doc", "two doc", "three doc"]}})
    real = E.ShardProcessor._split_write

    def lossy(self, table, reasons, dups, kept_w, rej_w):
        return real(self, table.slice(1), reasons[1:], dups, kept_w, rej_w)  # silently drops a row
    monkeypatch.setattr(E.ShardProcessor, "_split_write", lossy)
    with pytest.raises(ReconciliationError, match="do not reconcile"):
        local_run({"input": inp, "output": str(tmp_path / "o"), "stages": ["length"]})
    st = json.load(open(tmp_path / "o" / "stats.json"))
    assert st["reconciled"] is False


def test_derived_ids_are_stable(tmp_path, write_shards):
    inp = write_shards({"sub/a.parquet": {"text": ["x y z", "p q r"]}} if False else
                       {"a.parquet": {"text": ["x y z", "p q r"]}})
    os.makedirs(os.path.join(inp, "nested"))
    pq.write_table(pa.table({"text": ["m n o"]}), os.path.join(inp, "nested", "a.parquet"))
    out = str(tmp_path / "o")
    local_run({"input": inp, "output": out, "stages": ["length"]})
    con = duckdb.connect()
    ids = sorted(r[0] for r in con.execute(f"select id from read_parquet('{out}/kept/*.parquet')").fetchall())
    assert ids == ["a.parquet:0", "a.parquet:1", "nested/a.parquet:0"]


def test_apply_stages_ptransform_in_a_user_pipeline(tmp_path):
    """Local stages composed into the user's own Beam pipeline over pa.Table batches."""
    import apache_beam as beam
    import pyarrow.compute as pc
    from apache_beam.options.pipeline_options import PipelineOptions

    from thresher.pipelines.transforms import ApplyStages
    t = pq.read_table(corpus("fortunes.parquet"), columns=["id", "text"]).slice(0, 600)
    batches = [t.slice(0, 250), t.slice(250)]
    out = tmp_path / "res.parquet"

    def collect(tables):
        pq.write_table(pa.concat_tables(tables), out)

    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        _ = (p | beam.Create(batches)
             | ApplyStages([{"name": "length", "min_chars": 80}], text_column="text", id_column="id")
             | beam.combiners.ToList() | beam.Map(collect))
    res = pq.read_table(out)
    assert res.num_rows == 600 and {"length_chars", "reason"} <= set(res.column_names)
    short = pc.less(pc.utf8_length(res["text"]), 80)
    assert res.filter(short)["reason"].to_pylist() == ["length.too_short"] * pc.sum(short).as_py()
    assert res.filter(pc.invert(short))["reason"].null_count == res.num_rows - pc.sum(short).as_py()
