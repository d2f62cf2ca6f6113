"""``thresher preselect train`` with measured scores: ``score: {loss_on: FILE.parquet, ...}``.

Three tiny LMs built and trained here on real text (English Wikipedia summaries and English
fortunes, as in ``test_preselect.py``): one randomly initialised, one trained on fortunes, one
trained on Wikipedia. The target file holds held-out Wikipedia summaries, so the measured
ranking must be wikipedia > fortunes > random, and the labels must follow it.
"""
import contextlib
import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import corpus

from thresher.schemas.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCORING = {"device": "cpu", "max_length": 256}
N_DEV = 32          # the limit: rows of the target file that are read
LIMIT_ROWS_AFTER = 10  # rows beyond the limit (fortunes): read them and the score changes


def _cli(cfg_path) -> tuple[int, str]:
    """``thresher preselect train CONFIG`` as a user runs it: (exit code, stderr)."""
    from thresher.pipelines.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["preselect", "train", str(cfg_path)])
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_torch_thread):
    """Build the models and the target file, run ``preselect train`` once through the CLI."""
    from thresher.scorers.training import lm as lmtrain
    d = tmp_path_factory.mktemp("loss_on")
    wiki = pq.read_table(corpus("wiki_summaries.parquet"), columns=["id", "lang", "text"])
    wiki = wiki.filter(pc.equal(wiki["lang"], "en")).slice(0, 700)
    fort = pq.read_table(corpus("fortunes.parquet"), columns=["id", "text"]).slice(0, 400)
    wtext, ftext = wiki["text"].to_pylist(), fort["text"].to_pylist()
    # held-out target: short summaries (each fits one window: the reference below needs no windows)
    dev_idx = [i for i in range(200) if len(wtext[i]) < 350][:N_DEV - 2]
    wiki_train = [t for i, t in enumerate(wtext[:500]) if i not in set(dev_idx)]
    tok = lmtrain.train_tokenizer(wiki_train[:250] + ftext[:200], vocab_size=300)
    lms, paths = {}, {}
    for name, seed, texts, steps in (("random", 0, None, 0), ("fortunes", 1, ftext[:200], 40),
                                     ("wiki", 2, wiki_train, 20)):
        m = lmtrain.new_causal_lm(tok, hidden=32, layers=2, heads=4, context=256, seed=seed)
        if texts:
            lmtrain.train_causal_lm(m, tok, texts, steps=steps, seq_len=64, batch_size=8, seed=seed, lr=1e-2)
        m.train(False)
        lms[name] = m
        paths[name] = lmtrain.save(m, tok, str(d / name))
    # the target file: a null and an empty text inside the limit, fortunes after it
    dev = [wtext[i] for i in dev_idx]
    body = dev[:3] + [None] + dev[3:6] + [""] + dev[6:] + ftext[200:200 + LIMIT_ROWS_AFTER]
    assert len(body) == N_DEV + LIMIT_ROWS_AFTER
    dev_path = d / "dev.parquet"
    pq.write_table(pa.table({"id": [f"dev{i}" for i in range(len(body))], "body": body}), dev_path)
    # the pool to label: other Wikipedia summaries, and the fortunes the fortunes model learnt
    (d / "pool").mkdir()
    pq.write_table(wiki.slice(500, 200).select(["id", "text"]), d / "pool" / "wiki.parquet")
    pq.write_table(fort.slice(0, 200), d / "pool" / "fortunes.parquet")
    spec = {"loss_on": str(dev_path), "text_column": "body", "limit": N_DEV}
    order = ["fortunes", "random", "wiki"]   # config order is not the ranking
    cfg = d / "preselect.yaml"
    out = d / "ps"
    cfg.write_text(yaml.safe_dump({"input": str(d / "pool"), "output": str(out), "sample": {"size": 300, "seed": 0},
                                   "models": [{"path": paths[n], "score": dict(spec)} for n in order],
                                   "scoring": SCORING, "min_labels_per_class": 20, "validation_fraction": 0.25,
                                   # a small fastText model: the default 2M buckets take seconds to write
                                   "fasttext": {"dim": 16, "bucket": 20000, "thread": 1}}))
    rc, err = _cli(cfg)
    assert rc == 0, err
    return {"dir": d, "out": out, "err": err, "card": json.load(open(out / "card.json")), "order": order,
               "lms": lms, "tok": tok, "paths": paths, "body": body, "spec": spec,
            "wiki_ids": set(wiki["id"].to_pylist()), "fort_ids": set(fort["id"].to_pylist())}


