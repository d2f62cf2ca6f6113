"""minhash_dedup through the Beam pipeline: single-worker vs distributed components,
determinism under shard layout, conservation, on real text with planted near-duplicates."""
import glob
import hashlib
import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import local_run, neardup


@pytest.fixture(scope="module")
def nd_shards(tmp_path_factory):
    t = neardup(3000).select(["id", "text"])
    d = tmp_path_factory.mktemp("nd")
    cuts = [0, 400, 1700, 2100, t.num_rows]
    for i in range(4):
        pq.write_table(t.slice(cuts[i], cuts[i + 1] - cuts[i]), d / f"p{i}.parquet")
    return str(d), t


def _digest(out):
    return {os.path.relpath(f, out): hashlib.sha256(open(f, "rb").read()).hexdigest()
            for f in sorted(glob.glob(f"{out}/kept/*.parquet") + glob.glob(f"{out}/rejected/*.parquet"))}


@pytest.mark.parametrize("verify", ["jaccard", "signature"])
def test_distributed_components_equal_single_worker(tmp_path, nd_shards, verify):
    inp, t = nd_shards
    base = {"name": "minhash_dedup", "verify": verify, "all_pairs_max": 100000}
    a = local_run({"input": inp, "output": str(tmp_path / "uf"), "stages": [base]})
    b = local_run({"input": inp, "output": str(tmp_path / "dist"),
                   "stages": [{**base, "components": "distributed", "partitions": 5}]})
    c = local_run({"input": inp, "output": str(tmp_path / "star"), "stages": [{**base, "components": "star"}]})
    assert a["reconciled"] and b["reconciled"] and c["reconciled"]
    assert a["stages"][1]["rejected"] > 100
    assert _digest(str(tmp_path / "uf")) == _digest(str(tmp_path / "dist")) == _digest(str(tmp_path / "star"))


def test_near_duplicates_annotated_and_layout_independent(tmp_path, nd_shards):
    inp, t = nd_shards
    out = str(tmp_path / "o")
    stats = local_run({"input": inp, "output": out, "stages": [{"name": "exact_dedup"}, {"name": "minhash_dedup"}]})
    assert stats["reconciled"] and stats["input_rows"] == t.num_rows
    con = duckdb.connect()
    rows = con.execute(f"""select r.id, r.duplicate_of, r.cluster_id, r.cluster_size, k.cluster_id, k.cluster_size
        from read_parquet('{out}/rejected/*.parquet') r join read_parquet('{out}/kept/*.parquet') k
        on r.duplicate_of = k.id where r.reason = 'minhash_dedup.near_duplicate'""").fetchall()
    n_nd = con.execute(f"select count(*) from read_parquet('{out}/rejected/*.parquet') "
                       f"where reason = 'minhash_dedup.near_duplicate'").fetchone()[0]
    assert n_nd > 100 and len(rows) == n_nd
    for _rid, dup, cid, csz, kcid, kcsz in rows:
        assert cid == dup == kcid and csz == kcsz >= 2
    # kept survivor is the longest member of its cluster
    bad = con.execute(f"""select count(*) from read_parquet('{out}/rejected/*.parquet') r
        join read_parquet('{out}/kept/*.parquet') k on r.duplicate_of = k.id
        where r.reason = 'minhash_dedup.near_duplicate' and length(r.text) > length(k.text)""").fetchone()[0]
    assert bad == 0
    # another layout: 2 shards, reversed order -> same kept ids
    d2 = tmp_path / "re"
    d2.mkdir()
    rev = t.take(pa.array(np.arange(t.num_rows)[::-1].copy()))
    pq.write_table(rev.slice(0, 1000), d2 / "a.parquet")
    pq.write_table(rev.slice(1000), d2 / "b.parquet")
    local_run({"input": str(d2), "output": str(tmp_path / "o2"),
               "stages": [{"name": "exact_dedup"}, {"name": "minhash_dedup"}]})
    k1 = {r[0] for r in con.execute(f"select id from read_parquet('{out}/kept/*.parquet')").fetchall()}
    k2 = {r[0] for r in con.execute(f"select id from read_parquet('{tmp_path}/o2/kept/*.parquet')").fetchall()}
    assert k1 == k2
