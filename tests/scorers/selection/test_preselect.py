"""PreSelect: strength formula, labels, fastText round trip, global selection, CLI errors."""
import json
import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import corpus, local_run

from thresher.schemas.config import ConfigError
from thresher.scorers.selection.select import top_fraction
from thresher.scorers.training.preselect import predictive_strength, select_labels


def test_strength_hand_computed():
    scores = [1.0, 2.0, 3.0]                      # model 2 strongest
    losses = np.array([[3.0, 2.0, 1.0],           # perfectly concordant: 3/3
                       [1.0, 2.0, 3.0],           # reversed: 0/3
                       [2.0, 2.0, 1.0],           # tie between 0 and 1 counts nothing: 2/3
                       [1.5, np.nan, 1.0]])       # missing: skipped
    s, conc, pairs = predictive_strength(losses, scores)
    assert pairs == 3
    assert conc.tolist() == [3, 0, 2, -1]
    assert s[:3].tolist() == pytest.approx([1.0, 0.0, 2 / 3]) and np.isnan(s[3])


def test_strength_with_tied_downstream_scores():
    # models 0 and 1 share a score: that pair carries no order and is left out
    s, conc, pairs = predictive_strength(np.array([[2.0, 3.0, 1.0], [3.0, 2.0, 4.0]]), [1.0, 1.0, 2.0])
    assert pairs == 2
    assert conc.tolist() == [2, 0]
    with pytest.raises(ValueError, match="same downstream score"):
        predictive_strength(np.ones((2, 2)), [1.0, 1.0])
    with pytest.raises(ValueError, match=r"\(n_docs, 3\)"):
        predictive_strength(np.ones((2, 2)), [1.0, 2.0, 3.0])


def test_labels_are_balanced_and_lowest_negatives():
    rng = np.random.default_rng(0)
    strength = rng.choice([0.0, 1 / 3, 2 / 3, 1.0], size=500, p=[0.3, 0.3, 0.3, 0.1])
    strength[7] = np.nan
    ids = [f"d{i}" for i in range(500)]
    pos, neg, info = select_labels(strength, ids)
    assert len(pos) == len(neg) == info["positives"] == info["negatives"]
    assert (strength[pos] == 1.0).all()
    assert strength[neg].max() <= np.sort(strength[~np.isnan(strength) & (strength < 1)])[len(neg) - 1]
    assert 7 not in pos and 7 not in neg
    pos2, neg2, _ = select_labels(strength, ids)  # deterministic
    assert pos.tolist() == pos2.tolist() and neg.tolist() == neg2.tolist()


def test_top_fraction_by_chars_and_docs():
    rng = np.random.default_rng(1)
    scores = rng.random(10_000)
    chars = rng.integers(10, 5000, 10_000).astype(float)
    tb = np.arange(10_000, dtype=np.uint64)
    m, thr = top_fraction(scores, chars, tb, 0.1)
    assert abs(chars[m].sum() / chars.sum() - 0.1) < 0.001
    assert scores[m].min() == thr and (scores[~m] <= thr).all()
    m, _ = top_fraction(scores, np.ones(10_000), tb, 0.25)
    assert m.sum() == 2500


@pytest.fixture(scope="module")
def style_classifier(tmp_path_factory):
    """A fastText classifier trained here: formal/technical paragraphs are __label__1."""
    from thresher.scorers.classifiers import fasttext_util as ftu
    d = tmp_path_factory.mktemp("ps")
    t = pq.read_table(corpus("style_paragraphs.parquet")).to_pydict()
    lines = []
    for text, style, split in zip(t["text"], t["style"], t["split"]):
        if split == "train":
            lab = 1 if style in ("formal", "technical") else 0
            lines.append(f"__label__{lab} " + text.replace("\n", " "))
    (d / "train.txt").write_text("\n".join(lines) + "\n")
    ftu.train_supervised(str(d / "train.txt"), str(d / "clf.bin"), epoch=3, lr=0.1, wordNgrams=2)
    return str(d / "clf.bin")


