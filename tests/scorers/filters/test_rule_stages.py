"""Tests of the heuristic stages (scorers/heuristics.py) and their helpers (scorers/textops.py).

Every rule is checked on hand-made documents exactly at its threshold (kept) and just
past it (rejected with the rule's reason), with the other rules switched off where they
would interfere.
"""
from __future__ import annotations

import collections
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from thresher.schemas import columns as C
from thresher.scorers.base import ParamError
from thresher.scorers.filters import c4 as HC4
from thresher.scorers.filters import fineweb as HFW
from thresher.scorers.filters import gopher_quality as H
from thresher.scorers.filters import gopher_repetition as HR
from thresher.scorers.text import ops as T

STAGES = (H.GopherQuality, HR.GopherRepetition, HC4.C4, HFW.FineWeb)
from conftest import ROOT  # noqa: E402


def run(stage, texts, **columns):
    arr = pa.array(texts, pa.string())
    batch = pa.table({"text": arr, **{k: pa.array(v) for k, v in columns.items()}})
    out = stage.process(arr, batch)
    assert len(out.reasons) == len(texts)
    for name, col in out.columns.items():
        assert len(col) == len(texts), name
    return out


def reasons(stage, texts, **columns):
    return run(stage, texts, **columns).reasons.to_pylist()


def col(out, name):
    return out.columns[name].to_pylist()


def only(stage_cls, keep: str, **extra):
    """A stage with every threshold off except ``keep`` (and the explicit ``extra``)."""
    params = {}
    for k, p in stage_cls.params.items():
        if p.nullable and k != keep and k not in extra and (k.startswith(("max_", "min_"))):
            params[k] = None
    params.update(extra)
    return stage_cls(**params)


def words(k, word="word"):
    """k words that pass the Gopher quality rules: two stop words and ``word``s."""
    return " ".join(["the", "and"] + [word] * (k - 2))


def distinct_words(k, prefix="w"):
    return [f"{prefix}{i:03d}" for i in range(k)]


# ----------------------------------------------------------------------------------------
# word splitting
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("Hello, world!", ["Hello", ",", "world", "!"]),
    ("(don't) stop.", ["(", "do", "n't", ")", "stop", "."]),
    ("I'm sure it's John's.", ["I", "'m", "sure", "it", "'s", "John", "'s", "."]),
    ("The U.S. is big, e.g., Texas.", ["The", "U.S.", "is", "big", ",", "e.g.", ",", "Texas", "."]),
    ("a well-known 10km run", ["a", "well", "-", "known", "10", "km", "run"]),
    ("Wait... what?!", ["Wait", "...", "what", "?", "!"]),
    ("See https://example.com/a-b or mail x@y.org.", ["See", "https://example.com/a-b", "or", "mail",
                                                      "x@y.org", "."]),
    ("file.tar.gz and Debian.DE", ["file.tar.gz", "and", "Debian", ".", "DE"]),
    ("It costs $5 or +49 :)", ["It", "costs", "$", "5", "or", "+49", ":)"]),
    ("我们去公园。", ["我", "们", "去", "公", "园", "。"]),
    ("  ", []),
    ("", []),
])
def test_tokenize(text, expected):
    assert T.tokenize(pa.array([text])).words.to_pylist() == expected


def test_tokenize_offsets_and_large_string():
    texts = ["a b", "", "c, d", "   "]
    for typ in (pa.string(), pa.large_string()):
        w = T.tokenize(pa.array(texts, typ))
        assert w.words.to_pylist() == ["a", "b", "c", ",", "d"]
        assert w.offsets.tolist() == [0, 2, 2, 5, 5]
        assert w.parents.tolist() == [0, 0, 2, 2, 2]


@pytest.mark.parametrize("text", ["a\nb", "a\nb\n", "\n", "", "a\r\nb\rc\x0bd\x0ce\x1cf\u2028g\x85h", "x\n\ny\n\n"])
def test_split_lines_is_str_splitlines(text):
    assert T.split_lines(pa.array([text])).to_pylist() == [text.splitlines()]


