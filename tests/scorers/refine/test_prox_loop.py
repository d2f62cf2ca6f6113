"""ProX end to end on CPU: the rule teacher writes pairs from real documents with planted
noise lines, `thresher prox train --tiny` fits a refining model, and `thresher run` with
`prox_chunk` / `prox_doc` refines Parquet shards through Beam: refined text reaches the
kept output, rejected rows carry prox reasons, chunks are packed and numbered as the
reference does."""
from __future__ import annotations

import glob
import json
import random
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import corpus

pytest.importorskip("transformers")

from thresher.scorers.refine.stages import number_lines, pack_chunks  # noqa: E402
from thresher.scorers.refine.teacher import is_boilerplate, noisy_lines  # noqa: E402

NOISE = ["Home | About | Contact | Blog", "We use cookies to improve your experience. Accept all cookies",
         "Share this: Facebook Twitter", "Copyright 2021 Example Media. All rights reserved.",
         "Subscribe to our newsletter", "Click here to read more"]


def cli(*args, timeout=600):
    r = subprocess.run([sys.executable, "-m", "thresher", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("prox")
    t = pq.read_table(corpus("wiki_summaries.parquet"), columns=["id", "text", "lang"])
    t = t.filter(pc.equal(t["lang"], "en")).slice(0, 260)
    rng = random.Random(0)
    docs, planted = [], {}
    for did, text in zip(t["id"].to_pylist(), t["text"].to_pylist()):
        lines = [s.strip() + "." for s in text.split(". ") if s.strip()][:6]
        head, tail = rng.choice(NOISE), rng.choice(NOISE)
        docs.append({"id": str(did), "text": "\n".join([head, *lines, tail])})
        planted[str(did)] = (head, tail)
    for i in range(8):          # short documents: nothing is left once the noise goes
        docs.append({"id": f"short{i}", "text": f"{NOISE[i % len(NOISE)]}\nTiny note number {i}."})
    (root / "train").mkdir()
    (root / "test").mkdir()
    pq.write_table(pa.Table.from_pylist(docs[:200]), root / "train" / "a.parquet")
    pq.write_table(pa.Table.from_pylist(docs[200:]), root / "test" / "a.parquet")
    cli("prox", "teach", "--input", root / "train", "--output", root / "pairs", "--chunk-tokens", 300)
    cli("prox", "train", "--pairs", root / "pairs", "--output", root / "refiner", "--tiny", "--steps", 220,
        "--max-len", 512)
    return {"root": root, "planted": planted, "docs": {d["id"]: d["text"] for d in docs}}


def test_teacher_marks_boilerplate_and_repeats():
    for n in NOISE:
        assert is_boilerplate(n), n
    prose = ("Cookies are baked goods; this long sentence about cookie recipes and their history in Europe is "
             "prose, not a consent notice, and should never be removed by the teacher at all.")
    assert not is_boilerplate(prose) and not is_boilerplate("The capital of France is Paris.")
    text = "\n".join(["Home | About | Contact", "A real sentence about rivers and lakes.", "A real sentence about "
                      "rivers and lakes.", "Another line."])
    assert noisy_lines(text) == [0, 2]


def test_numbering_and_packing():
    lines = number_lines("\n".join(f"l{i}" for i in range(1203)))
    assert lines[0] == "[000]l0" and lines[999] == "[999]l999" and lines[1000] == "[1000]l1000"
    chunks = pack_chunks(lines, [10] * len(lines), 35)
    assert [len(c) for c in chunks[:2]] == [3, 3] and sum(len(c) for c in chunks) == len(lines)
    assert [i for c in chunks for i in c] == list(range(len(lines)))   # consecutive, in order
    assert pack_chunks(["a", "b"], [50, 5], 20) == [[0], [1]]          # an over-long line alone


def test_teach_pairs_and_card(loop):
    card = json.load(open(loop["root"] / "pairs" / "teach_card.json"))
    assert card["documents"] == 200 and card["calls"]["remove_lines"] >= 390
    t = pq.read_table(loop["root"] / "pairs" / "pairs.parquet")
    assert t["user"][0].as_py().startswith("[doc]\n[000]") and t["user"][0].as_py().endswith("\n[/doc]")


def test_chunk_stage_packs_with_the_models_tokenizer(loop):
    from thresher.scorers.refine.stages import ProxChunk
    st = ProxChunk(model=str(loop["root"] / "refiner"), device="cpu", chunk_tokens=40, max_new_tokens=8)
    text = "\n".join(f"This is line {i} of a longer document with words." for i in range(30))
    chunks = st.chunks(text)
    assert len(chunks) > 3
    nums = [int(x[1:x.index("]")]) for c in chunks for x in c.split("\n")[1:-1]]
    assert nums == list(range(30))                                    # global numbering across chunks
    tok = st._handle.task.lm.tokenizer
    for c in chunks:
        body = c.split("\n")[1:-1]
        assert sum(len(tok(x, add_special_tokens=False)["input_ids"]) + 1 for x in body) <= 40


def test_refined_text_reaches_kept_output_through_beam(loop, tmp_path):
    root = loop["root"]
    out = tmp_path / "out"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"input: {root / 'test'}\noutput: {out}\nstages:\n"
                   f"  - {{name: prox_chunk, model: {root / 'refiner'}, device: cpu, chunk_tokens: 300, "
                   f"max_new_tokens: 48, keep_raw: true}}\n  - {{name: length}}\n")
    cli("run", cfg, "--quiet")
    stats = json.load(open(out / "stats.json"))
    assert stats["reconciled"] and stats["input_rows"] == 68
    kept = pq.read_table(glob.glob(str(out / "kept" / "*.parquet")))
    first_removed = 0
    for did, text, raw, n_rm in zip(kept["id"].to_pylist(), kept["text"].to_pylist(), kept["raw_text"].to_pylist(),
                                    kept["prox_chunk_lines_removed"].to_pylist()):
        assert raw == loop["docs"][did]
        head, _ = loop["planted"][did]
        if n_rm and head not in text.split("\n"):
            first_removed += 1
        assert len(text) <= len(raw)
    assert first_removed >= 0.8 * kept.num_rows, first_removed
    # the length stage downstream saw the refined text
    assert (pc.utf8_length(kept["text"]).to_numpy(zero_copy_only=False) == kept["length_chars"].to_numpy()).all()
    rej = pq.read_table(glob.glob(str(out / "rejected" / "*.parquet")))
    reasons = set(rej["reason"].to_pylist())
    assert reasons <= {"prox_chunk.too_short", "prox_chunk.drop"} and "prox_chunk.too_short" in reasons
    assert all(i.startswith("short") for i in rej["id"].to_pylist())


def test_doc_stage_keeps_or_drops(loop, tmp_path):
    root = loop["root"]
    out = tmp_path / "out"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"input: {root / 'test'}\noutput: {out}\nstages:\n"
                   f"  - {{name: prox_doc, model: {root / 'refiner'}, device: cpu, max_new_tokens: 16}}\n")
    cli("run", cfg, "--quiet")
    stats = json.load(open(out / "stats.json"))
    assert stats["reconciled"]
    t = pq.read_table(glob.glob(str(out / "kept" / "*.parquet")) + glob.glob(str(out / "rejected" / "*.parquet")))
    assert "prox_doc_program" in t.column_names and "prox_doc_errors" in t.column_names
    # the chunk model writes remove_lines calls, never drop_doc(): every document is kept, unchanged
    assert stats["kept_rows"] == 68
    raw = loop["docs"]
    assert all(raw[i] == x for i, x in zip(t["id"].to_pylist(), t["text"].to_pylist()))


def test_teach_with_a_model_as_teacher(loop, tmp_path):
    root = loop["root"]
    cli("prox", "teach", "--input", root / "test", "--output", tmp_path / "pairs", "--teacher", root / "refiner",
        "--chunk-tokens", 300, "--limit", 6)
    t = pq.read_table(tmp_path / "pairs" / "pairs.parquet")
    assert t.num_rows >= 6 and set(t["level"].to_pylist()) == {"chunk"}
    # the trained model writes programs in the language (here: line removals)
    assert sum("remove_lines(" in p for p in t["program"].to_pylist()) >= 4