def test_stage_selects_global_top_chars_across_uneven_shards(tmp_path, style_classifier):
    t = pq.read_table(corpus("style_paragraphs.parquet"), columns=["id", "style", "text"])
    inp = tmp_path / "in"
    inp.mkdir()
    # uneven shards, sorted by style so that per-shard selection would differ from global selection
    t = t.take(pa.array(np.argsort(np.array(t["style"].to_pylist()), kind="stable")))
    cuts = [0, 300, 2500, 2600, t.num_rows]
    for i in range(4):
        pq.write_table(t.slice(cuts[i], cuts[i + 1] - cuts[i]), inp / f"s{i}.parquet")
    out = str(tmp_path / "out")
    # keep_work: the key files are read again below
    stats = local_run({"input": str(inp), "output": {"path": out, "keep_work": True},
                       "stages": [{"name": "preselect", "model": style_classifier, "top_fraction_chars": 0.2}]})
    assert stats["reconciled"]
    con = duckdb.connect()
    kept_chars, = con.execute(f"select sum(length(text)) from read_parquet('{out}/kept/*.parquet')").fetchone()
    total, = con.execute(f"select sum(length(text)) from read_parquet(['{out}/kept/*.parquet', "
                         f"'{out}/rejected/*.parquet'])").fetchone()
    assert abs(kept_chars / total - 0.2) <= 0.01 * 0.2   # within 1% of the requested fraction
    # threshold is global: every kept score >= every rejected score
    kmin, = con.execute(f"select min(preselect_score) from read_parquet('{out}/kept/*.parquet')").fetchone()
    rmax, = con.execute(f"select max(preselect_score) from read_parquet('{out}/rejected/*.parquet')").fetchone()
    assert kmin >= rmax
    reasons = {r[0] for r in con.execute(f"select distinct reason from read_parquet('{out}/rejected/*.parquet')").fetchall()}
    assert reasons == {"preselect.below_threshold"}
    # per-shard kept fractions differ widely: the selection was not made per shard
    per = dict(con.execute(f"select k.filename, sum(length(k.text)) from read_parquet('{out}/kept/*.parquet', "
                           f"filename=true) k group by 1").fetchall())
    frac = []
    for i in range(4):
        tot = pq.read_table(inp / f"s{i}.parquet")["text"]
        frac.append(per.get(f"{out}/kept/s{i}.parquet", 0) / sum(len(x) for x in tot.to_pylist()))
    assert max(frac) - min(frac) > 0.3
    # the classifier prefers formal/technical text
    styles = dict(con.execute(f"select style, count(*) from read_parquet('{out}/kept/*.parquet') group by 1").fetchall())
    assert styles.get("formal", 0) + styles.get("technical", 0) > 0.8 * sum(styles.values())
    g = json.load(open(os.path.join(out, "_global", "preselect.json")))
    assert g["mode"] == "top_fraction_chars" and abs(g["selected_char_fraction"] - 0.2) < 0.002
    # the global step decides on the kept key files alone: no model is loaded for it
    from thresher.pipelines import api as A
    from thresher.pipelines import engine as E
    from thresher.scorers.selection.preselect import PreSelect

    def no_model(self):
        raise AssertionError("compute must not load the classifier")
    PreSelect.setup, real = no_model, PreSelect.setup
    try:
        p = A.plan({"input": str(inp), "output": out,
                    "stages": [{"name": "preselect", "model": style_classifier, "top_fraction_chars": 0.2}]})
        k, dec = E.compute_global(p, 0, [E.work_keys_path(out, s, 0) for s in p.shards], [])
    finally:
        PreSelect.setup = real
    assert k == 0 and dec.num_rows == stats["rejected_rows"]


def test_stage_threshold_and_docs_modes(tmp_path, style_classifier):
    t = pq.read_table(corpus("style_paragraphs.parquet"), columns=["id", "text"]).slice(0, 1000)
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(t, inp / "a.parquet")
    s = local_run({"input": str(inp), "output": str(tmp_path / "d"),
                   "stages": [{"name": "preselect", "model": style_classifier, "top_fraction_docs": 0.3}]})
    assert s["kept_rows"] == 300
    s = local_run({"input": str(inp), "output": str(tmp_path / "t"),
                   "stages": [{"name": "preselect", "model": style_classifier, "threshold": 0.5}]})
    con = duckdb.connect()
    assert con.execute(f"select min(preselect_score) >= 0.5 from read_parquet('{tmp_path}/t/kept/*.parquet')").fetchone()[0]
    assert con.execute(f"select max(preselect_score) < 0.5 from read_parquet('{tmp_path}/t/rejected/*.parquet')").fetchone()[0]


