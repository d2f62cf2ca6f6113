"""Tests of the ``language`` stage and the shared fastText helpers (CPU, no network)."""
from __future__ import annotations

import os
import pickle
import random
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CORPORA  # noqa: E402

from thresher.scorers.base import ParamError
from thresher.scorers.classifiers import fasttext_util as ftu
from thresher.scorers.filters import language as F
from thresher.scorers.filters.language import LanguageStage

WIKI = os.path.join(CORPORA, "wiki_summaries.parquet")

needs_corpora = pytest.mark.skipif(not os.path.exists(WIKI), reason="shared corpora not available")


def _wiki_sample(per_lang: int, offset: int = 0, seed: int = 0) -> tuple[list[str], list[str]]:
    t = pq.read_table(WIKI, columns=["lang", "text"])
    langs, texts = t["lang"].to_pylist(), t["text"].to_pylist()
    rng = random.Random(seed)
    out_t, out_l = [], []
    for code in ("en", "fr", "es"):
        idx = [i for i, lab in enumerate(langs) if lab == code]
        rng.shuffle(idx)
        for i in idx[offset:offset + per_lang]:
            out_t.append(texts[i])
            out_l.append(code)
    return out_t, out_l


def _run(stage, texts):
    arr = pa.array(texts, pa.string())
    return stage.process(arr, pa.table({"text": arr}))


# ------------------------------------------------------------------------------------------
# default model
# ------------------------------------------------------------------------------------------


@needs_corpora
def test_default_model_accuracy_on_wiki_sample():
    texts, langs = _wiki_sample(100)
    assert len(texts) == 300
    stage = LanguageStage()
    stage.setup()
    out = _run(stage, texts)
    pred = out.columns[F.LANGUAGE].to_pylist()
    acc = np.mean([p == g for p, g in zip(pred, langs)])
    assert acc > 0.95, acc
    scores = np.asarray(out.columns[F.LANGUAGE_SCORE])
    assert out.columns[F.LANGUAGE_SCORE].type == pa.float32()
    assert out.columns[F.LANGUAGE].type == pa.string()
    assert ((scores >= 0) & (scores <= 1)).all()
    # threshold 0.65 keeps nearly all of this clean text
    assert out.reasons.null_count >= 295


def test_fields_are_registered():
    stage = LanguageStage()
    names = [f.name for f in stage.fields()]
    assert names == [F.LANGUAGE, F.LANGUAGE_SCORE]
    assert stage.fields()[1].type == pa.float32()


def test_keep_list_and_threshold_reasons():
    texts = [
        "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
        "Le renard brun rapide saute par-dessus le chien paresseux pendant que le fermier regarde.",
        "El rápido zorro marrón salta sobre el perro perezoso mientras el granjero mira desde el porche.",
        "zq xv 123 !!",
    ]
    stage = LanguageStage(languages=["en", "__label__fr"], threshold=0.65)
    out = _run(stage, texts)
    langs = out.columns[F.LANGUAGE].to_pylist()
    assert langs[:3] == ["en", "fr", "es"]
    reasons = out.reasons.to_pylist()
    assert reasons[0] is None and reasons[1] is None
    assert reasons[2] == "language.not_allowed"
    assert {stage.reason(r) for r in stage.reason_rules()} == {"language.not_allowed", "language.low_score"}

    # a threshold above every score: everything allowed is low_score
    strict = LanguageStage(threshold=1.0)
    out = _run(strict, texts)
    assert set(out.reasons.to_pylist()) == {"language.low_score"}
    # threshold 0 and no list: keep everything
    loose = LanguageStage(threshold=0.0)
    assert _run(loose, texts).reasons.null_count == len(texts)


def test_newlines_do_not_cut_the_document():
    # fastText stops reading at a newline; the stage must score the whole document
    doc = ("Hello\n" + "Ceci est un long paragraphe écrit entièrement en français, "
           "avec plusieurs phrases, pour que la langue soit évidente. " * 3)
    out = _run(LanguageStage(threshold=0.0), [doc])
    assert out.columns[F.LANGUAGE].to_pylist() == ["fr"]
    model = ftu.load_model(ftu.default_lid_model_path())
    labels, probs = model.predict(doc.replace("\n", " "))
    assert ftu.normalize_label(labels[0]) == "fr"
    assert abs(float(probs[0]) - out.columns[F.LANGUAGE_SCORE][0].as_py()) < 1e-6


def test_input_kinds_and_empty_batch():
    stage = LanguageStage(threshold=0.0)
    out = stage.process(pa.array([], pa.string()), pa.table({"text": pa.array([], pa.string())}))
    assert len(out.columns[F.LANGUAGE]) == 0 and len(out.reasons) == 0
    large = pa.array(["Guten Morgen, wie geht es dir heute?"], pa.large_string())
    out = stage.process(large, pa.table({"text": large}))
    assert out.columns[F.LANGUAGE].to_pylist() == ["de"]
    chunked = pa.chunked_array([["bonjour tout le monde"], ["good morning everybody"]])
    labels, probs = ftu.predict_top(ftu.load_model(ftu.default_lid_model_path()), chunked)
    assert labels.to_pylist() == ["fr", "en"] and probs.dtype == np.float32


