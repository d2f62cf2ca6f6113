"""Tests for the built-in sample corpus generator (pipelines/sample.py)."""
from __future__ import annotations

import collections
import os
import re
import subprocess
import sys

import duckdb
import pyarrow.parquet as pq
import pytest

from thresher.pipelines import sample

N = 2000
from conftest import ROOT  # noqa: E402

STOP_WORDS = {"the", "be", "to", "of", "and", "that", "have", "with"}


@pytest.fixture(scope="module")
def corpus():
    docs, truth = sample.generate(N, seed=0)
    rows = docs.to_pylist()
    trows = truth.to_pylist()
    by_id = {r["id"]: r for r in rows}
    return docs, truth, rows, trows, by_id


def _originals(rows, trows, kind=None):
    return [r for r, t in zip(rows, trows)
            if t["dup_type"] is None and (kind is None or r["kind"] == kind)]


def _shingles(text: str, lang: str) -> set:
    if lang in ("zh", "ja"):
        t = "".join(text.split())
        return {t[i:i + 5] for i in range(len(t) - 4)}
    w = text.split()
    return {tuple(w[i:i + 5]) for i in range(len(w) - 4)}


def _dup_ngram_char_fraction(words: list[str], n: int) -> float:
    counts = collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        if counts[tuple(words[i:i + n])] > 1:
            for j in range(i, i + n):
                covered[j] = True
    total = sum(len(w) for w in words) or 1
    return sum(len(w) for w, c in zip(words, covered) if c) / total


def _is_repetitive(text: str) -> bool:
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if lines and 1 - len(set(lines)) / len(lines) > 0.3:
        return True
    words = text.split()
    total = sum(len(w) for w in words) or 1
    bigrams = collections.Counter(tuple(words[i:i + 2]) for i in range(len(words) - 1))
    if bigrams:
        g, c = bigrams.most_common(1)[0]
        if c > 1 and c * sum(map(len, g)) / total > 0.2:
            return True
    return _dup_ngram_char_fraction(words, 5) > 0.15


# --- determinism ----------------------------------------------------------------------

def test_same_seed_is_identical():
    a_docs, a_truth = sample.generate(300, seed=7)
    b_docs, b_truth = sample.generate(300, seed=7)
    assert a_docs.equals(b_docs)
    assert a_truth.equals(b_truth)


def test_different_seed_differs():
    a_docs, _ = sample.generate(300, seed=7)
    b_docs, _ = sample.generate(300, seed=8)
    assert a_docs.column("text").to_pylist() != b_docs.column("text").to_pylist()
    # the texts themselves differ, not just their order
    a = set(t for t in a_docs.column("text").to_pylist() if t)
    b = set(t for t in b_docs.column("text").to_pylist() if t)
    assert len(a & b) < 0.1 * len(a)


_DIGEST = """
import hashlib
from thresher.pipelines import sample

def digest(n, seed):
    docs, truth = sample.generate(n, seed)
    h = hashlib.sha256()
    for table in (docs, truth):
        for col in table.column_names:
            for v in table.column(col).to_pylist():
                h.update(repr(v).encode())
    return h.hexdigest()
"""