def _reference(model, tok, texts) -> tuple[float, float]:
    """(total bits / total chars, mean of the per-document ratios) computed here, with the model
    in memory: BOS then the text's tokens in one forward pass, each text token scored once."""
    import torch
    import torch.nn.functional as F
    bits, chars, ratios = 0.0, 0, []
    for t in texts:
        if t is None:
            continue
        ids = [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"]
        assert len(ids) <= SCORING["max_length"]    # one window: no sliding windows to reproduce
        if len(ids) < 2:
            continue                                # the empty text: no token, no character
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0, :-1].float()
        nats = float(F.cross_entropy(logits, x[0, 1:], reduction="none").double().sum())
        bits += nats / math.log(2)
        chars += len(t)
        ratios.append(nats / math.log(2) / len(t))
    return bits / chars, float(np.mean(ratios))


def test_measured_score_is_minus_char_weighted_bpc_and_is_in_the_card(run):
    card = run["card"]
    body = run["body"][:N_DEV]
    n_docs = sum(1 for t in body if t)
    n_chars = sum(len(t) for t in body if t)
    for j, name in enumerate(run["order"]):
        bpc, mean_of_ratios = _reference(run["lms"][name], run["tok"], body)
        # the two aggregates differ here: the test tells character weighting from a mean of ratios
        assert abs(bpc - mean_of_ratios) > 1e-3
        # and the limit matters: the rows after it would move the score
        with_rest, _ = _reference(run["lms"][name], run["tok"], run["body"])
        assert abs(with_rest - bpc) > 1e-3
        mi = card["models"][j]
        assert mi["path"] == run["paths"][name]
        assert mi["score"] == pytest.approx(-bpc, abs=1e-6)
        sm = mi["score_measured"]
        assert sm["score"] == mi["score"] and sm["bpc"] == pytest.approx(bpc, abs=1e-6)
        assert sm["loss_on"] == run["spec"]["loss_on"] and sm["text_column"] == "body" and sm["limit"] == N_DEV
        assert (sm["rows"], sm["characters"], sm["skipped"]) == (N_DEV, n_chars, 0)
        assert sm["documents"] == n_docs + 1    # the empty text is a document of no character
        assert sm["bits"] == pytest.approx(bpc * n_chars, rel=1e-9)
    # one line per model on stderr, with its measured score
    lines = [ln for ln in run["err"].splitlines() if "score" in ln and run["spec"]["loss_on"] in ln]
    assert len(lines) == 3
    for j, ln in enumerate(lines):
        assert ln.startswith(f"preselect: model {j} {run['paths'][run['order'][j]]}: score "
                             f"{card['models'][j]['score']:.6f} = -(")


def test_measured_ranking_orders_the_models_and_the_labels(run):
    card = run["card"]
    score = {name: card["models"][j]["score"] for j, name in enumerate(run["order"])}
    # trained on target-like text > trained on other text > random initialisation
    assert score["wiki"] > score["fortunes"] > score["random"]
    assert card["ordered_model_pairs"] == 3
    labels = pq.read_table(run["out"] / "labels.parquet").to_pydict()
    lab = np.array(labels["label"])
    b = {name: np.array(labels[f"bpc_{j}"]) for j, name in enumerate(run["order"])}
    pos, neg = lab == 1, lab == 0
    assert pos.sum() == neg.sum() == card["labels"]["positives"] >= 20
    # a positive is fully concordant with the measured order (and not with the config order)
    assert (b["wiki"][pos] < b["fortunes"][pos]).all() and (b["fortunes"][pos] < b["random"][pos]).all()
    assert not ((b["wiki"][neg] < b["fortunes"][neg]) & (b["fortunes"][neg] < b["random"][neg])).any()
    ids = np.array(labels["id"])
    wiki_pos = np.isin(ids[pos], list(run["wiki_ids"])).mean()
    fort_neg = np.isin(ids[neg], list(run["fort_ids"])).mean()
    assert wiki_pos > 0.8 and fort_neg > 0.8, (wiki_pos, fort_neg)   # here: 0.91 and 0.99


