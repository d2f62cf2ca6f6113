"""`thresher inspect`: only the manifests' files are read (strays reported, not counted), counts
grouped by a column match a direct count, and the examples are a seeded random sample."""
import json
import os
import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import corpus, local_run

from thresher.pipelines.inspect import connect, render, stray_files, summary, threshold_lines


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Real fortunes in five languages (random rows), three shards, language + length, and two
    stray files: a copy of a kept shard in kept/, a rejected file one level down in rejected/."""
    tmp = tmp_path_factory.mktemp("inspect")
    t = pq.read_table(corpus("fortunes.parquet"), columns=["id", "lang", "collection", "text"])
    t = t.take(np.sort(np.random.default_rng(7).choice(t.num_rows, 4500, replace=False)))
    inp = tmp / "in"
    inp.mkdir()
    for i, (a, b) in enumerate([(0, 1000), (1000, 2800), (2800, 4500)]):
        pq.write_table(t.slice(a, b - a), inp / f"part-{i}.parquet")
    out = tmp / "out"
    stats = local_run({"input": {"path": str(inp), "id_column": "id"}, "output": str(out),
                       "stages": [{"name": "language", "threshold": 0.8}, {"name": "length", "min_chars": 60}]})
    shutil.copy(out / "kept" / "part-1.parquet", out / "kept" / "stray.parquet")
    (out / "rejected" / "old").mkdir()
    shutil.copy(out / "rejected" / "part-0.parquet", out / "rejected" / "old" / "part-0.parquet")
    return str(out), stats, t


def _outputs(out):
    """The run's own files, read with pyarrow (kept, rejected)."""
    read = lambda d: pa.concat_tables([pq.read_table(os.path.join(out, d, f"part-{i}.parquet")) for i in range(3)],
                                      promote_options="default")
    return read("kept"), read("rejected")