def test_independent_of_hash_seed():
    """No dependence on hash() / set order: other PYTHONHASHSEEDs give the same bytes."""
    ns: dict = {}
    exec(_DIGEST, ns)
    code = _DIGEST + "\nprint(digest(200, 3))"
    hs = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    env = dict(os.environ, PYTHONHASHSEED=hs, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ns["digest"](200, 3)


# --- schema, ids, mix -------------------------------------------------------------------

def test_schema_and_ids(corpus):
    docs, truth, rows, trows, _ = corpus
    assert docs.schema.names == ["id", "text", "kind", "lang", "url"]
    assert truth.schema.names == ["id", "kind", "dup_group", "dup_type", "source_id", "expected_flags"]
    assert docs.num_rows == truth.num_rows == N
    ids = docs.column("id").to_pylist()
    assert len(set(ids)) == N
    assert all(re.fullmatch(r"sample-\d{6}", i) for i in ids)
    assert ids == truth.column("id").to_pylist()
    assert docs.column("kind").to_pylist() == truth.column("kind").to_pylist()
    assert all(r["url"].startswith(("http://", "https://")) for r in rows)
    assert set(t["dup_type"] for t in trows) == {None, "exact", "near"}


def test_all_kinds_present_with_expected_fractions(corpus):
    _, _, rows, trows, _ = corpus
    assert {r["kind"] for r in rows} == set(sample.KINDS)
    counts = collections.Counter(r["kind"] for r in _originals(rows, trows))
    for kind, frac in sample.MIX.items():
        if kind == "tiny":
            got = sum(counts[k] for k in ("short", "empty", "long")) / N
        else:
            got = counts[kind] / N
        assert abs(got - frac) < 0.01, (kind, got, frac)
    dup = collections.Counter(t["dup_type"] for t in trows)
    assert dup["exact"] == round(N * sample.EXACT_DUP_FRACTION)
    assert dup["near"] == round(N * sample.NEAR_DUP_FRACTION)
    # flags follow the kind
    for r, t in zip(rows, trows):
        assert t["expected_flags"].split(",")[0] == sample.FLAGS[r["kind"]]


def test_short_empty_null_and_long(corpus):
    _, _, rows, trows, _ = corpus
    empties = _originals(rows, trows, "empty")
    assert 1 <= sum(r["text"] is None for r in empties) <= 2
    assert sum(r["text"] == "" for r in empties) >= 1
    assert all(r["text"] in ("", None) for r in empties)
    shorts = [r["text"] for r in rows if r["kind"] == "short"]
    assert shorts and all(1 <= len(t.split()) <= 10 for t in shorts)
    longs = [r["text"] for r in rows if r["kind"] == "long"]
    assert longs and all(len(t) >= sample.LONG_DOC_MIN_CHARS for t in longs)
    # nothing else is empty or null
    assert all(r["text"] for r in rows if r["kind"] != "empty")


def test_average_size_gives_10_to_25_mb_per_5000_docs(corpus):
    _, _, rows, _, _ = corpus
    total = sum(len(r["text"]) for r in rows if r["text"])
    per_5000 = total / N * 5000
    assert 10e6 <= per_5000 <= 25e6, per_5000


# --- duplicates ---------------------------------------------------------------------------

def test_exact_duplicates_are_byte_identical(corpus):
    _, _, rows, trows, by_id = corpus
    n = 0
    for r, t in zip(rows, trows):
        if t["dup_type"] != "exact":
            continue
        src = by_id[t["source_id"]]
        assert t["source_id"] != r["id"]
        assert r["text"] == src["text"] and r["text"]
        assert r["kind"] == src["kind"]
        n += 1
    assert n > 0


def test_duplicate_groups_are_consistent(corpus):
    _, truth, rows, trows, _ = corpus
    t_by_id = {t["id"]: t for t in trows}
    members = collections.defaultdict(list)
    for t in trows:
        if t["dup_type"] is None:
            assert t["source_id"] is None
        else:
            assert t["dup_group"] is not None and t["source_id"] is not None
            src = t_by_id[t["source_id"]]
            assert src["dup_type"] is None and src["dup_group"] == t["dup_group"]
        if t["dup_group"] is not None:
            members[t["dup_group"]].append(t)
    for group, ts in members.items():
        originals = [t for t in ts if t["dup_type"] is None]
        assert len(originals) == 1 and len(ts) >= 2, group


def test_near_duplicates_differ_but_share_shingles(corpus):
    _, _, rows, trows, by_id = corpus
    sims = []
    for r, t in zip(rows, trows):
        if t["dup_type"] != "near":
            continue
        src = by_id[t["source_id"]]
        assert r["text"] != src["text"]
        a, b = _shingles(r["text"], r["lang"]), _shingles(src["text"], r["lang"])
        sims.append(len(a & b) / len(a | b))
    assert len(sims) == round(N * sample.NEAR_DUP_FRACTION)
    assert sum(s > 0.5 for s in sims) >= 0.8 * len(sims)


def test_no_unplanned_exact_duplicates(corpus):
    _, _, rows, trows, _ = corpus
    groups = collections.defaultdict(set)
    for r, t in zip(rows, trows):
        if r["text"]:
            groups[r["text"]].add(t["dup_group"])
    for text, g in groups.items():
        assert None not in g or len(g) == 1, text[:80]


# --- content of each kind ------------------------------------------------------------------

def test_prose_passes_gopher_style_quality(corpus):
    _, _, rows, trows, _ = corpus
    prose = _originals(rows, trows, "prose")
    assert len(prose) > 500
    for r in prose[:400]:
        text = r["text"]
        words = text.split()
        assert len(words) >= 50
        assert 3 <= sum(map(len, words)) / len(words) <= 10
        assert sum(w.lower().strip(".,") in STOP_WORDS for w in words) >= 2
        assert _dup_ngram_char_fraction(words, 5) <= 0.15, text[:200]
        assert not _is_repetitive(text)
        paras = text.split("\n\n")
        body = [p for p in paras if p.endswith(".")]
        assert 3 <= len(body) <= 15 and len(paras) - len(body) <= 1


def test_prose_sentences_have_reasonable_length(corpus):
    _, _, rows, trows, _ = corpus
    lengths = []
    for r in _originals(rows, trows, "prose")[:200]:
        for para in r["text"].split("\n\n"):
            if para.endswith("."):
                lengths += [len(s.split()) for s in re.split(r"(?<=[.!?]) ", para)]
    assert min(lengths) >= 5 and max(lengths) <= 40
    assert sum(8 <= n <= 30 for n in lengths) >= 0.95 * len(lengths)


def test_topics_are_varied(corpus):
    assert len(sample.TOPICS) >= 20
    _, _, rows, _, _ = corpus
    prose = [r["text"] for r in rows if r["kind"] == "prose"]
    hits = collections.Counter()
    for topic in sample.TOPICS:
        experts = topic.experts
        hits[topic.name] = sum(experts in t for t in prose)
    assert sum(v > 0 for v in hits.values()) >= 20


def test_spam_is_repetitive(corpus):
    _, _, rows, trows, _ = corpus
    spam = _originals(rows, trows, "spam")
    assert spam
    assert sum(_is_repetitive(r["text"]) for r in spam) >= 0.9 * len(spam)


def test_web_pages_have_boilerplate_lines(corpus):
    _, _, rows, trows, _ = corpus
    web = _originals(rows, trows, "web")
    assert web
    boiler = re.compile(r"cookie|javascript|terms of use|privacy policy|all rights reserved|copyright|©", re.I)
    for r in web:
        lines = r["text"].split("\n")
        no_punct = [ln for ln in lines if ln and not ln.rstrip().endswith((".", "!", "?", '"'))]
        assert len(no_punct) >= 3
        assert any(len(ln.split()) > 40 and ln.endswith(".") for ln in lines)  # real prose inside
        assert boiler.search(r["text"])
    assert sum("cookie" in r["text"].lower() for r in web) >= 0.3 * len(web)


def test_code_and_math(corpus):
    _, _, rows, trows, _ = corpus
    code = _originals(rows, trows, "code")
    assert code and all(re.search(r"\bdef |\bfunction |=> |#include", r["text"]) for r in code)
    langs = collections.Counter("py" if "def " in r["text"] else "c" if "#include" in r["text"] else "js"
                                for r in code)
    assert set(langs) == {"py", "js", "c"}
    math = _originals(rows, trows, "math")
    assert math and all(r["text"].count("$") >= 4 and re.search(r"\d", r["text"]) for r in math)


def test_non_english(corpus):
    _, _, rows, trows, _ = corpus
    docs = _originals(rows, trows, "non_english")
    langs = collections.Counter(r["lang"] for r in docs)
    assert len(langs) >= 5 and "en" not in langs
    assert {"zh", "ja"} & set(langs)
    for r in docs:
        text = r["text"]
        if r["lang"] in ("zh", "ja"):
            assert text.count(" ") < 0.02 * len(text)
            assert sum(ord(ch) > 0x3000 for ch in text) > 0.5 * len(text)
        else:
            assert len(text.split()) >= 10
        if r["lang"] == "ru":
            assert re.search(r"[а-яА-Я]", text)
    assert all(r["lang"] == "en" for r in rows if r["kind"] not in ("non_english", "empty"))


def test_offensive_words_only_in_offensive_docs(corpus):
    _, _, rows, _, _ = corpus
    swear = re.compile(r"\b(" + "|".join(sample.SWEAR_WORDS) + r")\b", re.I)
    offensive = [r for r in rows if r["kind"] == "offensive"]
    assert offensive
    # near copies may lose the word to an edit, originals always have one
    assert sum(bool(swear.search(r["text"])) for r in offensive) >= 0.95 * len(offensive)
    for r in rows:
        if r["kind"] != "offensive" and r["text"]:
            assert not swear.search(r["text"]), r["id"]
    # otherwise normal prose
    assert all(len(r["text"].split()) >= 50 for r in offensive)


def test_small_corpora():
    for n in (0, 1, 5, 30, 120):
        docs, truth = sample.generate(n, seed=1)
        assert docs.num_rows == truth.num_rows == n
        assert len(set(docs.column("id").to_pylist())) == n


# --- writing ------------------------------------------------------------------------------

def test_write_sample(tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "shard-00007.parquet").write_bytes(b"stale")  # from an earlier, larger run
    res = sample.write_sample(str(out), n_docs=400, seed=2, n_shards=3, rows_per_row_group=50)
    assert res["docs"] == 400 and res["shards"] == 3
    assert [os.path.basename(p) for p in res["paths"]] == [f"shard-{i:05d}.parquet" for i in range(3)]
    assert res["truth"] == str(out / "_truth" / "truth.parquet")
    assert sorted(os.listdir(out)) == ["_truth", "shard-00000.parquet", "shard-00001.parquet",
                                       "shard-00002.parquet"]
    total = 0
    for p in res["paths"]:
        f = pq.ParquetFile(p)
        assert f.metadata.row_group(0).column(0).compression == "ZSTD"
        assert f.metadata.num_row_groups == -(-f.metadata.num_rows // 50)
        total += f.metadata.num_rows
    assert total == 400
    con = duckdb.connect()
    n, n_ids = con.execute(f"select count(*), count(distinct id) from read_parquet('{out}/*.parquet')").fetchone()
    assert n == n_ids == 400
    truth = pq.read_table(res["truth"])
    assert truth.num_rows == 400
    docs = pq.read_table(res["paths"])
    expected, _ = sample.generate(400, seed=2)
    assert docs.equals(expected)
    assert con.execute(
        f"select count(*) from read_parquet('{out}/*.parquet') d join read_parquet('{res['truth']}') t using (id)"
    ).fetchone()[0] == 400