@pytest.mark.parametrize("text,n", [
    ("One. Two! Three?", 3),
    ('He said "stop." Then he left.', 2),
    ("Dr. Smith e.g. arrived. Yes.", 2),  # abbreviations do not end sentences ...
    ("It is etc. Fine.", 2),              # ... but "etc." is not one of them
    ("Wait... what?", 1),                 # an ellipsis does not end a sentence
    ("Why?   ?", 2),                      # spaces beyond one count as a word (reference splitter)
    ("Why? ?", 1),
    ("", 0),
])
def test_sentence_counts(text, n):
    assert T.sentence_counts_text(pa.array([text])).tolist() == [n]


def test_repeats_matches_naive_with_hash_prefix_collisions():
    rng = np.random.default_rng(0)
    for _ in range(200):
        N = int(rng.integers(1, 200))
        # equal high bits, different low bits: exercises the exact re-sort path
        keys = (rng.integers(0, 3, N).astype(np.uint64) << np.uint64(40)) | rng.integers(0, 5, N).astype(np.uint64)
        r = T.repeats(keys)
        cnt = collections.Counter(keys.tolist())
        expect = [i for i, k in enumerate(keys.tolist()) if cnt[k] >= 2]
        assert r.pos.tolist() == expect
        seen = set()
        firsts = []
        for k in keys[expect].tolist():
            firsts.append(k not in seen)
            seen.add(k)
        assert r.first.tolist() == firsts
        assert r.size.tolist() == [cnt[k] for k in keys[expect].tolist()]
        assert r.n_groups == len(seen)


# ----------------------------------------------------------------------------------------
# gopher_quality
# ----------------------------------------------------------------------------------------

GQ = H.GopherQuality


def test_gq_word_count():
    out = run(GQ(), [words(50), words(49), words(49) + " . , !"])
    assert out.reasons.to_pylist() == [None, "gopher_quality.word_count", "gopher_quality.word_count"]
    assert col(out, "gopher_quality_word_count") == [50, 49, 49]  # punctuation is not a word
    assert reasons(GQ(max_words=60), [words(60), words(61)]) == [None, "gopher_quality.word_count"]
    assert reasons(GQ(min_words=None), [words(10)]) == [None]


def test_gq_mean_word_length():
    ok = " ".join(["the", "and"] + ["abc"] * 48)
    low = " ".join(["the", "and"] + ["abc"] * 47 + ["ab"])
    out = run(GQ(), [ok, low])
    assert out.reasons.to_pylist() == [None, "gopher_quality.mean_word_length"]
    assert col(out, "gopher_quality_mean_word_length") == [3.0, pytest.approx(2.98)]
    st = GQ(min_stop_words=None)
    hi_ok = " ".join(["abcdefghij"] * 50)
    hi = " ".join(["abcdefghij"] * 49 + ["abcdefghijk"])
    assert reasons(st, [hi_ok, hi]) == [None, "gopher_quality.mean_word_length"]


@pytest.mark.parametrize("symbol,rule", [("#", "hash_ratio"), ("...", "ellipsis_ratio"), ("…", "ellipsis_ratio")])
def test_gq_symbol_ratios(symbol, rule):
    ok = words(53) + (" " + symbol) * 6 + " end"    # 54 words + 6 symbols: 6 / 60 = 0.1
    bad = words(53) + (" " + symbol) * 7 + " end"   # 7 / 61
    out = run(GQ(), [ok, bad])
    assert out.reasons.to_pylist() == [None, f"gopher_quality.{rule}"]
    assert col(out, f"gopher_quality_{rule}")[0] == pytest.approx(0.1)


