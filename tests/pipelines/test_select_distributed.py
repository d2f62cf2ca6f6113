"""ScoreThenSelect's distributed global step (``global_step: distributed``, pipelines/select_beam.py):
the same files and the same ``_global`` numbers as the gather path for every selection mode, on
uneven shards with an empty shard, with massive exact ties and with 2 workers; and no task of it
ever holds every key at once."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import corpus, local_run, output_files
from thresher.pipelines import select_beam as SB
from thresher.scorers.selection.mates import Mates
from thresher.scorers.selection.select import (
    ScoreThenSelect,
    order_key,
    order_value,
    top_fraction,
    top_k,
)
from thresher.scorers.text.hashing import stable_id_hash

VOLATILE = {"seconds", "fingerprint", "global_step", "max_rows_per_task", "boundary_rows"}


# -- the shared rank order ------------------------------------------------------------------

def test_order_key_is_the_float_order_of_lexsort():
    v = np.array([3.5, -0.0, 0.0, np.nan, -np.inf, np.inf, -2.0, 1e-300, -1e-300, np.nan, 2.0, -7.25])
    o = order_key(v)
    ih = np.arange(v.size, dtype=np.uint64)[::-1].copy()
    assert (np.lexsort((ih, o)) == np.lexsort((ih, v))).all()
    assert o[1] == o[2]                                   # -0.0 ties with 0.0, as in a float sort
    assert o[3] == o[9] == np.uint64(0xFFFFFFFFFFFFFFFF)  # NaN last
    back = order_value(o)
    fin = ~np.isnan(v)
    assert (back[fin] == v[fin]).all() and np.isnan(back[~fin]).all()


class _Len(ScoreThenSelect):
    name = "test_len"
    params = dict(ScoreThenSelect.SELECTION_PARAMS)
    score_column = "s"
    reasons = {"not_selected": ""}


@pytest.mark.parametrize("higher", [True, False])
def test_select_equals_the_previous_sort_with_ties_nan_and_gumbel(higher):
    """The refactored select() (rank order through order_key) keeps exactly what the former
    float lexsort of top_k / top_fraction kept."""
    rng = np.random.default_rng(3)
    n = 3000
    scores = np.round(rng.normal(size=n), 1)            # many ties
    scores[rng.integers(0, n, 40)] = np.nan
    scores[:30] = -0.0
    chars = rng.integers(1, 500, n)
    ih = stable_id_hash(pa.array([f"x{i}" for i in range(n)]))
    cls = type("S", (_Len,), {"higher_is_better": higher})
    sign = 1.0 if higher else -1.0
    for params in ({"top_k": 0}, {"top_k": 777}, {"top_k": 5000}, {"top_fraction_docs": 0.31},
                   {"top_fraction_chars": 0.17}, {"top_fraction_chars": 1.0},
                   {"top_fraction_chars": 0.4, "gumbel_temperature": 0.5, "seed": 9}):
        st = cls(**params)
        got, thr = st.select(scores, chars, ih)
        rank = scores.astype(np.float64)
        if params.get("gumbel_temperature"):
            from thresher.scorers.selection.select import gumbel_noise
            rank = rank / params["gumbel_temperature"] + gumbel_noise(ih, 9)
        key = sign * rank
        if "top_k" in params:
            exp, t = top_k(key, ih, params["top_k"])
        elif "top_fraction_docs" in params:
            exp, t = top_fraction(key, np.ones(n), ih, params["top_fraction_docs"])
        else:
            exp, t = top_fraction(key, chars.astype(np.float64), ih, params["top_fraction_chars"])
        assert (got == exp).all(), params
        assert thr == (sign * t if np.isfinite(t) else None), params


def test_params_and_step_choice(tmp_path):
    assert _Len(top_k=3).distributed_step() == "thresher.pipelines.select_beam:distributed_select"
    assert _Len(top_k=3, global_step="gather").distributed_step() is None
    assert Mates(random_baseline=True, global_step="distributed").distributed_step()
    from thresher.scorers.base import ParamError
    with pytest.raises(ParamError, match="global_step"):
        _Len(top_k=3, global_step="sometimes")


# -- end to end: distributed == gather ----------------------------------------------------

@pytest.fixture(scope="module")
def pool():
    """Real text: English Wikipedia summaries and fortunes, shuffled, with some exact duplicate
    texts under new ids (equal PreSelect scores) and unique ids."""
    wiki = pq.read_table(corpus("wiki_summaries.parquet"), columns=["id", "text", "lang"])
    wiki = wiki.filter(pc.equal(wiki["lang"], "en")).select(["id", "text"]).slice(0, 220)
    fort = pq.read_table(corpus("fortunes.parquet"), columns=["id", "text"]).slice(0, 220)
    t = pa.concat_tables([pa.table({"id": x["id"].cast(pa.string()), "text": x["text"].cast(pa.string())})
                          for x in (wiki, fort)])
    dup = t.slice(0, 60)
    dup = pa.table({"id": pa.array([f"dup-{i}" for i in range(dup.num_rows)]), "text": dup["text"]})
    t = pa.concat_tables([t, dup])
    return t.take(pa.array(np.random.default_rng(0).permutation(t.num_rows)))


def _shards(tmp_path, table, sizes=(3, 0, 251, 97, 1, 148)) -> str:
    d = tmp_path / "in"
    if d.exists():
        return str(d)
    d.mkdir()
    pos = 0
    sizes = list(sizes)
    sizes[-1] = table.num_rows - sum(sizes[:-1])
    for i, s in enumerate(sizes):          # uneven, one empty, one of a single row
        pq.write_table(table.slice(pos, s), d / f"s{i}.parquet")
        pos += s
    return str(d)


_files = output_files


def _global(out: str, sid: str) -> dict:
    with open(os.path.join(out, "_global", f"{sid}.json")) as f:
        return json.load(f)


def _both(tmp_path, inp, stages, sid, workers=1, tag=""):
    """Run gather and distributed; assert identical files and _global numbers; return both stats."""
    outs = {}
    for mode in ("gather", "distributed"):
        st = [dict(s, global_step=mode) if s.get("_select") else s for s in stages]
        st = [{k: v for k, v in s.items() if k != "_select"} for s in st]
        out = str(tmp_path / f"out-{tag}-{mode}")
        stats = local_run({"input": inp, "output": out, "stages": st}, workers=workers)
        assert stats["reconciled"]
        outs[mode] = out
    a, b = _files(outs["gather"]), _files(outs["distributed"])
    assert a.keys() == b.keys() and a == b
    ga, gb = _global(outs["gather"], sid), _global(outs["distributed"], sid)
    assert ga["global_step"] == "gather" and gb["global_step"] == "distributed"
    assert {k: v for k, v in ga.items() if k not in VOLATILE} == {k: v for k, v in gb.items() if k not in VOLATILE}
    return ga, gb


@pytest.fixture
def small_cap(monkeypatch):
    """A tiny gather cap: the boundary is found by the refinement levels."""
    monkeypatch.setattr(SB, "GATHER_MAX_ROWS", 5)


@pytest.mark.parametrize("params", [
    {"temperature": 0.5, "ratio": 0.2, "seed": 3},      # Gumbel-top-k
    {"temperature": 0.0, "ratio": 0.37},                # every score ties: order by id hash alone
    {"temperature": 0.0, "k": 1},
    {"temperature": 0.5, "k": 10_000},                  # k above the pool: everything kept
])
def test_mates_random_baseline_distributed_equals_gather(tmp_path, pool, small_cap, params):
    inp = _shards(tmp_path, pool)
    stage = {"name": "mates", "random_baseline": True, **params, "_select": True}
    ga, gb = _both(tmp_path, inp, [stage], "mates")
    assert ga["docs"] == pool.num_rows and gb["max_rows_per_task"] < pool.num_rows


def test_mates_two_workers_after_a_dedup_and_before_another_global_stage(tmp_path, pool, small_cap):
    """Rows rejected by an earlier global stage are excluded; a later global stage receives the
    decisions as one side input; 2 worker processes."""
    inp = _shards(tmp_path, pool)
    stages = [{"name": "exact_dedup"},
              {"name": "mates", "random_baseline": True, "temperature": 0.0, "ratio": 0.5, "_select": True},
              {"name": "mates", "id": "mates2", "random_baseline": True, "temperature": 0.5, "ratio": 0.5,
               "seed": 1, "_select": True}]
    ga, _ = _both(tmp_path, inp, stages, "mates", workers=2)
    assert ga["docs"] <= pool.num_rows - 60                # the 60 duplicate texts went to exact_dedup
    g2 = _global(str(tmp_path / "out--distributed"), "mates2")
    assert g2["docs"] == ga["selected_docs"] and g2["global_step"] == "distributed"


def test_full_refinement_to_single_keys(tmp_path, pool, monkeypatch):
    """Cap 0: every one of the 8 levels runs, down to single 128-bit keys."""
    monkeypatch.setattr(SB, "GATHER_MAX_ROWS", 0)
    inp = _shards(tmp_path, pool)
    for i, params in enumerate(({"temperature": 0.0, "ratio": 0.37}, {"temperature": 0.5, "k": 77, "seed": 2})):
        stage = {"name": "mates", "random_baseline": True, **params, "_select": True}
        _, gb = _both(tmp_path, inp, [stage], "mates", tag=str(i))
        assert gb["boundary_rows"] == 1


def test_digits_and_buckets_cover_the_128_bit_key():
    rng = np.random.default_rng(5)
    order = rng.integers(0, 1 << 63, 1000, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    ih = rng.integers(0, 1 << 63, 1000, dtype=np.uint64) * np.uint64(2)
    order[:10] = order[0]
    ih[:5] = ih[0] ^ np.uint64(1)       # shares all but the last bit
    prefix = 0
    for level in range(SB.LEVELS):
        prefix = (prefix << 16) | int(SB._digit(order[:1], ih[:1], level)[0])
        m = SB._in_bucket(order, ih, level, prefix)
        assert m[0]
        key = [(int(a) << 64) | int(b) for a, b in zip(order, ih)]
        shift = 128 - 16 * (level + 1)
        assert (m == np.array([(x >> shift) == (key[0] >> shift) for x in key])).all()
    assert prefix == (int(order[0]) << 64) | int(ih[0])


@pytest.mark.parametrize("params,workers", [
    ({"top_fraction_chars": 0.23}, 2),
    ({"top_fraction_docs": 0.41}, 2),
    ({"top_k": 101}, 2),
    ({"top_fraction_chars": 0.3, "gumbel_temperature": 0.05, "seed": 4}, 1),
    ({"threshold": 0.5}, 1),
])
def test_preselect_distributed_equals_gather(tmp_path, pool, style_classifier, small_cap, params, workers):
    inp = _shards(tmp_path, pool)
    stage = {"name": "preselect", "model": style_classifier, **params, "_select": True}
    ga, gb = _both(tmp_path, inp, [stage], "preselect", workers=workers)
    assert 0 < ga["selected_docs"] < ga["docs"] == pool.num_rows
    if "threshold" not in params:
        assert gb["max_rows_per_task"] < pool.num_rows


def test_preselect_constant_score(tmp_path, pool, style_classifier, small_cap, monkeypatch):
    """One score for every document (a classifier saturated at 1.0): the cut falls inside one
    huge bucket and is found on the id hashes."""
    from thresher.scorers.selection.preselect import PreSelect
    monkeypatch.setattr(PreSelect, "score", lambda self, text, batch=None: np.ones(len(text), np.float32))
    inp = _shards(tmp_path, pool)
    stage = {"name": "preselect", "model": style_classifier, "top_fraction_chars": 0.5, "_select": True}
    # one in-process worker: the patched score must reach it
    ga, gb = _both(tmp_path, inp, [stage], "preselect")
    assert ga["threshold"] == 1.0 and gb["max_rows_per_task"] < pool.num_rows


def test_distributed_path_never_holds_every_key(tmp_path, pool, small_cap, monkeypatch):
    """Instrumented: no key table one task reads or gathers reaches the corpus size, and the
    one-worker compute is never called."""
    from thresher.pipelines import engine as E
    seen = []
    real = E.read_keys

    def spy(paths):
        t = real(paths)
        seen.append(t.num_rows)
        return t

    def no_gather(*a, **k):
        raise AssertionError("the gather path ran")
    monkeypatch.setattr(E, "read_keys", spy)
    monkeypatch.setattr(E, "compute_global", no_gather)
    inp = _shards(tmp_path, pool)
    out = str(tmp_path / "out")
    local_run({"input": inp, "output": out,
               "stages": [{"name": "mates", "random_baseline": True, "temperature": 0.0, "ratio": 0.3,
                           "global_step": "distributed"}]})
    assert seen and max(seen) < pool.num_rows and sum(seen) >= pool.num_rows
    g = _global(out, "mates")
    assert 0 < g["boundary_rows"] <= SB.GATHER_MAX_ROWS
    assert g["selected_docs"] == int(0.3 * pool.num_rows) and g["max_rows_per_task"] == max(seen)


def test_auto_picks_gather_for_a_small_run_and_distributed_above_the_size(tmp_path, pool, monkeypatch):
    inp = _shards(tmp_path, pool)
    stage = {"name": "mates", "random_baseline": True, "ratio": 0.2}
    local_run({"input": inp, "output": str(tmp_path / "a"), "stages": [stage]})
    assert _global(str(tmp_path / "a"), "mates")["global_step"] == "gather"
    monkeypatch.setattr(SB, "AUTO_MIN_ROWS", 100)
    local_run({"input": inp, "output": str(tmp_path / "b"), "stages": [stage]})
    assert _global(str(tmp_path / "b"), "mates")["global_step"] == "distributed"
    assert _files(str(tmp_path / "a")) == _files(str(tmp_path / "b"))
