"""Tests of the ``toxicity`` stage: word lists, trained classifiers, profanity-check.

The held-out precision/recall printed here (run with ``-s``) are the numbers
quoted in the README. The data (tweets) contain offensive language; the tests
never print texts.
"""
from __future__ import annotations

import csv
import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CORPORA  # noqa: E402

from thresher.pipelines.commands import toxicity as TCMD
from thresher.scorers.base import ParamError
from thresher.scorers.classifiers import fasttext_util as ftu
from thresher.scorers.filters import toxicity as F
from thresher.scorers.filters import toxicity as T
from thresher.scorers.filters.toxicity import (
    ToxicityStage,
    WordListScorer,
    compile_wordlist,
    load_wordlists,
    match_wordlist,
)
from thresher.scorers.text.langcodes import normalize_language
from thresher.scorers.training import toxicity as TT
from thresher.scorers.training.toxicity import train_toxicity_classifier

TOX = os.path.join(CORPORA, "toxicity_labelled.parquet")
needs_tox = pytest.mark.skipif(not os.path.exists(TOX), reason="shared corpora not available")


def _match(texts, hard=(), soft=()):
    import pyarrow.compute as pc
    low = pc.utf8_lower(pa.array(texts, pa.string()))
    h, s, c = match_wordlist(low, compile_wordlist(hard, soft))
    return h.tolist(), s.tolist(), c.tolist()


def _process(stage, texts, **cols):
    arr = pa.array(texts, pa.string())
    table = pa.table({"text": arr, **{k: pa.array(v, pa.string()) for k, v in cols.items()}})
    return stage.process(arr, table)


# ------------------------------------------------------------------------------------------
# the matcher
# ------------------------------------------------------------------------------------------


def test_word_boundaries():
    h, s, _ = _match(["This class is in Scunthorpe.", "assassins pass the massive bass",
                      "Cunt!", "you ASS", "a cunt-like ass."], hard=["ass", "cunt"])
    assert h == [0, 0, 1, 1, 2]


def test_case_insensitive_and_unicode_lowercase():
    h, _, _ = _match(["FUCK", "Fuck", "fUcK", "ÉCOLE école"], hard=["fuck", "école"])
    assert h == [1, 1, 1, 2]


def test_multi_word_phrases_and_longest_match():
    hard = ["eat my ass", "big tits"]
    soft = ["ass", "tits"]
    h, s, c = _match(["eat my ass", "EAT   my\nass!", "eat ass", "big tits and tits", "eat my"],
                     hard=hard, soft=soft)
    # the phrase counts once and hides the soft word inside it
    assert h == [1, 1, 0, 1, 0]
    assert s == [0, 0, 1, 1, 0]
    assert c == [3, 3, 1, 3, 0]


def test_non_latin_scripts():
    # Russian: word boundaries in Cyrillic (\b of RE2 would be ASCII-only)
    h, _, _ = _match(["ну хуй", "хуйня", "Хуй, сказал он", "на хуй иди"], hard=["хуй", "на хуй"])
    assert h == [1, 0, 1, 1]
    # Chinese has no spaces: substring match; each character is a word for the score
    h, s, c = _match(["你是傻逼吗", "他很傻", "傻逼傻逼"], hard=["傻逼"])
    assert h == [1, 0, 2] and c == [2, 0, 4]
    # symbols without letters (emoji) match as substrings
    h, _, _ = _match(["ok 🖕🖕", "ok"], hard=["🖕"])
    assert h == [2, 0]


def test_soft_vs_hard_scores():
    ws = WordListScorer.__new__(WordListScorer)
    ws.path, ws._compiled = "<test>", {}
    ws.raw = {"en": {T.HARD: ["fuck"], T.SOFT: ["damn", "hell"]}}
    hard, soft, score = ws.score(pa.array(["damn hell damn", "fuck this", "nice day", ""]))
    assert hard.tolist() == [0, 1, 0, 0]
    assert soft.tolist() == [3, 0, 0, 0]
    assert score.dtype == np.float32
    np.testing.assert_allclose(score, [1.0, 0.5, 0.0, 0.0])