def test_gq_bullet_lines():
    line = "the and word word word word word"
    ok = "\n".join(["- " + line] * 5 + ["  • " + line] * 4 + [line])      # 9 / 10
    bad = "\n".join(["- " + line] * 19 + [line])                         # 19 / 20
    out = run(GQ(), [ok, bad])
    assert out.reasons.to_pylist() == [None, "gopher_quality.bullet_lines"]
    assert col(out, "gopher_quality_bullet_lines") == [pytest.approx(0.9), pytest.approx(0.95)]


def test_gq_ellipsis_lines():
    line = "the and word word word word word word"
    ok = "\n".join([line + "..."] * 2 + [line + " … "] + [line] * 7)     # 3 / 10
    bad = "\n".join([line + "..."] * 4 + [line] * 6)                    # 4 / 10
    out = run(GQ(), [ok, bad])
    assert out.reasons.to_pylist() == [None, "gopher_quality.ellipsis_lines"]
    assert col(out, "gopher_quality_ellipsis_lines") == [pytest.approx(0.3), pytest.approx(0.4)]


def test_gq_alpha_words():
    ok = words(80) + " 123" * 20     # 80 of 100 words have a letter
    bad = words(80) + " 123" * 21    # 80 of 101
    out = run(GQ(), [ok, bad])
    assert out.reasons.to_pylist() == [None, "gopher_quality.alpha_words"]
    assert col(out, "gopher_quality_alpha_words")[0] == pytest.approx(0.8)


def test_gq_stop_words():
    one = " ".join(["the"] * 10 + ["word"] * 50)            # one distinct stop word
    two = " ".join(["the", "of"] + ["word"] * 50)
    cased = " ".join(["The", "AND", "Of"] + ["word"] * 50)   # case-sensitive, as the reference
    out = run(GQ(), [one, two, cased])
    assert out.reasons.to_pylist() == ["gopher_quality.stop_words", None, "gopher_quality.stop_words"]
    assert col(out, "gopher_quality_stop_words") == [1, 2, 0]
    custom = GQ(stop_words=["foo", "bar"])
    assert reasons(custom, [" ".join(["foo", "bar"] + ["word"] * 50), two]) == [None, "gopher_quality.stop_words"]


def test_gq_reason_is_first_failing_rule_in_reference_order():
    doc = " ".join(["ab"] * 60)  # mean length 2 and no stop words
    assert reasons(GQ(), [doc]) == ["gopher_quality.mean_word_length"]
    assert reasons(GQ(min_mean_word_length=None), [doc]) == ["gopher_quality.stop_words"]


def test_gq_languages():
    german = " ".join(["der", "die", "und"] + ["Wort"] * 60)
    english = words(60)
    out = run(GQ(), [german, german, german, english, german],
              language=["de", "de-DE", "en", None, "ja"])
    # German stop words for German rows; English for "en" and for a null language; "ja" has no list
    assert out.reasons.to_pylist() == [None, None, "gopher_quality.stop_words", None, None]
    assert col(out, "gopher_quality_skipped") == [None, None, None, None, "stop_words"]
    # without a language column every row is English
    assert reasons(GQ(), [german]) == ["gopher_quality.stop_words"]
    assert reasons(GQ(language_column="lang"), [german], lang=["deu"]) == [None]


def test_gq_chinese_without_spaces_is_not_rejected_by_word_rules():
    zh = "我们今天去公园散步，然后回家吃饭。天气很好，大家都很高兴。" * 3
    out = run(GQ(), [zh])
    assert out.reasons.to_pylist() == [None]
    assert col(out, "gopher_quality_skipped") == ["mean_word_length,stop_words"]
    assert col(out, "gopher_quality_word_count")[0] == 75   # one word per Han character
    assert col(out, "gopher_quality_mean_word_length") == [None]  # no word to measure
    # too short still fails: word counting works for Chinese
    assert reasons(GQ(), ["我们去公园。"]) == ["gopher_quality.word_count"]


