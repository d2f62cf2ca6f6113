"""ScoreThenSelect: every selection mode exact, global and independent of row order;
Gumbel-top-k sampling seeded per id (the base PreSelect uses now and MATES next)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import corpus

from thresher.pipelines import api
from thresher.schemas.config import ConfigError
from thresher.scorers.base import Column
from thresher.scorers.selection.select import ScoreThenSelect, gumbel_noise
from thresher.scorers.text.hashing import stable_id_hash


def real_texts(n: int, name: str = "fortunes.parquet") -> pa.Table:
    t = pq.read_table(corpus(name), columns=["id", "text"]).slice(0, n)
    return pa.table({"id": t["id"].cast(pa.string()), "text": t["text"]})


class _LenSelect(ScoreThenSelect):
    name = "test_len_select"
    doc = "Test: selects by text length."
    params = dict(ScoreThenSelect.SELECTION_PARAMS)
    columns = (Column("test_len_select_score", pa.float32(), "length"),)
    score_column = "test_len_select_score"
    reasons = {"not_selected": "outside the selection"}

    def score(self, text, batch):
        return pc.utf8_length(text).to_numpy(zero_copy_only=False).astype(np.float32)


class _ShortSelect(_LenSelect):
    name = "test_short_select"
    higher_is_better = False


def _keys(stage, texts: pa.Array, ids: pa.Array, shard: int = 0) -> pa.Table:
    k = stage.keys(texts, pa.table({"text": texts}), ids)
    k = k.append_column("__shard", pa.array(np.full(len(texts), shard, np.int32)))
    return k.append_column("__row", pa.array(np.arange(len(texts), dtype=np.int64)))


def _selected(stage, keys) -> set:
    dec = stage.compute(keys).table
    rejected = set(zip(dec["__shard"].to_pylist(), dec["__row"].to_pylist()))
    return {i for i, s, r in zip(keys["_id"].to_pylist(), keys["__shard"].to_pylist(), keys["__row"].to_pylist())
            if (s, r) not in rejected}


@pytest.mark.parametrize("cls", [_LenSelect, _ShortSelect])
def test_score_then_select_modes_are_exact_and_order_free(cls):
    t = real_texts(2000, "fortunes.parquet")
    texts, ids = t["text"].combine_chunks(), t["id"].combine_chunks()
    lens = pc.utf8_length(texts).to_numpy(zero_copy_only=False)
    order = np.random.default_rng(1).permutation(len(lens))
    for params in ({"top_k": 137}, {"top_fraction_docs": 0.2}, {"top_fraction_chars": 0.3},
                   {"top_k": 300, "gumbel_temperature": 5.0, "seed": 7}, {"threshold": 120.0}):
        st = cls(**params)
        sel = _selected(st, _keys(st, texts, ids))
        shuffled = _keys(st, texts.take(pa.array(order)), ids.take(pa.array(order)), shard=3)
        assert _selected(st, shuffled) == sel, params
        chosen = np.isin(ids.to_numpy(zero_copy_only=False), list(sel))
        if "top_k" in params:
            assert chosen.sum() == params["top_k"]
        if "top_fraction_docs" in params:
            assert chosen.sum() == 400
        if "top_fraction_chars" in params:
            assert abs(lens[chosen].sum() / lens.sum() - 0.3) < 0.01
        if "gumbel_temperature" not in params:   # deterministic modes keep the best scores
            best = lens[chosen].min() if cls.higher_is_better else lens[chosen].max()
            rest = lens[~chosen]
            assert (rest <= best).all() if cls.higher_is_better else (rest >= best).all()
        if "threshold" in params:
            assert ((lens >= 120) == chosen).all() if cls.higher_is_better else ((lens <= 120) == chosen).all()


def test_gumbel_top_k_samples_by_score():
    """Low temperature = plain top-k; the noise is a pure function of (seed, id); a higher
    temperature spreads the sample, and it still prefers better scores."""
    t = real_texts(3000, "fortunes.parquet")
    texts, ids = t["text"].combine_chunks(), t["id"].combine_chunks()
    lens = pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(float)
    plain = _selected(_LenSelect(top_k=300), _keys(_LenSelect(top_k=300), texts, ids))
    cold = _LenSelect(top_k=300, gumbel_temperature=1e-6)
    assert _selected(cold, _keys(cold, texts, ids)) == plain
    ih = stable_id_hash(ids)
    assert np.array_equal(gumbel_noise(ih, 3), gumbel_noise(ih, 3)) and not np.array_equal(gumbel_noise(ih, 3),
                                                                                        gumbel_noise(ih, 4))
    g = gumbel_noise(ih, 0)
    assert abs(g.mean() - 0.5772) < 0.05 and abs(g.std() - 1.2825) < 0.08     # Gumbel(0, 1) moments
    warm = _LenSelect(top_k=300, gumbel_temperature=float(np.std(lens)) / 2, seed=1)
    s = _selected(warm, _keys(warm, texts, ids))
    picked = np.isin(ids.to_numpy(zero_copy_only=False), list(s))
    assert len(s) == 300 and s != plain
    assert lens[picked].mean() > lens.mean()


def test_score_then_select_param_errors(tmp_path, write_shards):
    src = write_shards({"a.parquet": real_texts(20)})
    model = str(tmp_path / "m.bin")
    open(model, "wb").close()
    with pytest.raises(ConfigError, match="stages\\[0\\].top_k: give only one of"):
        api.plan({"input": src, "output": str(tmp_path / "o"),
                  "stages": [{"name": "preselect", "model": model, "top_fraction_docs": 0.1, "top_k": 5}]})
    with pytest.raises(ConfigError, match="gumbel_temperature: Gumbel sampling needs"):
        api.plan({"input": src, "output": str(tmp_path / "o"),
                  "stages": [{"name": "preselect", "model": model, "threshold": 0.5, "gumbel_temperature": 0.5}]})