def test_shipped_lists():
    lists = load_wordlists()
    for lang in ("en", "de", "fr", "es", "it", "ru", "zh", "ja"):
        assert lists[lang][T.HARD] and lists[lang][T.SOFT], lang
    assert "fr" in lists and "fr-ca-u-sd-caqc" not in lists          # merged
    assert os.path.isfile(os.path.join(T.DATA_DIR, "ATTRIBUTION.md"))
    # comment lines (dropped entries) never become entries
    assert not any(e.startswith("#") for e in lists["en"][T.SOFT])
    assert "escort" not in lists["en"][T.SOFT] + lists["en"][T.HARD]
    ws = WordListScorer()
    h, s, _ = ws.score(pa.array([
        "This class in Scunthorpe discussed the passage of the bass assessment.",
        "The escort ship reached the harbour; the domination of the sea lanes ended.",
        "Rapeseed is grown for oil; the great tit is a passerine bird.",
    ]))
    assert h.tolist() == [0, 0, 0]
    assert s.max() <= 2


def test_per_row_language():
    ws = WordListScorer()
    texts = ["ну хуй", "ну хуй", "he said fuck", "he said fuck", "fuck"]
    langs = pa.array(["ru", "en", "eng_Latn", "de", None])
    hard, _, _ = ws.score(pa.array(texts), langs, default_language="en")
    # ru list for row 0; en list has no Russian; en via ISO-639-3; de list has no 'fuck';
    # a null language falls back to the default
    assert hard.tolist() == [1, 0, 1, 0, 1]
    assert normalize_language("en-US") == "en" and normalize_language("__label__zho_Hans") == "zh"
    assert normalize_language("nb") == "no"


# ------------------------------------------------------------------------------------------
# the stage
# ------------------------------------------------------------------------------------------


def test_stage_reasons_and_columns():
    stage = ToxicityStage()
    out = _process(stage, [
        "What a lovely afternoon in the park.",
        "Shut up, you motherfucker.",
        "damn bitch, that ass. bastard.",       # soft words, no hard word
        "the donkey (an ass) ate hay",
    ])
    assert [f.name for f in stage.fields()] == [F.TOXICITY_HARD_HITS, F.TOXICITY_SOFT_HITS,
                                               F.TOXICITY_WORDLIST_SCORE]
    assert set(out.columns) == {f.name for f in stage.fields()}
    assert out.columns[F.TOXICITY_HARD_HITS].type == pa.int32()
    assert out.columns[F.TOXICITY_WORDLIST_SCORE].type == pa.float32()
    assert out.reasons.to_pylist() == [None, "toxicity.hard_word", "toxicity.soft_words", None]
    assert out.columns[F.TOXICITY_SOFT_HITS].to_pylist()[2] >= 3


def test_stage_thresholds():
    texts = ["you motherfucker", "bitch bastard"]
    assert _process(ToxicityStage(max_hard_hits=None, min_soft_hits=None), texts).reasons.null_count == 2
    assert _process(ToxicityStage(max_hard_hits=1), texts).reasons.to_pylist()[0] is None
    assert _process(ToxicityStage(min_soft_hits=2), texts).reasons.to_pylist()[1] == "toxicity.soft_words"
    with pytest.raises(ParamError):
        ToxicityStage(min_soft_hits=0)
    with pytest.raises(ParamError):
        ToxicityStage(profanity_threshold=0.5)          # needs profanity_check
    with pytest.raises(ParamError) as e:
        ToxicityStage(wordlists="/nonexistent/lists")
    assert e.value.key == "wordlists"


def test_stage_uses_language_column():
    stage = ToxicityStage()
    out = _process(stage, ["ну хуй", "ну хуй"], language=["ru", "en"])
    assert out.columns[F.TOXICITY_HARD_HITS].to_pylist() == [1, 0]
    stage = ToxicityStage(language_column="lid", default_language="ru")
    out = _process(stage, ["ну хуй", "ну хуй"], language=["en", "en"])   # column ignored
    assert out.columns[F.TOXICITY_HARD_HITS].to_pylist() == [1, 1]


def test_custom_wordlists(tmp_path):
    (tmp_path / "en.txt").write_text("# comment\nfoo bar\nbaz\n", encoding="utf-8")
    (tmp_path / "de.soft.txt").write_text("quatsch\n", encoding="utf-8")
    stage = ToxicityStage(wordlists=str(tmp_path), min_soft_hits=1)
    out = _process(stage, ["Foo, bar!", "baz", "so ein Quatsch", "fuck"],
                   language=["en", "en", "de", "en"])
    assert out.columns[F.TOXICITY_HARD_HITS].to_pylist() == [1, 1, 0, 0]
    assert out.reasons.to_pylist() == ["toxicity.hard_word", "toxicity.hard_word",
                                       "toxicity.soft_words", None]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError):
        ToxicityStage(wordlists=str(empty)).setup()