def test_gq_thai_skips_word_rules():
    th = "ภาษาไทยเป็นภาษาที่มีเอกลักษณ์ของตัวเอง ประเทศไทยมีประวัติศาสตร์ยาวนาน"
    out = run(GQ(), [th])
    assert out.reasons.to_pylist() == [None]
    assert col(out, "gopher_quality_skipped") == ["word_count,mean_word_length,hash_ratio,ellipsis_ratio,stop_words"]


def test_gq_empty_text():
    out = run(GQ(), ["", "  \n  "])
    assert out.reasons.to_pylist() == ["gopher_quality.word_count"] * 2
    assert col(out, "gopher_quality_word_count") == [0, 0]
    assert col(out, "gopher_quality_mean_word_length") == [None, None]
    assert col(out, "gopher_quality_hash_ratio") == [None, None]


# ----------------------------------------------------------------------------------------
# gopher_repetition
# ----------------------------------------------------------------------------------------

GR = HR.GopherRepetition


def test_gr_duplicate_paragraphs():
    paras = [f"paragraph number {i} here" for i in range(7)]
    ok = "\n\n".join(paras + paras[:3])             # 3 of 10 are repeats
    bad = "\n\n".join(paras[:6] + paras[:4])        # 4 of 10
    st = only(GR, "max_dup_para_frac")
    out = run(st, [ok, bad])
    assert out.reasons.to_pylist() == [None, "gopher_repetition.dup_para_frac"]
    assert col(out, "gopher_repetition_dup_para_frac") == [pytest.approx(0.3), pytest.approx(0.4)]


def test_gr_duplicate_paragraph_chars():
    a = "a" * 20
    ok = "\n\n".join([a, "b" * 56, a])     # 20 / (2*20 + 56 + 4) = 0.2
    bad = "\n\n".join([a, "b" * 55, a])    # 20 / 99
    st = only(GR, "max_dup_para_char_frac")
    out = run(st, [ok, bad])
    assert out.reasons.to_pylist() == [None, "gopher_repetition.dup_para_char_frac"]
    assert col(out, "gopher_repetition_dup_para_char_frac")[0] == pytest.approx(0.2)


def test_gr_duplicate_lines():
    lines = [f"line number {i}" for i in range(7)]
    st = only(GR, "max_dup_line_frac")
    out = run(st, ["\n".join(lines + lines[:3]), "\n".join(lines[:6] + lines[:4]) + "\n"])
    assert out.reasons.to_pylist() == [None, "gopher_repetition.dup_line_frac"]
    st = only(GR, "max_dup_line_char_frac")
    a = "a" * 20
    out = run(st, ["\n".join([a, "b" * 58, a]), "\n".join([a, "b" * 57, a])])
    assert out.reasons.to_pylist() == [None, "gopher_repetition.dup_line_char_frac"]
    assert col(out, "gopher_repetition_dup_line_char_frac")[0] == pytest.approx(0.2)


def _exact_length(prefix_words, total_len, suffix_words):
    """' '.join(prefix + distinct filler words + suffix), exactly total_len characters."""
    pre, suf = " ".join(prefix_words), " ".join(suffix_words)
    room = total_len - len(pre) - len(suf) - 2          # the filler, without outer spaces
    fill = []
    while len(" ".join(fill + ["f99", "z"])) < room:
        fill.append(f"f{len(fill):02d}")
    last = "z" * (room - len(" ".join(fill)) - (1 if fill else 0))
    assert last, "cannot hit the length"
    text = " ".join([pre] + fill + [last, suf])
    assert len(text) == total_len
    return text


def test_gr_top_ngram():
    st = only(GR, "max_top_2_gram")
    ok = _exact_length(["ab", "cd"], 50, ["ab", "cd"])    # "ab cd" twice: 2 * 5 / 50 = 0.2
    bad = _exact_length(["ab", "cd"], 49, ["ab", "cd"])
    out = run(st, [ok, bad])
    assert out.reasons.to_pylist() == [None, "gopher_repetition.top_2_gram"]
    assert col(out, "gopher_repetition_top_2_gram") == [pytest.approx(0.2), pytest.approx(10 / 49)]
    # as in the reference, with no repeat the first n-gram is the most frequent one
    out = run(GR(), ["aaa bbb ccc", "solo"])
    assert col(out, "gopher_repetition_top_2_gram") == [pytest.approx(7 / 11), None]
    assert out.reasons.to_pylist() == ["gopher_repetition.top_2_gram", None]


