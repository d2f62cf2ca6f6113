"""The distributed dedup global steps (pipelines/dedup_beam.py) against the one-worker ones, on
real text with planted exact and near duplicates across shards: identical files and counts,
large buckets verified as thoroughly, tables spilled instead of crossing the runner, ``auto``
resolved by corpus size."""
import glob
import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import local_run, neardup


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """2,400 near-dup documents + 300 exact copies of some of them, in uneven shards
    (one empty, one with a single row); copies land in other shards than their originals."""
    t = neardup(2400).select(["id", "text"])
    rng = np.random.default_rng(3)
    src = rng.choice(t.num_rows, 300, replace=False)
    copies = pa.table({"id": [f"copy-{i}" for i in range(300)], "text": t["text"].take(pa.array(src))})
    t = pa.concat_tables([t, copies])
    t = t.take(pa.array(rng.permutation(t.num_rows)))
    d = tmp_path_factory.mktemp("dd")
    cuts = [0, 1, 1, 500, 1900, t.num_rows]
    for i in range(len(cuts) - 1):
        pq.write_table(t.slice(cuts[i], cuts[i + 1] - cuts[i]), d / f"p{i}.parquet")
    return str(d)


def _digest(out):
    return {os.path.relpath(f, out): hashlib.sha256(open(f, "rb").read()).hexdigest()
            for f in sorted(glob.glob(f"{out}/kept/*.parquet") + glob.glob(f"{out}/rejected/*.parquet"))}


def _global(out, sid):
    with open(os.path.join(out, "_global", f"{sid}.json")) as f:
        return json.load(f)


def _pair(tmp_path, inp, one, dist, workers=1, name="x"):
    a = local_run({"input": inp, "output": str(tmp_path / f"{name}-one"), "stages": one}, workers=workers)
    b = local_run({"input": inp, "output": str(tmp_path / f"{name}-dist"), "stages": dist}, workers=workers)
    assert a["reconciled"] and b["reconciled"]
    assert _digest(str(tmp_path / f"{name}-one")) == _digest(str(tmp_path / f"{name}-dist"))
    return a, b, str(tmp_path / f"{name}-one"), str(tmp_path / f"{name}-dist")


@pytest.mark.parametrize("survivor", ["min_id_hash", "longest"])     # longest: ties of equal length by id hash
def test_exact_distributed_equals_gather(tmp_path, shards, survivor):
    a, b, oa, ob = _pair(tmp_path, shards, [{"name": "exact_dedup", "global_step": "gather", "survivor": survivor}],
                         [{"name": "exact_dedup", "global_step": "distributed", "partitions": 7,
                           "survivor": survivor}], name=survivor)
    ga, gb = _global(oa, "exact_dedup"), _global(ob, "exact_dedup")
    assert ga["duplicates"] >= 300 and a["stages"][1]["rejected"] == ga["duplicates"]
    for key in ("keys", "decisions", "rejected", "documents", "duplicates", "groups"):
        assert ga[key] == gb[key], key
    assert gb["global_step"] == "distributed" and gb["partitions"] == 7
    # each task held one partition of the keys, not all of them
    assert gb["max_rows_per_task"] < ga["keys"] / 2


@pytest.mark.parametrize("all_pairs_max,star_rounds", [(3, 8), (2, 1)])
def test_minhash_large_buckets_verified_like_one_worker(tmp_path, shards, all_pairs_max, star_rounds):
    """Buckets above all_pairs_max get the same greedy verified star cover on both paths, so the
    distributed path loses no recall against the one-worker path (it used to get one round)."""
    base = {"name": "minhash_dedup", "all_pairs_max": all_pairs_max, "star_rounds": star_rounds}
    a, b, oa, ob = _pair(tmp_path, shards, [{**base, "components": "unionfind"}],
                         [{**base, "components": "distributed", "partitions": 5}],
                         name=f"b{all_pairs_max}")
    assert a["stages"][1]["rejected"] > 300
    ga, gb = _global(oa, "minhash_dedup"), _global(ob, "minhash_dedup")
    assert ga["rejected"] == gb["rejected"] and ga["in_clusters"] == gb["decisions"]