def test_stage_bad_params(tmp_path, write_shards, style_classifier):
    from thresher.pipelines.api import plan
    inp = write_shards({"a.parquet": {"text": ["x"]}})
    with pytest.raises(ConfigError, match=r"stages\[0\]\.model: fastText model '/nope.bin' does not exist"):
        plan({"input": inp, "output": str(tmp_path / "o"), "stages": [{"name": "preselect", "model": "/nope.bin"}]})
    with pytest.raises(ConfigError, match="give only one of"):
        plan({"input": inp, "output": str(tmp_path / "o"),
              "stages": [{"name": "preselect", "model": style_classifier, "threshold": 0.5,
                          "top_fraction_docs": 0.1}]})


def test_train_config_errors(tmp_path):
    from thresher.pipelines.commands.preselect import train
    d = tmp_path / "m"
    d.mkdir()
    with pytest.raises(ConfigError, match=r"models\[1\]\.score: missing"):
        train({"input": "x", "output": str(tmp_path / "o"), "models": [{"path": str(d), "score": 1}, {"path": str(d)}]})
    with pytest.raises(ConfigError, match=r"models\[0\]\.path: model '/does/not/exist' does not exist"):
        train({"input": "x", "output": str(tmp_path / "o"),
               "models": [{"path": "/does/not/exist", "score": 1}, {"path": str(d), "score": 2}]})
    with pytest.raises(ConfigError, match="at least two models"):
        train({"input": "x", "output": str(tmp_path / "o"), "models": [{"path": str(d), "score": 1}]})


def test_preselect_train_end_to_end_with_tiny_lms(tmp_path):
    """Three tiny LMs of different strength (trained here), their target loss as the score."""
    from thresher.scorers.classifiers import fasttext_util as ftu
    from thresher.scorers.training import lm as lmtrain
    wiki = pq.read_table(corpus("wiki_summaries.parquet"), columns=["id", "lang", "text"])
    wiki = wiki.filter(pa.compute.equal(wiki["lang"], "en")).slice(0, 1200)
    fort = pq.read_table(corpus("fortunes.parquet"), columns=["id", "text"]).slice(0, 600)
    target, train_txt = wiki["text"].to_pylist()[:200], wiki["text"].to_pylist()[200:]
    tok = lmtrain.train_tokenizer(train_txt + fort["text"].to_pylist(), vocab_size=600)
    models = []
    for i, steps in enumerate([1, 8, 30]):
        m = lmtrain.new_causal_lm(tok, hidden=32, layers=2, heads=4, context=128, seed=i)
        lmtrain.train_causal_lm(m, tok, train_txt, steps=steps, seq_len=64, batch_size=8, seed=i, lr=1e-2)
        loss = lmtrain.eval_loss(m, tok, target, seq_len=64)
        models.append({"path": lmtrain.save(m, tok, str(tmp_path / f"lm{i}")), "score": -loss})
    assert models[0]["score"] < models[2]["score"]
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.table({"id": wiki["id"].to_pylist()[200:], "text": train_txt}), pool / "wiki.parquet")
    pq.write_table(fort, pool / "fortunes.parquet")
    out = tmp_path / "ps"
    import yaml

    from thresher.pipelines.cli import main
    cfg = tmp_path / "preselect.yaml"
    # 42 + 42 labels from 500 documents, 2 negatives at validation_fraction 0.1: refused by the defaults
    # (min_labels_per_class 50, 5 of each class in each split), hence the two overrides
    cfg.write_text(yaml.safe_dump({"input": str(pool), "output": str(out), "sample": {"size": 500, "seed": 3},
                                   "models": models, "scoring": {"device": "cpu", "max_length": 128},
                                   "min_labels_per_class": 20, "validation_fraction": 0.25}))
    assert main(["preselect", "train", str(cfg)]) == 0       # the CLI path users run
    card = json.load(open(out / "card.json"))
    assert card["sampled_docs"] == 500 and card["ordered_model_pairs"] == 3
    assert card["labels"]["positives"] == card["labels"]["negatives"] > 0
    assert 0.0 <= card["validation_accuracy"] <= 1.0
    assert json.load(open(out / "card.json"))["models"][2]["score"] == models[2]["score"]
    labels = pq.read_table(out / "labels.parquet")
    assert labels.num_rows == 500 and {"strength", "bpc_0", "bpc_1", "bpc_2", "label"} <= set(labels.column_names)
    assert (np.array(labels["label"].to_pylist()) == 1).sum() == card["labels"]["positives"]
    clf = ftu.load_model(str(out / "classifier.bin"))
    p = ftu.predict_label_prob(clf, pa.array(["Paris is the capital of France."]), "1")
    assert 0.0 <= float(p[0]) <= 1.0