def test_stray_files_are_reported_and_not_counted(run):
    out, stats, t = run
    assert stats["input_rows"] == t.num_rows == 4500
    s = summary(out)
    assert s["stray_files"] == ["kept/stray.parquet", "rejected/old/part-0.parquet"]
    assert stray_files(out) == s["stray_files"]
    assert s["files"] == {"kept": 3, "rejected": 3}
    kept, rej = _outputs(out)
    assert (s["kept"], s["rejected"], s["total"]) == (kept.num_rows, rej.num_rows, 4500)
    assert s["input_rows"] == 4500 and s["reconciled"] is True
    # a glob would have counted the strays
    n_glob = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{out}/kept/*.parquet')").fetchone()[0]
    assert n_glob > kept.num_rows
    # the views the notebook uses see the same rows, each id once
    con = connect(out)
    assert con.execute("SELECT count(*), count(DISTINCT id) FROM docs").fetchone() == (4500, 4500)
    assert con.execute("SELECT count(*) FROM docs WHERE filename LIKE '%stray%' OR filename LIKE '%/old/%'"
                       ).fetchone()[0] == 0
    text = render(s)
    assert "stray files" in text and "kept/stray.parquet" in text and "documents: 4,500" in text
    by_reason = {r["reason"]: r["docs"] for r in s["by_reason"]}
    assert by_reason == dict(zip(*np.unique(np.asarray(rej["reason"].to_pylist()), return_counts=True)))
    assert json.loads(json.dumps(s, default=str))["stray_files"] == s["stray_files"]   # --json


def test_a_listed_file_that_is_missing_is_a_clear_error(run, tmp_path):
    out, _, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    os.remove(copy / "rejected" / "part-2.parquet")
    with pytest.raises(FileNotFoundError, match="part-2.json lists rejected/part-2.parquet"):
        summary(str(copy))


@pytest.mark.parametrize("column", ["language", "lang", "collection"])
def test_by_counts_match_a_direct_count(run, column):
    out, _, _ = run
    s = summary(out, by=column)
    by = s["by"]
    kept, rej = _outputs(out)
    docs = pa.concat_tables([kept.append_column("status", pa.array(["kept"] * kept.num_rows)),
                             rej.append_column("status", pa.array(["rejected"] * rej.num_rows))],
                            promote_options="default")
    # the direct count: DuckDB over the pyarrow table of the run's own files
    con = duckdb.connect()
    con.register("d", docs)
    direct = con.execute(f"""SELECT {column} AS v, count(*) AS n, count(*) FILTER (WHERE status = 'kept'),
                             count(*) FILTER (WHERE status = 'rejected') FROM d GROUP BY 1 ORDER BY n DESC, v""").fetchall()
    assert by["column"] == column and by["values"] == len(direct) and by["top"] == 20
    top, rest = direct[:20], direct[20:]
    groups = by["groups"]
    assert [(g["value"], g["docs"], g["kept"], g["rejected"]) for g in groups[:len(top)]] == [tuple(r) for r in top]
    if rest:   # collection has more than 20 values: the rest is one group
        other = groups[-1]
        assert len(groups) == 21 and other["value"] == "(other)" and other["other"] and other["values"] == len(rest)
        assert (other["docs"], other["kept"], other["rejected"]) == tuple(map(sum, zip(*[r[1:] for r in rest])))
    else:
        assert len(groups) == len(top)
    assert sum(g["docs"] for g in groups) == 4500
    # per-reason counts and score quantiles of one group, computed directly
    g = groups[0]
    sel = docs.filter(pc.equal(docs[column], g["value"]))
    rr = sel.filter(pc.equal(sel["status"], "rejected"))["reason"].to_pylist()
    assert g["reasons"] == {r: rr.count(r) for r in set(rr)}
    assert set(g["scores"]) == set(s["scores"]) >= {"language_score", "length_chars"}
    lc = pc.drop_null(sel["length_chars"]).to_numpy()    # null where language rejected the row first
    assert g["scores"]["length_chars"]["n"] == len(lc) > 100
    assert g["scores"]["length_chars"]["p50"] == pytest.approx(float(np.median(lc)))
    assert g["scores"]["length_chars"]["p90"] == pytest.approx(float(np.quantile(lc, 0.9)))
    assert g["scores"]["length_chars"]["max"] == lc.max()
    text = render(s)
    assert f"by {column}" in text and str(g["value"]) in text


def test_by_an_unknown_column_names_the_columns(run):
    out, _, _ = run
    with pytest.raises(ValueError, match=r"by='nope'.*columns: .*language_score.*length_chars"):
        summary(out, by="nope")


def test_examples_are_a_seeded_random_sample(run):
    out, _, _ = run
    _, rej = _outputs(out)
    ids_of = {}
    for i, r in zip(rej["id"].to_pylist(), rej["reason"].to_pylist()):
        ids_of.setdefault(r, []).append(i)
    reason = max(ids_of, key=lambda r: len(ids_of[r]))
    assert len(ids_of[reason]) > 100
    sample = lambda seed: [e["id"] for e in summary(out, examples=5, seed=seed)["examples"][reason]]
    a = sample(0)
    assert len(a) == 5 and set(a) <= set(ids_of[reason])
    assert sample(0) == a and summary(out, examples=5)["examples"][reason] == \
        summary(out, examples=5, seed=0)["examples"][reason]               # same seed, same examples
    others = [sample(seed) for seed in range(1, 9)]
    assert sum(o != a for o in others) >= 7                                 # another seed, other examples
    # random, not the first ids (in id order or in file order)
    assert sorted(a) != sorted(ids_of[reason])[:5] and a != ids_of[reason][:5]
    seen = {i for o in [a] + others for i in o}
    assert len(seen) > 25                                                   # 9 seeds x 5 spread widely
    rank = {i: k for k, i in enumerate(sorted(ids_of[reason]))}
    assert max(rank[i] for i in seen) > len(rank) // 2
    s = summary(out, examples=2, seed=3, max_chars=40)
    assert s["seed"] == 3 and all(len(v) <= 2 and all(len(e["text"] or "") <= 40 for e in v)
                                  for v in s["examples"].values())
    assert "random sample, seed 3" in render(s)


def test_threshold_lines_come_from_the_config(run):
    out, stats, _ = run
    lines = threshold_lines(stats["config"])
    assert lines["language_score"] == [("language.threshold=0.8", 0.8)]
    assert lines["length_chars"] == [("length.min_chars=60", 60.0)]
    g = threshold_lines({"input": "x", "output": "y", "stages": [{"name": "gopher_quality", "min_words": 30}]})
    assert ("gopher_quality.min_words=30", 30.0) in g["gopher_quality_word_count"]
    assert threshold_lines({"stages": "not a config"}) == {}