def test_gr_duplicated_ngrams():
    st = only(GR, "max_dup_5_gram")
    five = ["aaa", "bbb", "ccc", "ddd", "eee"]          # 15 characters without spaces
    ok = _exact_length(five, 100, five)                 # 15 / 100
    bad = _exact_length(five, 99, five)
    out = run(st, [ok, bad])
    assert out.reasons.to_pylist() == [None, "gopher_repetition.dup_5_gram"]
    assert col(out, "gopher_repetition_dup_5_gram")[0] == pytest.approx(0.15)


def test_gr_duplicated_ngrams_follow_the_reference_scan():
    # "b c d e g" first occurs inside the jump after the duplicate "a b c d e", so the
    # reference never registers it and its later copy is not a duplicate
    doc = "a b c d e a b c d e g x1 x2 x3 x4 x5 x6 x7 x8 x9 b c d e g"
    ng = T.NGrams(T.tokenize(pa.array([doc])))
    assert HR._dup_ngram_chars(ng, 5, 1).tolist() == [5.0]


def _ref_scan(ws, n):
    seen, rep, i = set(), 0, 0
    while i < len(ws) - n + 1:
        g = tuple(ws[i:i + n])
        if g in seen:
            rep += sum(map(len, ws[i:i + n]))
            i += n
        else:
            seen.add(g)
            i += 1
    return rep


def _ref_top(ws, n):
    grams = [" ".join(ws[i:i + n]) for i in range(len(ws) - n + 1)]
    if not grams:
        return float("nan")
    g, k = collections.Counter(grams).most_common(1)[0]
    return len(g) * k


def test_gr_ngram_rules_match_reference_semantics_on_random_documents():
    rng = np.random.default_rng(7)
    vocab = ["a", "b", "cc", "ddd", "e", "ff"]
    docs = []
    for t in range(600):
        length = int(rng.integers(0, 90))
        if t % 2:   # periodic with mutations: many overlapping repeats
            base = [vocab[x] for x in rng.integers(0, len(vocab), int(rng.integers(1, 9)))]
            ws = (base * 100)[:length]
            for _ in range(int(rng.integers(0, 4))):
                if ws:
                    ws[int(rng.integers(0, len(ws)))] = vocab[int(rng.integers(0, len(vocab)))]
        else:
            ws = [vocab[x] for x in rng.integers(0, int(rng.integers(1, 7)), length)]
        docs.append(ws)
    ng = T.NGrams(T.tokenize(pa.array([" ".join(ws) for ws in docs])))
    for n in (2, 3, 4):
        got = HR._top_ngram_share(ng, n, len(docs))
        want = np.array([_ref_top(ws, n) for ws in docs])
        assert np.array_equal(np.nan_to_num(got, nan=-1), np.nan_to_num(want, nan=-1))
    for n in range(5, 11):
        want = [_ref_scan(ws, n) for ws in docs]
        assert HR._dup_ngram_chars(ng, n, len(docs)).tolist() == want
        # documents that have not settled after one round are scanned exactly
        assert HR._dup_ngram_chars(ng, n, len(docs), max_rounds=1).tolist() == want


def test_gr_huge_documents_use_first_round(monkeypatch):
    monkeypatch.setattr(HR, "_EXACT_SCAN_LIMIT", 0)
    doc = "a b c d e a b c d e g x1 x2 x3 x4 x5 x6 x7 x8 x9 b c d e g"
    ng = T.NGrams(T.tokenize(pa.array([doc])))
    # every later copy counts: "a b c d e" (5) and "b c d e g" (5)
    assert HR._dup_ngram_chars(ng, 5, 1).tolist() == [10.0]