def test_pickle_before_and_after_setup():
    stage = LanguageStage(languages=["en"])
    clone = pickle.loads(pickle.dumps(stage))          # before setup: no model
    assert clone._model is None
    stage.setup()
    blob = pickle.dumps(stage)                          # after setup: model dropped
    assert len(blob) < 10_000
    clone = pickle.loads(blob)
    assert clone._model is None
    out = _run(clone, ["This is plainly an English sentence about the weather today."])
    assert out.columns[F.LANGUAGE].to_pylist() == ["en"]


def test_unknown_language_in_keep_list():
    stage = LanguageStage(languages=["english"])
    with pytest.raises(ParamError) as e:
        stage.setup()
    assert e.value.key == "languages"


def test_param_validation():
    with pytest.raises(ParamError):
        LanguageStage(threshold=1.5)
    with pytest.raises(ParamError):
        LanguageStage(languages=[])
    with pytest.raises(ParamError):
        LanguageStage(langauges=["en"])   # typo: unknown parameter


# ------------------------------------------------------------------------------------------
# custom model, missing and corrupt files
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lid_model(tmp_path_factory):
    """A tiny fastText LID model with GlotLID-style labels, trained at test time."""
    if not os.path.exists(WIKI):
        pytest.skip("shared corpora not available")
    texts, langs = _wiki_sample(100, seed=1)
    glot = {"en": "eng_Latn", "fr": "fra_Latn", "es": "spa_Latn"}
    d = tmp_path_factory.mktemp("lid")
    train = d / "train.txt"
    lines = [f"__label__{glot[lab]} {t.replace(chr(10), ' ')}" for t, lab in zip(texts, langs)]
    random.Random(0).shuffle(lines)
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = d / "tiny_lid.bin"
    ftu.train_supervised(str(train), str(out), epoch=25, lr=0.5, dim=16, minn=2, maxn=4,
                         bucket=20_000, wordNgrams=1, thread=1, seed=1)
    return str(out)


def test_custom_model_path(tiny_lid_model):
    texts, langs = _wiki_sample(40, offset=200, seed=1)     # held out from training
    stage = LanguageStage(model=tiny_lid_model, languages=["eng_Latn"], threshold=0.0)
    stage.setup()
    out = _run(stage, texts)
    pred = out.columns[F.LANGUAGE].to_pylist()
    glot = {"en": "eng_Latn", "fr": "fra_Latn", "es": "spa_Latn"}
    acc = np.mean([p == glot[g] for p, g in zip(pred, langs)])
    assert acc > 0.8, acc
    reasons = out.reasons.to_pylist()
    for p, r in zip(pred, reasons):
        assert (r is None) == (p == "eng_Latn")
    assert set(ftu.model_labels(stage._model)) == {"eng_Latn", "fra_Latn", "spa_Latn"}


def test_missing_model_names_the_path(tmp_path):
    missing = str(tmp_path / "nope" / "lid.bin")
    with pytest.raises(ParamError) as e:
        LanguageStage(model=missing)
    assert missing in str(e.value) and e.value.key == "model"
    with pytest.raises(ftu.FastTextModelError) as e:
        ftu.load_model(missing)
    assert missing in str(e.value) and "not found" in str(e.value)
    with pytest.raises(ftu.FastTextModelError) as e:
        ftu.load_model(str(tmp_path))
    assert "directory" in str(e.value)


def test_corrupt_model_names_the_path(tmp_path, tiny_lid_model):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"this is not a fastText model at all" * 10)
    stage = LanguageStage(model=str(garbage))
    with pytest.raises(ftu.FastTextModelError) as e:
        stage.setup()
    assert str(garbage) in str(e.value) and "not a fastText model" in str(e.value)

    empty = tmp_path / "empty.ftz"
    empty.write_bytes(b"")
    with pytest.raises(ftu.FastTextModelError) as e:
        ftu.load_model(str(empty))
    assert str(empty) in str(e.value)

    for src in (ftu.default_lid_model_path(), tiny_lid_model):
        data = open(src, "rb").read()
        for cut in (12, 100, len(data) // 2, len(data) - 1):
            bad = tmp_path / f"truncated_{cut}.bin"
            bad.write_bytes(data[:cut])
            with pytest.raises(ftu.FastTextModelError) as e:
                LanguageStage(model=str(bad)).setup()
            assert str(bad) in str(e.value) and ("truncated" in str(e.value) or "corrupt" in str(e.value))
        extra = tmp_path / "extra.bin"
        extra.write_bytes(data + b"\0\0")
        with pytest.raises(ftu.FastTextModelError):
            ftu.load_model(str(extra))


def test_check_model_file_reads_the_header():
    info = ftu.check_model_file(ftu.default_lid_model_path())
    assert info["nlabels"] == 176 and info["quantized"] is True


def test_training_needs_the_full_fasttext(monkeypatch):
    fake = types.ModuleType("fasttext")
    fake.load_model = lambda path: None
    monkeypatch.setitem(sys.modules, "fasttext", fake)
    ftu.require_fasttext()        # prediction-only is fine for loading
    with pytest.raises(ImportError) as e:
        ftu.require_fasttext(training=True)
    assert "pip install --force-reinstall --no-deps fasttext-numpy2-wheel" in str(e.value)


def test_label_normalisation():
    assert ftu.normalize_label("__label__en") == "en"
    assert ftu.normalize_label("__label__eng_Latn") == "eng_Latn"
    assert ftu.normalize_label("en") == "en"


def test_prepare_lines():
    lines = ftu.prepare_lines(pa.array(["a\nb", "c", None]))
    assert lines == [b"a b\n", b"c\n", b"\n"]