def test_measured_score_defaults_and_the_module_function(run, tmp_path):
    """``text_column`` defaults to ``text`` and ``limit`` to every row; ``measure_score`` is the
    function ``train`` uses."""
    from thresher.pipelines.commands.preselect import _check, measure_score
    texts = [t for t in run["body"][:N_DEV] if t]
    pq.write_table(pa.table({"text": texts}), tmp_path / "t.parquet")
    p = run["paths"]
    cfg = _check({"input": "x", "output": "o", "models": [{"path": p["wiki"], "score": {"loss_on": str(tmp_path / "t.parquet")}},
                                                          {"path": p["random"], "score": {"loss_on": str(tmp_path / "t.parquet")}}]})
    spec = cfg["models"][0]["score"]
    assert spec == {"loss_on": str(tmp_path / "t.parquet"), "text_column": "text", "limit": None}
    r = measure_score(p["wiki"], spec, SCORING)
    bpc, _ = _reference(run["lms"]["wiki"], run["tok"], texts)
    assert r["rows"] == r["documents"] == len(texts) and r["score"] == pytest.approx(-bpc, abs=1e-6)


# --------------------------------------------------------------------------- config errors
@pytest.fixture
def no_scoring(monkeypatch):
    """Any model load for scoring fails the test: the errors below come before any model is scored."""
    from thresher.scorers.models import tasks

    def refuse(*a, **k):
        raise AssertionError("a model was loaded for scoring")
    monkeypatch.setattr(tasks, "build_task", refuse)


def _files(tmp_path):
    (tmp_path / "m0").mkdir()
    (tmp_path / "m1").mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "body": ["some text", "more text"]}), tmp_path / "dev.parquet")
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "other.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    (tmp_path / "notes.txt").write_text("not parquet\n")
    return str(tmp_path / "m0"), str(tmp_path / "m1")


def _lo(tmp_path, name="dev.parquet", **kw):
    return {"loss_on": str(tmp_path / name), **kw}