def test_gr_thai_skips_ngram_rules():
    th = "ภาษาไทย ภาษาไทย ภาษาไทย ภาษาไทย"
    out = run(GR(), [th])
    assert col(out, "gopher_repetition_skipped") == ["ngrams"]
    assert out.reasons.to_pylist() == [None]


def test_gr_empty_text():
    out = run(GR(), ["", " "])
    assert out.reasons.to_pylist() == [None, None]
    assert col(out, "gopher_repetition_dup_line_char_frac") == [None, 0.0]


# ----------------------------------------------------------------------------------------
# c4
# ----------------------------------------------------------------------------------------

GOOD = [f"Sentence number {w} is a fine sentence." for w in ("one", "two", "three", "four", "five")]


def test_c4_line_cleaning():
    lines = [
        "This is a good sentence. It has terminal punctuation.",
        "No terminal punctuation here",
        "Too short.",
        "Please enable JavaScript to view this site.",
        "",
        "This site uses cookies to improve things.",
        "  A fact with a citation[1] and [edit] markers[citation needed].  ",
        "Ends with an ellipsis...",
        "x" * 1001 + " is a very long word.",
        "Another fine sentence here! And one more? Yes indeed.",
    ]
    text = "\n".join(lines)
    out = run(HC4.C4(), [text])
    assert out.reasons.to_pylist() == [None]
    expected = "\n".join([
        "This is a good sentence. It has terminal punctuation.",
        "A fact with a citation and  markers.",
        "Another fine sentence here! And one more? Yes indeed.",
    ])
    assert out.text.to_pylist() == [expected]
    assert col(out, "c4_sentences") == [6]
    assert col(out, "c4_lines_removed") == [7]
    assert col(out, "c4_chars_removed") == [len(text) - len(expected)]
    assert col(out, "c4_lines_no_terminal_punct") == [3]   # incl. the empty line and "..."
    assert col(out, "c4_lines_too_few_words") == [1]
    assert col(out, "c4_lines_javascript") == [1]
    assert col(out, "c4_lines_policy") == [1]
    assert col(out, "c4_lines_long_word") == [1]


def test_c4_document_rules():
    docs = [
        "\n".join(GOOD + ["Lorem ipsum dolor sit amet."]),
        "\n".join(GOOD + ["The set {x} is empty here."]),
        "\n".join(GOOD + ["lorem ipsum without punctuation", "{ also without punctuation"]),
        "\n".join(GOOD[:2] + ["The set {x} is empty."] + GOOD[2:] + ["Lorem ipsum dolor sit amet."]),
        "\n".join(GOOD[:2] + ["Lorem ipsum dolor sit amet."] + GOOD[2:] + ["The set {x} is empty."]),
        "\n".join(GOOD),
        "\n".join(GOOD[:4]),
        "",
    ]
    out = run(HC4.C4(), docs)
    assert out.reasons.to_pylist() == [
        "c4.lorem_ipsum", "c4.curly_bracket", None, "c4.curly_bracket", "c4.lorem_ipsum", None,
        "c4.too_few_sentences", "c4.too_few_sentences"]
    assert col(out, "c4_sentences")[5:] == [5, 4, 0]
    # rejected documents keep their text; kept ones are cleaned
    assert out.text.to_pylist()[0] == docs[0]
    assert out.text.to_pylist()[2] == "\n".join(GOOD)
    assert reasons(HC4.C4(min_sentences=4), ["\n".join(GOOD[:4])]) == [None]
    assert reasons(HC4.C4(filter_curly_bracket=False, filter_lorem_ipsum=False), docs[:2]) == [None, None]


