"""Model stages inside `thresher run`: lm_loss and classifier next to language and
gopher_quality, one step or a step of their own with an accelerator hint."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from conftest import (  # noqa: E402
    bench,
    corpus,
    local_run,
)

from thresher.pipelines import api  # noqa: E402
from thresher.pipelines.transforms import CurateShards  # noqa: E402
from thresher.scorers.models import EncoderHead, save_encoder_head  # noqa: E402
from thresher.scorers.models import stages as MS  # noqa: E402

B = bench("model_scorers", "thresher_bench_model_scorers_s")

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
HINT = "type:nvidia-l4;count:1;install-nvidia-driver"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Real text (Wikipedia leads in several languages + web pages) in 3 shards, and two
    tiny models trained/built on it: a causal LM and an encoder with a 2-output head."""
    root = tmp_path_factory.mktemp("ms")
    wiki = pq.read_table(corpus("wiki_summaries.parquet"), columns=["id", "text"]).slice(0, 240)
    web = pq.read_table(corpus("web_sample.parquet"), columns=["id", "text"]).slice(0, 60)
    t = pa.concat_tables([pa.table({"id": x["id"].cast(pa.string()), "text": x["text"]}) for x in (wiki, web)])
    inp = root / "in"
    inp.mkdir()
    for i, (a, b) in enumerate([(0, 100), (100, 130), (130, 300)]):
        pq.write_table(t.slice(a, b - a), inp / f"s{i}.parquet", row_group_size=64)
    train = [s[:2000] for s in t["text"].to_pylist()]
    tok = B.train_bpe_tokenizer(train, vocab_size=400, max_length=256)
    lm = B.build_causal_lm(tok, "tiny", max_positions=256, num_key_value_heads=2, **TINY)
    lm.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    etok = B.train_wordpiece_tokenizer(train, vocab_size=400, max_length=64)
    enc = B.build_encoder(etok, "tiny", max_positions=64, **TINY)
    enc.save_pretrained(root / "enc")
    etok.save_pretrained(root / "enc")
    torch.manual_seed(0)
    save_encoder_head(str(root / "enc"), EncoderHead(32, 2), labels=["low", "high"])
    return {"input": str(inp), "lm": str(root / "lm"), "enc": str(root / "enc"), "rows": t.num_rows}


def config(data, out, hint=None):
    extra = {"accelerator": hint} if hint else {}
    return {"input": data["input"], "output": out, "stages": [
        {"name": "language"},
        {"name": "gopher_quality", "min_words": 20},
        {"name": "lm_loss", "model": data["lm"], "device": "cpu", "max_length": 128, **extra},
        {"name": "classifier", "model": data["enc"], "device": "cpu", "min_score": 0.5, **extra},
    ]}


def all_rows(out):
    parts = [pq.read_table(f) for f in sorted(glob.glob(os.path.join(out, "kept", "*.parquet")))
             + sorted(glob.glob(os.path.join(out, "rejected", "*.parquet")))]
    t = pa.concat_tables(parts, promote_options="permissive")
    return t.take(pc.sort_indices(t, [("id", "ascending")]))


def test_model_stages_run_with_the_others(data, tmp_path):
    out = str(tmp_path / "one")
    stats = local_run(config(data, out))
    assert stats["reconciled"] and stats["input_rows"] == data["rows"]
    t = all_rows(out)
    for col in ("language", "language_score", "gopher_quality_word_count", "lm_loss_sum", "lm_tokens",
                "lm_chars", "lm_bpc", "classifier_score"):
        assert col in t.column_names, col
    reason = t["reason"].to_pylist()
    before = [r is None or r.split(".")[0] in ("lm_loss", "classifier") for r in reason]
    bpc = t["lm_bpc"].to_numpy(zero_copy_only=False)
    score = t["classifier_score"].to_numpy(zero_copy_only=False)
    # every row that reached the model stages has their columns; the others have nulls
    assert all(np.isfinite(b) and b > 0 for b, seen in zip(bpc, before) if seen)
    assert all(np.isnan(b) for b, seen in zip(bpc, before) if not seen)
    assert sum(before) > 50
    low = [r == "classifier.low_score" for r in reason]
    assert all(s < 0.5 for s, lo in zip(score, low) if lo)
    assert all(s >= 0.5 for s, r in zip(score, reason) if r is None)
    # engine counters per stage: docs scored and padding
    eng = {s["id"]: s.get("engine") for s in stats["stages"]}
    assert eng["lm_loss"]["docs"] == sum(before)
    assert 0 <= eng["lm_loss"]["padding_waste"] < 1 and eng["classifier"]["docs"] > 0
    m = json.load(open(glob.glob(os.path.join(out, "_manifests", "*.json"))[0]))
    assert "lm_loss" in m["stage_stats"] and m["stage_docs_in"]["lm_loss"] <= m["rows_in"]


def test_accelerator_hint_gives_model_stages_their_own_step(data, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    local_run(config(data, one))
    stats = local_run(config(data, two, HINT))
    assert stats["reconciled"]
    a, b = all_rows(one), all_rows(two)
    assert a.equals(b), "the step split must not change any output"
    # the graph: the model stages form one ParDo with the accelerator hint, the others another
    p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    _ = p | CurateShards(api.plan(config(data, str(tmp_path / "g"), HINT)))
    proto = p.to_runner_api()
    hinted: dict[str, bool] = {}
    for tr in proto.components.transforms.values():
        parts = tr.unique_name.split("/")
        if len(parts) < 2 or not parts[1].startswith("Step") or tr.subtransforms:
            continue                          # leaf transforms of each step
        hints = dict(tr.resource_hints) if hasattr(tr, "resource_hints") else {}
        env = proto.components.environments.get(tr.environment_id)
        if env is not None:
            hints.update(dict(env.resource_hints))
        has = any(HINT.encode() in v for v in hints.values())
        hinted[parts[1]] = hinted.get(parts[1], False) or has
    assert hinted == {"Step0[language,gopher_quality]": False, "Step1[lm_loss,classifier]": True}, hinted


def test_model_loaded_once_per_worker(data, tmp_path):
    before = MS.BUILD_COUNT
    local_run(config(data, str(tmp_path / "a")))
    local_run(config(data, str(tmp_path / "b")))
    assert MS.BUILD_COUNT - before <= 2      # one load per model for this process, both runs