def test_stage_pickles_without_models():
    stage = ToxicityStage()
    pickle.loads(pickle.dumps(stage))
    stage.setup()
    clone = pickle.loads(pickle.dumps(stage))
    assert clone._words is None
    out = _process(clone, ["fuck"])
    assert out.reasons.to_pylist() == ["toxicity.hard_word"]


def test_empty_and_large_string_batches():
    stage = ToxicityStage()
    empty = pa.array([], pa.string())
    out = stage.process(empty, pa.table({"text": empty}))
    assert len(out.columns[F.TOXICITY_HARD_HITS]) == 0
    large = pa.array(["fuck that"], pa.large_string())
    out = stage.process(large, pa.table({"text": large}))
    assert out.columns[F.TOXICITY_HARD_HITS].to_pylist() == [1]


# ------------------------------------------------------------------------------------------
# trained classifiers
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tox_split():
    if not os.path.exists(TOX):
        pytest.skip("shared corpora not available")
    t = pq.read_table(TOX, columns=["text", "toxic", "label"])
    texts, y = t["text"].to_pylist(), np.array(t["toxic"].to_pylist())
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))
    train_idx, test_idx = order[:3000], order[3000:6000]
    return texts, y, t["label"].to_pylist(), train_idx, test_idx


def _write_parquet(path, texts, labels, idx):
    pq.write_table(pa.table({"text": [texts[i] for i in idx], "toxic": [bool(labels[i]) for i in idx]}), path)


@needs_tox
@pytest.mark.parametrize("kind", ["fasttext", "linear"])
def test_classifier_train_and_round_trip(tmp_path, tox_split, kind):
    texts, y, _, train_idx, test_idx = tox_split
    data = tmp_path / "train.parquet"
    _write_parquet(data, texts, y, train_idx)
    out_dir = tmp_path / f"model_{kind}"
    card = train_toxicity_classifier(str(data), "text", "toxic", str(out_dir), kind=kind, seed=0,
                                     test_fraction=0.2)
    assert card["counts"]["rows"] == 3000 and card["counts"]["test"] == 600
    assert card["heldout"]["auc"] > 0.8
    on_disk = json.loads((out_dir / "card.json").read_text())
    assert on_disk["heldout"] == card["heldout"] and on_disk["hyperparameters"]
    if kind == "fasttext":
        model_path = str(out_dir / "toxicity.bin")
        ftu.check_model_file(model_path)
    else:
        model_path = str(out_dir)
        with np.load(out_dir / "linear.npz", allow_pickle=False) as z:   # no pickle inside
            assert set(z.files) == {"idf", "coef", "intercept"}
    stage = ToxicityStage(model=model_path)
    assert F.TOXICITY_SCORE in [f.name for f in stage.fields()]
    held = [texts[i] for i in test_idx]
    out = _process(stage, held)
    score = np.asarray(out.columns[F.TOXICITY_SCORE])
    assert out.columns[F.TOXICITY_SCORE].type == pa.float32()
    yt = y[test_idx]
    auc = TT.roc_auc(yt, score)
    assert score[yt].mean() > score[~yt].mean()
    assert auc > 0.8, auc
    m = TT.binary_metrics(yt, score, 0.5)
    # rows without any known word (also the last row of a batch) score too
    odd = _process(stage, ["fine words here", "qqzzxx", "", "qqzzxx vvww"])
    assert len(odd.columns[F.TOXICITY_SCORE]) == 4
    assert np.isfinite(np.asarray(odd.columns[F.TOXICITY_SCORE])).all()
    reasons = out.reasons.to_pylist()
    assert sum(r == "toxicity.classifier" for r in reasons) > 0
    print(f"\n[{kind}] trained on 3,000 tweets, scored 3,000 held-out: precision {m['precision']:.3f} "
          f"recall {m['recall']:.3f} F1 {m['f1']:.3f} AUC {auc:.3f} (card: {card['heldout']})")


