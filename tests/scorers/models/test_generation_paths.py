"""Greedy generation gives the same text through every path: plain `model.generate` one
prompt at a time, the engine's static length-bucketed batches, and continuous batching
(transformers' generate_batch with paged attention)."""
from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import bench  # noqa: E402

from thresher.scorers.models import build_task  # noqa: E402

WORDS = "alpha beta gamma delta river stone light paper music city train data model token".split()


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    B = bench("model_scorers", "thresher_bench_model_scorers_gen")
    rng = random.Random(0)
    train = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(300)]
    tok = B.train_bpe_tokenizer(train, vocab_size=300, max_length=256)
    lm = B.build_causal_lm(tok, "tiny", max_positions=256, num_key_value_heads=2, hidden_size=32,
                           intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    d = tmp_path_factory.mktemp("gen")
    lm.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def test_static_continuous_and_plain_generate_agree(lm_dir):
    rng = random.Random(1)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(24)]
    static = build_task("generate", lm_dir, device="cpu", max_new_tokens=12, template="none", batching="static",
                        max_tokens_per_batch=400)
    cont = build_task("generate", lm_dir, device="cpu", max_new_tokens=12, template="none", batching="continuous")
    a = static(docs)["generated"].to_pylist()
    b = cont(docs)["generated"].to_pylist()
    # plain HF generate, one prompt at a time (no padding at all)
    model, tok = static.lm.model, static.lm.tokenizer
    plain = []
    for d in docs:
        ids = tok(d, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                 do_sample=False, pad_token_id=static.pad_id)
        plain.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    assert a == plain
    assert b == plain
    assert static.stats.batches > 1 and cont.batching == "continuous"
    assert build_task("generate", lm_dir, device="cpu", template="none", max_new_tokens=12).batching == "static"
    with pytest.raises(ValueError, match="stop strings need batching: static"):
        build_task("generate", lm_dir, device="cpu", template="none", batching="continuous", stop=["x"],
                   max_new_tokens=12)