#: case -> (the two models' scores, the key named, the message after the key)
CASES = {
    "missing file": (lambda t: [_lo(t, text_column="body"), _lo(t, "nope.parquet", text_column="body")],
                     "models[1].score.loss_on", r"'.*nope\.parquet' does not exist"),
    "a directory": (lambda t: [{"loss_on": str(t)}, _lo(t)],
                    "models[0].score.loss_on", r"'.*' is not a file"),
    "not parquet": (lambda t: [_lo(t, "notes.txt"), _lo(t, "notes.txt")],
                    "models[0].score.loss_on", r"'.*notes\.txt' is not a readable Parquet file"),
    "missing default column": (lambda t: [_lo(t), _lo(t)],
                               "models[0].score.text_column", r"column 'text' is not in '.*dev\.parquet'; "
                                                              r"its columns: id, body"),
    "missing column": (lambda t: [_lo(t, text_column="body"), _lo(t, text_column="bdy")],
                       "models[1].score.text_column", r"column 'bdy' is not in .* \(did you mean 'body'\?\)"),
    "not a text column": (lambda t: [_lo(t, "ints.parquet"), _lo(t, "ints.parquet")],
                          "models[0].score.text_column", r"column 'text' of '.*ints\.parquet' is int64"),
    "no rows": (lambda t: [_lo(t, "empty.parquet"), _lo(t, "empty.parquet")],
                "models[0].score.loss_on", r"'.*empty\.parquet' has no rows"),
    "unknown key": (lambda t: [_lo(t, text_column="body"), _lo(t, text_colum="body")],
                    "models[1].score.text_colum", r"unknown key \(did you mean 'text_column'\?\); "
                                                  r"known: limit, loss_on, text_column"),
    "no loss_on": (lambda t: [{"text_column": "body"}, _lo(t, text_column="body")],
                   "models[0].score.loss_on", "missing"),
    "bad limit": (lambda t: [_lo(t, text_column="body", limit=0), _lo(t, text_column="body", limit=0)],
                  "models[0].score.limit", r"must be in \[1, "),
    "number then loss_on": (lambda t: [3.5, _lo(t, text_column="body")],
                            "models[1].score", r"\{loss_on: \.\.\.\} here but a number at models\[0\]\.score: "
                                               r"give every model a number or every model \{loss_on: \.\.\.\}"),
    "loss_on then number": (lambda t: [_lo(t, text_column="body"), 3.5],
                            "models[1].score", r"a number here but \{loss_on: \.\.\.\} at models\[0\]\.score"),
    "different files": (lambda t: [_lo(t, text_column="body"), _lo(t, "other.parquet")],
                        "models[1].score.loss_on", r"'.*other\.parquet' here but '.*dev\.parquet' at models\[0\]"
                                                   r"\.score\.loss_on: every model's score must be measured on "
                                                   r"the same texts"),
    "different limits": (lambda t: [_lo(t, text_column="body", limit=1), _lo(t, text_column="body")],
                         "models[1].score.limit", r"None here but 1 at models\[0\]\.score\.limit"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_config_errors_before_any_model_is_scored(tmp_path, no_scoring, case):
    import re

    from thresher.pipelines.commands.preselect import train
    m0, m1 = _files(tmp_path)
    scores, key, message = CASES[case]
    s0, s1 = scores(tmp_path)
    cfg = tmp_path / "preselect.yaml"
    out = tmp_path / "ps"
    cfg.write_text(yaml.safe_dump({"input": str(tmp_path / "no-corpus"), "output": str(out),
                                   "models": [{"path": m0, "score": s0}, {"path": m1, "score": s1}]}))
    rc, err = _cli(cfg)
    assert rc == 2 and "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err                       # one line, nothing logged before it
    assert re.match(rf"thresher: error: config error at {re.escape(key)}: {message}", lines[0]), lines[0]
    assert not out.exists()                           # nothing written
    with pytest.raises(ConfigError) as e:             # the same through the function
        train(yaml.safe_load(cfg.read_text()))
    assert e.value.key == key and "\n" not in str(e.value)
    assert not out.exists()


def test_measured_scores_all_equal_is_the_no_ranking_error(run, tmp_path):
    """The same checkpoint twice: both measured, same score, refused after measuring, nothing written."""
    from thresher.pipelines.commands.preselect import train
    p = run["paths"]["random"]
    out = tmp_path / "ps"
    logged = []
    with pytest.raises(ConfigError, match=r"^config error at models: all models have the same score: there is no "
                                          r"ranking to agree with \(measured: -\d+\.\d{6} for all"):
        train({"input": str(tmp_path / "no-corpus"), "output": str(out), "scoring": SCORING,
               "models": [{"path": p, "score": dict(run["spec"])}, {"path": p, "score": dict(run["spec"])}]},
              log=logged.append)
    assert len(logged) == 2 and all(" score -" in ln for ln in logged)    # both were measured first
    assert not out.exists()


def test_number_form_is_checked_as_before(run):
    """The number form is kept as given (``test_preselect.py`` runs it end to end)."""
    from thresher.pipelines.commands.preselect import _check
    cfg = _check({"input": "x", "output": "o", "models": [{"path": run["paths"]["wiki"], "score": 2},
                                                          {"path": run["paths"]["random"], "score": 1.5}]})
    assert [m["score"] for m in cfg["models"]] == [2, 1.5]
    with pytest.raises(ConfigError, match=r"models\[0\]\.score: expected a number, got 'high'"):
        _check({"input": "x", "output": "o", "models": [{"path": run["paths"]["wiki"], "score": "high"},
                                                        {"path": run["paths"]["random"], "score": 1.5}]})
