"""The local runner's choice of worker processes: by the estimated work of the stages (text bytes
from the Parquet footers × each stage's cost per byte), not by row count."""
import os

import pyarrow.parquet as pq
import pytest
from conftest import corpus, local_run

from thresher.pipelines import api


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    t = pq.read_table(corpus("wiki_summaries.parquet"), columns=["id", "text"]).slice(0, 3000)
    d = tmp_path_factory.mktemp("lw")
    for i in range(3):
        pq.write_table(t.slice(i * 1000, 1000), d / f"s{i}.parquet")
    return str(d), t


def _plan(inp, stages):
    return api.plan({"input": inp, "output": "/tmp/unused-lw", "stages": stages})


def test_text_bytes_come_from_the_footers(shards):
    inp, t = shards
    p = _plan(inp, [{"name": "length"}])
    nb = api.text_bytes(p)
    # uncompressed column bytes: the UTF-8 payload plus Parquet's 4-byte length prefixes
    payload = sum(len(s.encode()) for s in t["text"].to_pylist())
    assert payload <= nb <= payload + 8 * t.num_rows + 4096


def test_cheap_work_stays_in_one_process_costly_work_spreads(shards, monkeypatch):
    inp, _ = shards
    cheap = _plan(inp, [{"name": "length"}, {"name": "minhash_dedup"}])
    w = api.local_work(cheap)
    assert 0 < w["seconds"] < api.MULTIPROCESS_MIN_WORK_S
    assert api.local_workers(cheap) == 1
    # the same bytes through a model stage: far above the threshold -> one process per core,
    # at most one per shard
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    costly = _plan(inp, [{"name": "length"}, {"name": "minhash_dedup"}, {"name": "gopher_quality"}])
    monkeypatch.setattr(api, "MULTIPROCESS_MIN_WORK_S", w["seconds"] * 1.5)
    assert api.local_work(costly)["seconds"] > api.MULTIPROCESS_MIN_WORK_S
    assert api.local_workers(costly) == 3            # 3 shards, 8 cores
    assert api.local_workers(cheap) == 1


def test_the_choice_is_printed_and_the_config_overrides_it(shards, tmp_path):
    inp, _ = shards
    lines = []
    s = api.run({"input": inp, "output": str(tmp_path / "a"), "stages": [{"name": "length"}]},
                progress=False, log=lines.append)
    assert s["reconciled"]
    assert any(x.startswith("local runner: 1 worker process (estimated local work") for x in lines)
    lines.clear()
    local_run({"input": inp, "output": str(tmp_path / "b"), "stages": [{"name": "length"}]}, log=lines.append)
    assert not any(x.startswith("local runner") for x in lines)


def test_every_registered_stage_declares_a_cost():
    from thresher.scorers.registry import all_classes
    for cls in all_classes():
        c = getattr(cls, "cpu_ns_per_byte", None)
        assert isinstance(c, (int, float)) and c > 0, cls.name
    # model stages are costed as model stages, rule stages below them
    from thresher.scorers.registry import get
    assert get("lm_loss").cpu_ns_per_byte > 100 * get("gopher_quality").cpu_ns_per_byte