def test_c4_modes_and_original_text():
    text = "\n".join(GOOD + ["menu"])
    st = HC4.C4(mode="filter")
    out = run(st, [text])
    assert out.text is None and out.reasons.to_pylist() == [None]
    assert col(out, "c4_lines_removed") == [1]
    st = HC4.C4(keep_original=True)
    out = run(st, [text])
    assert out.columns[C.ORIGINAL_TEXT].to_pylist() == [text]
    assert out.text.to_pylist() == ["\n".join(GOOD)]
    assert C.ORIGINAL_TEXT in [f.name for f in st.fields()]
    assert C.ORIGINAL_TEXT not in [f.name for f in HC4.C4().fields()]


def test_c4_paragraph_rule():
    long = ["This line is long enough to count as a paragraph " + "word " * 30 + f"number {i}." for i in range(3)]
    assert all(len(x) >= 200 for x in long)
    st = HC4.C4(paragraph_filter=True, min_sentences=None)
    out = run(st, ["\n".join(long), "\n".join(long[:2] + ["A short one is here."])])
    assert out.reasons.to_pylist() == [None, "c4.paragraphs"]
    assert col(out, "c4_paragraphs") == [3, 2]


def test_c4_chinese_lines():
    zh = "\n".join(["今天天气很好。", "我们去公园散步。", "然后回家吃饭。", "大家都很高兴！", "明天再见吧？"])
    out = run(HC4.C4(), [zh])
    assert out.reasons.to_pylist() == [None]
    assert out.text.to_pylist() == [zh]


# ----------------------------------------------------------------------------------------
# fineweb
# ----------------------------------------------------------------------------------------

FW = HFW.FineWeb


def test_fw_line_punct_ratio():
    def doc(k):
        return "\n".join(f"line number {i} has several distinct words in it" + ("." if i < k else "")
                         for i in range(100))
    out = run(FW(), [doc(12), doc(11)])
    assert out.reasons.to_pylist() == [None, "fineweb.line_punct_ratio"]
    assert col(out, "fineweb_line_punct_ratio") == [pytest.approx(0.12), pytest.approx(0.11)]
    assert reasons(FW(line_punct_exclude_zero=True), [doc(0)]) == [None]
    assert reasons(FW(stop_chars=["!"]), [doc(12).replace(".", "!"), doc(12)]) == [None, "fineweb.line_punct_ratio"]


def test_fw_short_line_ratio():
    def doc(k):
        return "\n".join((f"Short line {i}." if i < k else f"This is a considerably longer line, number {i}.")
                         for i in range(100))
    out = run(FW(), [doc(67), doc(68)])
    assert out.reasons.to_pylist() == [None, "fineweb.short_line_ratio"]
    assert col(out, "fineweb_short_line_ratio")[0] == pytest.approx(0.67)


def test_fw_char_dup_ratio():
    dup = "Dup line!!"                               # 10 characters
    ys = [f"Unique line number {i:02d} with some more words in it." for i in range(20)]
    assert sum(map(len, ys)) == 980                  # 10 / (2 * 10 + 980) = 0.01
    ok = "\n".join([dup] + ys + [dup])
    bad = "\n".join([dup] + ys[:-1] + [ys[-1][:-1]] + [dup])
    out = run(FW(), [ok, bad])
    assert out.reasons.to_pylist() == [None, "fineweb.char_dup_ratio"]
    assert col(out, "fineweb_char_dup_ratio")[0] == pytest.approx(0.01)


def test_fw_newline_ratio():
    st = only(FW, "max_newline_ratio")
    out = run(st, ["a b c\nd e f\ng h i\nj", "a b c\nd e f\ng h i\nj\n"])
    assert out.reasons.to_pylist() == [None, "fineweb.newline_ratio"]
    assert col(out, "fineweb_newline_ratio") == [pytest.approx(0.3), pytest.approx(0.4)]


def test_fw_empty():
    out = run(FW(), ["   \n \n", ""])
    assert out.reasons.to_pylist() == ["fineweb.empty", "fineweb.empty"]