@needs_tox
def test_wordlist_precision_recall_on_heldout(tox_split):
    texts, y, _, _, test_idx = tox_split
    stage = ToxicityStage()
    held = [texts[i] for i in test_idx]
    out = _process(stage, held)
    yt = y[test_idx]
    h = np.asarray(out.columns[F.TOXICITY_HARD_HITS])
    s = np.asarray(out.columns[F.TOXICITY_SOFT_HITS])
    flagged = out.reasons.is_valid().to_numpy(zero_copy_only=False)
    m = TT.binary_metrics(yt, flagged.astype(float), 0.5)
    any_hit = TT.binary_metrics(yt, ((h + s) > 0).astype(float), 0.5)
    auc = TT.roc_auc(yt, np.asarray(out.columns[F.TOXICITY_WORDLIST_SCORE]))
    print(f"\n[wordlist] default rules on 3,000 held-out tweets: precision {m['precision']:.3f} "
          f"recall {m['recall']:.3f}; any hit: precision {any_hit['precision']:.3f} "
          f"recall {any_hit['recall']:.3f}; AUC of wordlist score {auc:.3f}")
    assert m["precision"] > 0.95
    assert any_hit["recall"] > 0.6


@needs_tox
def test_main_train_csv_with_string_labels(tmp_path, tox_split):
    texts, _, labels, train_idx, _ = tox_split
    path = tmp_path / "tweets.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["tweet", "class"])
        for i in train_idx[:1500]:
            w.writerow([texts[i], labels[i]])
    out = tmp_path / "m"
    rc = TCMD.main_train(["--input", str(path), "--text-column", "tweet", "--label-column", "class",
                       "--output", str(out), "--kind", "linear", "--seed", "3",
                       "--test-fraction", "0.25", "--positive", "hate,offensive"])
    assert rc == 0
    card = json.loads((out / "card.json").read_text())
    assert card["positive_values"] == ["hate", "offensive"] and card["seed"] == 3
    assert card["counts"]["test"] == 375
    # bad positive value: a single class, clear error, exit code 2
    rc = TCMD.main_train(["--input", str(path), "--text-column", "tweet", "--label-column", "class",
                       "--output", str(tmp_path / "m2"), "--positive", "nonsense"])
    assert rc == 2


def test_label_binarisation_and_split():
    assert TT.binarize_labels([True, False, 1, 0, "toxic", "TRUE", "clean"]).tolist() == \
        [True, False, True, False, True, True, False]
    assert TT.binarize_labels(["a", "b"], positive=["B"]).tolist() == [False, True]
    with pytest.raises(ValueError):
        TT.binarize_labels(["x", "y"])
    y = np.array([True] * 80 + [False] * 20)
    tr, te = TT.stratified_split(y, 0.25, seed=1)
    assert len(te) == 25 and y[te].sum() == 20 and len(set(tr) & set(te)) == 0
    tr2, te2 = TT.stratified_split(y, 0.25, seed=1)
    assert (te == te2).all()


def test_roc_auc():
    assert TT.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert TT.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert TT.roc_auc([1, 1], [0.1, 0.2]) is None


def test_bad_model_paths(tmp_path):
    with pytest.raises(ParamError) as e:
        ToxicityStage(model=str(tmp_path / "missing.bin"))
    assert "missing.bin" in str(e.value)
    bad = tmp_path / "toxicity.bin"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ftu.FastTextModelError) as e:
        ToxicityStage(model=str(bad)).setup()
    assert str(bad) in str(e.value)
    lin = tmp_path / "lin"
    lin.mkdir()
    (lin / "linear.json").write_text(json.dumps({"kind": "linear", "vocabulary": ["a"]}))
    with pytest.raises(FileNotFoundError):
        ToxicityStage(model=str(lin)).setup()


# ------------------------------------------------------------------------------------------
# alt-profanity-check
# ------------------------------------------------------------------------------------------


def test_profanity_check_optional():
    pytest.importorskip("profanity_check")
    stage = ToxicityStage(profanity_check=True, profanity_threshold=0.9)
    assert F.TOXICITY_PROFANITY in [f.name for f in stage.fields()]
    out = _process(stage, ["Have a wonderful day, friend.", "fuck you, you fucking idiot"])
    p = out.columns[F.TOXICITY_PROFANITY].to_pylist()
    assert p[1] > 0.9 > p[0]
    assert out.reasons.to_pylist()[1] == "toxicity.hard_word"   # word lists come first