def test_sample_is_independent_of_shard_layout(tmp_path):
    from thresher.pipelines.commands.preselect import sample_documents
    t = pq.read_table(corpus("fortunes.parquet"), columns=["id", "text"]).slice(0, 3000)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pq.write_table(t, a / "all.parquet")
    pq.write_table(t.slice(2000), b / "x.parquet")
    pq.write_table(t.slice(0, 2000), b / "y.parquet")
    sa = sample_documents(str(a), "text", None, 250, seed=5)
    sb = sample_documents(str(b), "text", None, 250, seed=5)
    assert sa.num_rows == 250 and sa["id"].to_pylist() == sb["id"].to_pylist()
    assert sample_documents(str(a), "text", None, 250, seed=6)["id"].to_pylist() != sa["id"].to_pylist()


# --------------------------------------------------------------------------- degenerate training data
@pytest.fixture(scope="module")
def refusal_lms(tmp_path_factory):
    """A pool of 300 fortunes and three tiny LMs: two untrained (seeds 0 and 2), one trained one step
    (lower loss than untrained seed 0 on ~86 of the 100 sampled documents)."""
    from thresher.scorers.training import lm as lmtrain
    d = tmp_path_factory.mktemp("refuse")
    fort = pq.read_table(corpus("fortunes.parquet"), columns=["id", "text"]).slice(0, 300)
    (d / "pool").mkdir()
    pq.write_table(fort, d / "pool" / "fortunes.parquet")
    texts = fort["text"].to_pylist()
    tok = lmtrain.train_tokenizer(texts, vocab_size=300)
    paths = {}
    for name, seed, steps in (("raw0", 0, 0), ("raw2", 2, 0), ("step1", 1, 1)):
        m = lmtrain.new_causal_lm(tok, hidden=32, layers=2, heads=4, context=64, seed=seed)
        if steps:
            lmtrain.train_causal_lm(m, tok, texts, steps=steps, seq_len=32, batch_size=8, seed=seed, lr=1e-2)
        paths[name] = lmtrain.save(m, tok, str(d / name))
    return str(d / "pool"), paths