# ----------------------------------------------------------------------------------------
# parameters, schema
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,kwargs,key", [
    (GQ, {"min_word": 3}, "min_word"),
    (GQ, {"min_words": "50"}, "min_words"),
    (GQ, {"min_words": -1}, "min_words"),
    (GQ, {"min_words": 200, "max_words": 100}, "min_words"),
    (GQ, {"max_bullet_lines": 1.5}, "max_bullet_lines"),
    (GQ, {"stop_words": ["ok", ""]}, "stop_words"),
    (GR, {"max_top_2_gram": "x"}, "max_top_2_gram"),
    (HC4.C4, {"mode": "bogus"}, "mode"),
    (HC4.C4, {"keep_original": "yes"}, "keep_original"),
    (FW, {"stop_chars": []}, "stop_chars"),
    (FW, {"short_line_length": -1}, "short_line_length"),
])
def test_param_validation(cls, kwargs, key):
    with pytest.raises(ParamError) as e:
        cls(**kwargs)
    assert e.value.key == key


def test_unknown_param_suggests_name():
    with pytest.raises(ParamError, match="did you mean 'min_words'"):
        GQ(min_word=3)


@pytest.mark.parametrize("cls", STAGES)
def test_columns_match_registered_fields(cls):
    stage = cls()
    out = run(stage, ["Some text here. It is short.\nAnother line.", ""])
    fields = {f.name: f.type for f in stage.fields()}
    assert set(out.columns) == set(fields)
    for name, arr in out.columns.items():
        assert arr.type == fields[name], name
    assert set(out.reasons.to_pylist()) - {None} <= {f"{stage.name}.{r}" for r in stage.reason_rules()}
    empty = run(stage, [])
    assert set(empty.columns) == set(fields)


# ----------------------------------------------------------------------------------------
# a 50 MB document
# ----------------------------------------------------------------------------------------

BIG_SCRIPT = textwrap.dedent("""
    import resource, sys, time
    import numpy as np, pyarrow as pa
    from thresher.scorers.filters.c4 import C4
    from thresher.scorers.filters.fineweb import FineWeb
    from thresher.scorers.filters.gopher_quality import GopherQuality
    from thresher.scorers.filters.gopher_repetition import GopherRepetition
    STAGES = (GopherQuality, GopherRepetition, C4, FineWeb)
    # Zipf-distributed pseudo-words, sentences of ~15 words, paragraphs of 120 words,
    # 10% of the paragraphs repeated elsewhere in the document
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, k)) for k in rng.integers(2, 11, 30000)]
                     + ["the", "and", "of", "to", "a", "in"])
    words = vocab[(rng.zipf(1.2, size=8_500_000) - 1) % len(vocab)].astype(object)
    ends = np.flatnonzero(rng.random(len(words)) < 1 / 15)
    words[ends] = words[ends] + "."
    paras = [" ".join(words[i:i + 120]) for i in range(0, len(words), 120)]
    paras += [paras[int(d)] for d in rng.integers(0, len(paras), len(paras) // 10)]
    order = rng.permutation(len(paras))
    text = "\\n\\n".join(paras[i] for i in order)[:50_000_000]
    batch = pa.array([text, "A short document."], pa.large_string())
    del words, paras, text
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for cls in STAGES:
        t0 = time.perf_counter()
        out = cls().process(batch, None)
        assert len(out.reasons) == 2
        print(cls.name, time.perf_counter() - t0)
    print("memory", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
""")


def test_50mb_document_in_bounded_time_and_memory():
    res = subprocess.run([sys.executable, "-c", BIG_SCRIPT.format(root=ROOT)],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    got = dict(line.split() for line in res.stdout.strip().splitlines())
    for cls in STAGES:
        assert float(got[cls.name]) < 20, f"{cls.name} took {got[cls.name]} s on a 50 MB document"
    assert float(got["memory"]) < 2500, f"grew by {got['memory']} MB"