def test_large_bucket_cover_runs_only_for_large_buckets(tmp_path, shards):
    """The cover step really runs when buckets exceed all_pairs_max (so the equality above is
    not vacuous) and has nothing to do when every bucket is small."""
    def cover_files(apm):
        out = tmp_path / f"apm{apm}"
        local_run({"input": shards, "output": {"path": str(out), "keep_work": True},
                   "stages": [{"name": "minhash_dedup", "all_pairs_max": apm, "components": "distributed"}]})
        return glob.glob(str(out / "_work" / "_shuffle" / "minhash_dedup_cover_big" / "*.parquet"))
    assert len(cover_files(2)) > 0
    assert cover_files(100000) == []


def test_exact_then_minhash_distributed_two_workers(tmp_path, shards):
    """Two distributed global stages in a row (the second drops the first's rejections from its
    keys through the spilled refs), with a local stage before them, on 2 worker processes."""
    one = [{"name": "length", "min_chars": 20}, {"name": "exact_dedup", "global_step": "gather"},
           {"name": "minhash_dedup", "components": "unionfind"}]
    dist = [{"name": "length", "min_chars": 20}, {"name": "exact_dedup", "global_step": "distributed"},
            {"name": "minhash_dedup", "components": "distributed"}]
    a, b, oa, ob = _pair(tmp_path, shards, one, dist, workers=2, name="two")
    assert [s["rejected"] for s in a["stages"]] == [s["rejected"] for s in b["stages"]]
    assert a["stages"][2]["rejected"] >= 300 and a["stages"][3]["rejected"] > 100
    # the minhash step saw only the rows exact_dedup kept
    assert _global(ob, "exact_dedup")["partitions"] == 16      # chosen from the corpus size
    assert b["stages"][3]["docs_in"] == b["stages"][2]["kept"]


def test_tables_are_spilled_and_removed(tmp_path, shards):
    """Routed tables go to _work/_shuffle (what the runner shuffles are refs), are counted in the
    peak intermediate bytes, and are gone after the run; keep_work keeps them."""
    cfg = {"input": shards, "stages": [{"name": "exact_dedup", "global_step": "distributed"},
                                       {"name": "minhash_dedup", "components": "distributed"}]}
    s = local_run({**cfg, "output": {"path": str(tmp_path / "kw"), "keep_work": True}})
    spilled = glob.glob(str(tmp_path / "kw" / "_work" / "_shuffle" / "**" / "*.parquet"), recursive=True)
    steps = {os.path.basename(os.path.dirname(p)) for p in spilled}
    assert {"exact_dedup_route", "minhash_dedup_nodes", "minhash_dedup_candidates", "minhash_dedup_verify",
            "decisions_exact_dedup", "decisions_minhash_dedup"} <= steps
    assert s["work_bytes_peak"] >= sum(os.path.getsize(p) for p in spilled)
    s2 = local_run({**cfg, "output": str(tmp_path / "clean")})
    assert s2["work_bytes_kept"] == 0 and not os.path.exists(tmp_path / "clean" / "_work")
    assert _digest(str(tmp_path / "kw")) == _digest(str(tmp_path / "clean"))


def test_auto_resolves_by_corpus_size(tmp_path, shards, monkeypatch):
    from thresher.pipelines import dedup_beam
    stages = [{"name": "exact_dedup"}, {"name": "minhash_dedup"}]       # both default to auto
    local_run({"input": shards, "output": str(tmp_path / "small"), "stages": stages})
    assert "global_step" not in _global(str(tmp_path / "small"), "exact_dedup")
    assert "mode" not in _global(str(tmp_path / "small"), "minhash_dedup")
    monkeypatch.setattr(dedup_beam, "AUTO_MIN_ROWS", 1000)
    local_run({"input": shards, "output": str(tmp_path / "big"), "stages": stages})
    assert _global(str(tmp_path / "big"), "exact_dedup")["global_step"] == "distributed"
    assert _global(str(tmp_path / "big"), "minhash_dedup")["mode"] == "distributed"
    assert _digest(str(tmp_path / "small")) == _digest(str(tmp_path / "big"))