def _refused(tmp_path, capsys, pool, models, **extra):
    """Run ``thresher preselect train`` as a user does; return (exit code, the error lines, stderr)."""
    import yaml

    from thresher.pipelines.cli import main
    cfg = tmp_path / "preselect.yaml"
    cfg.write_text(yaml.safe_dump({"input": pool, "output": str(tmp_path / "ps"), "sample": {"size": 100, "seed": 1},
                                   "models": models, "scoring": {"device": "cpu", "max_length": 64}, **extra}))
    capsys.readouterr()
    rc = main(["preselect", "train", str(cfg)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not (tmp_path / "ps" / "classifier.bin").exists() and not (tmp_path / "ps").exists()  # nothing written
    return rc, [ln for ln in err.splitlines() if "error" in ln.lower()], err


def test_train_refuses_too_few_labels_through_the_cli(tmp_path, capsys, refusal_lms):
    # one training step beats no training on most fortunes: many positive candidates, few negatives
    pool, lms = refusal_lms
    rc, errors, err = _refused(tmp_path, capsys, pool, [{"path": lms["raw0"], "score": 1.0},
                                                         {"path": lms["step1"], "score": 2.0}])
    assert rc == 2 and len(errors) == 1, err
    e = errors[0]
    assert e.startswith("thresher: error: config error at sample.size: too few labels to train on: "), e
    assert "from 100 sampled documents (100 with every model's loss, 0 skipped)" in e
    n = int(e.split("too few labels to train on: ")[1].split(" positives")[0])
    assert 0 < n < 50 and f"{n} positives, {n} negatives" in e
    assert "min_labels_per_class (50)" in e and "raise sample.size (now 100)" in e
    assert "lower min_labels_per_class" in e


def test_train_refuses_one_class_and_a_tiny_validation_split(tmp_path, capsys, refusal_lms):
    pool, lms = refusal_lms
    # the same checkpoint twice: every loss ties, every strength is 0, no negative is left
    (tmp_path / "same").mkdir()
    rc, errors, err = _refused(tmp_path / "same", capsys, pool, [{"path": lms["raw0"], "score": 1.0},
                                                                  {"path": lms["raw0"], "score": 2.0}])
    assert rc == 2 and len(errors) == 1, err
    assert errors[0].startswith("thresher: error: config error at models: cannot train on one class: "
                                "0 positives, 0 negatives from 100 sampled documents"), errors[0]
    assert "same predictive strength 0" in errors[0] and "sample.size" in errors[0]
    # two unrelated random models: balanced labels, but 2% of them cannot validate anything
    (tmp_path / "val").mkdir()
    rc, errors, err = _refused(tmp_path / "val", capsys, pool, [{"path": lms["raw0"], "score": 1.0},
                                                                 {"path": lms["raw2"], "score": 2.0}],
                               min_labels_per_class=5, validation_fraction=0.02)
    assert rc == 2 and len(errors) == 1, err
    assert errors[0].startswith("thresher: error: config error at validation_fraction: the validation split "
                                "would hold "), errors[0]
    assert "fewer than 5 of a class" in errors[0] and "validation_fraction: 0" in errors[0]


def test_train_config_min_labels(tmp_path):
    from thresher.pipelines.commands.preselect import train
    d = tmp_path / "m"
    d.mkdir()
    base = {"input": "x", "output": str(tmp_path / "o"), "models": [{"path": str(d), "score": 1},
                                                                     {"path": str(d), "score": 2}]}
    with pytest.raises(ConfigError, match=r"^config error at min_labels_per_class: expected an integer >= 1"):
        train({**base, "min_labels_per_class": 0})
    with pytest.raises(ConfigError, match=r"min_labels_per_class: expected an integer"):
        train({**base, "min_labels_per_class": "50"})
    # refused before any model runs: 60 documents cannot give 50 + 50 labels
    with pytest.raises(ConfigError, match=r"^config error at sample\.size: a sample of 60 documents gives at most "
                                          r"30 labels per class, fewer than min_labels_per_class \(50\); raise "
                                          r"sample\.size to at least 100"):
        train({**base, "sample": {"size": 60}})
    assert not (tmp_path / "o").exists()


def test_select_labels_on_nothing_and_accuracy_vs_chance():
    from thresher.scorers.training.preselect import accuracy_vs_chance
    pos, neg, info = select_labels(np.array([np.nan, np.nan]), ["a", "b"])
    assert pos.size == neg.size == 0 and info["positives"] == info["negatives"] == 0
    assert accuracy_vs_chance(10, 10) == pytest.approx(0.5 ** 10)
    assert accuracy_vs_chance(5, 10) == pytest.approx(sum(__import__("math").comb(10, k) for k in range(5, 11)) / 1024)
    assert accuracy_vs_chance(0, 10) == 1.0 and accuracy_vs_chance(0, 0) == 1.0
    assert accuracy_vs_chance(900, 1000) < 1e-100 and accuracy_vs_chance(520, 1000) > 0.05


def test_refusal_when_no_document_has_every_loss():
    from thresher.pipelines.commands.preselect import _check, _refuse_degenerate
    cfg = _check({"input": "x", "output": "o", "models": [{"path": "/", "score": 1}, {"path": "/", "score": 2}]})
    strength = np.array([np.nan, np.nan, np.nan])
    _, _, info = select_labels(strength, ["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"^config error at models: no label to train on: 0 positives, 0 negatives "
                                          r"from 3 sampled documents \(0 with every model's loss, 3 skipped\)"):
        _refuse_degenerate(cfg, 3, strength, info)
