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


def _tiny_lm(tmp_path_factory, name: str, positions: int, seed: int) -> str:
    """A tiny random Llama with ``positions`` positions and its BPE tokenizer, saved."""
    B = bench("model_scorers", "thresher_bench_model_scorers_gen")
    rng = random.Random(seed)
    train = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(300)]
    tok = B.train_bpe_tokenizer(train, vocab_size=300, max_length=positions)
    lm = B.build_causal_lm(tok, "tiny", max_positions=positions, num_key_value_heads=2, hidden_size=32,
                           intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    d = tmp_path_factory.mktemp(name)
    lm.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return _tiny_lm(tmp_path_factory, "gen", 256, seed=0)


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


# ------------------------------------------------------------------ the context limit
MAXPOS = 64


@pytest.fixture(scope="module")
def short_lm_dir(tmp_path_factory):
    """A tiny random Llama with only 64 positions (the 2048-position refiners of ProX, scaled down)."""
    return _tiny_lm(tmp_path_factory, "gen64", MAXPOS, seed=2)


def _near_limit_docs(tok):
    """Documents of many token lengths: short ones, several within a few tokens of the 64
    positions, and some longer than the model (cut to the document budget)."""
    rng = random.Random(3)
    by_len: dict[int, str] = {}
    for _ in range(4000):
        d = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60)))
        by_len.setdefault(len(tok(d)["input_ids"]), d)
    want = [3, 10, 25, 40, 50, 58, 60, 61, 62, 63, 64, 70, 90]
    docs = [by_len[n] for n in want if n in by_len]
    assert sum(55 <= len(tok(d)["input_ids"]) <= 63 for d in docs) >= 3
    assert any(len(tok(d)["input_ids"]) > MAXPOS for d in docs)
    return docs


def _plain_to_the_limit(task, prompt_ids):
    """HF generate of one unpadded prompt, up to the model's last position."""
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = task.lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=MAXPOS - len(prompt_ids), do_sample=False,
                                     pad_token_id=task.pad_id)
    assert out.shape[1] <= MAXPOS
    return task.lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_generation_stops_at_the_context_limit(short_lm_dir):
    """max_new_tokens far past the room: no error; every prompt generates up to the model's
    last position (vLLM's behaviour), whatever the path and however the prompts are batched."""
    static = build_task("generate", short_lm_dir, device="cpu", max_new_tokens=500, template="none",
                        batching="static", max_tokens_per_batch=4096)
    assert static.lm.max_positions == MAXPOS
    overhead = len(static._prompt_ids([""])[0])
    assert static.max_length == MAXPOS - overhead - 1      # no room after max_new_tokens: one generated token
    tok = static.lm.tokenizer
    docs = _near_limit_docs(tok)
    prompts = [tok(d)["input_ids"][:static.max_length] for d in docs]
    assert static.ceiling(len(prompts[0])) == MAXPOS - len(prompts[0])
    assert static.ceiling(MAXPOS - 1) == 1
    plain = [_plain_to_the_limit(static, p) for p in prompts]
    together = static(docs)["generated"].to_pylist()
    assert together == plain
    assert static.stats.batches == 1                        # one engine batch, several ceilings in it
    alone = [static([d])["generated"][0].as_py() for d in docs]
    assert alone == plain
    small = build_task("generate", short_lm_dir, device="cpu", max_new_tokens=500, template="none",
                       batching="static", max_tokens_per_batch=200)
    assert small(docs)["generated"].to_pylist() == plain
    assert small.stats.batches > 1
    # continuous batching: a generate_batch call per ceiling (each costs seconds on CPU: few here)
    cont = build_task("generate", short_lm_dir, device="cpu", max_new_tokens=500, template="none",
                      batching="continuous")
    near = [i for i, p in enumerate(prompts) if len(p) >= MAXPOS - 2]
    assert len({static.ceiling(len(prompts[i])) for i in near}) == 2 and len(near) >= 3
    assert cont([docs[i] for i in near])["generated"].to_pylist() == [plain[i] for i in near]
    assert cont.stats.batches == 2


def test_one_call_per_batch_when_outputs_finish_before_the_limit(short_lm_dir):
    """The common case (a program far shorter than the room): one generate call for the whole
    batch, however many different ceilings its prompts have; only prompts still unfinished
    below their own ceiling are generated again."""
    free = build_task("generate", short_lm_dir, device="cpu", max_new_tokens=500, template="none",
                      batching="static", max_tokens_per_batch=4096)
    tok = free.lm.tokenizer
    docs = [d for d in _near_limit_docs(tok) if len(tok(d)["input_ids"]) <= MAXPOS - 8]
    outs = free(docs)["generated"].to_pylist()
    stops = sorted({o[:3] for o in outs if len(o) >= 3})            # every output stops within 3 characters
    assert stops
    early = build_task("generate", short_lm_dir, device="cpu", max_new_tokens=500, template="none",
                       batching="static", max_tokens_per_batch=4096, stop=stops)
    calls = []
    run = early._generate
    early._generate = lambda ps, c: calls.append((len(ps), c)) or run(ps, c)
    got = early(docs)["generated"].to_pylist()
    prompts = [tok(d)["input_ids"][:early.max_length] for d in docs]
    assert len({early.ceiling(len(p)) for p in prompts}) > 3        # many ceilings in the batch
    assert calls == [(len(docs), min(early.ceiling(len(p)) for p in prompts))]
    assert got == [early._cut(o) for o in outs]
    # without stop strings nothing finishes: the unfinished prompts are continued, and still
    # equal a single call with their own ceiling
    calls.clear()
    free._generate = lambda ps, c: calls.append((len(ps), c)) or run.__func__(free, ps, c)
    assert free(docs)["generated"].to_pylist() == outs
    assert len(calls) > 1 and calls[0][0] == len(docs)


def test_context_limit_budgets_and_refusal(short_lm_dir):
    # room after max_new_tokens: the document budget keeps it, and generation is never clamped
    roomy = build_task("generate", short_lm_dir, device="cpu", max_new_tokens=10, template="none")
    overhead = len(roomy._prompt_ids([""])[0])
    assert roomy.max_length == MAXPOS - overhead - 10
    # an explicit max_length is capped at one generated token
    capped = build_task("generate", short_lm_dir, device="cpu", max_new_tokens=10, template="none",
                        max_length=1000)
    assert capped.max_length == MAXPOS - overhead - 1
    assert build_task("generate", short_lm_dir, device="cpu", max_new_tokens=10, template="none",
                      max_length=20).max_length == 20
    # a template whose edges merge with the document ("a" + "alpha ..." tokenises longer than
    # the two apart): a prompt over the last position loses the excess from its document
    tok = roomy.lm.tokenizer
    docs = _near_limit_docs(tok)
    edge = build_task("generate", short_lm_dir, device="cpu", max_new_tokens=500, template="a{user}b")
    assert edge.max_length == MAXPOS - len(edge._prompt_ids([""])[0]) - 1

    def naive(d):       # the document cut to its budget, in the template
        return len(edge._prompt_ids([tok.decode(tok(d)["input_ids"][:edge.max_length])])[0])

    rng = random.Random(5)
    pool = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 60))) for _ in range(1000))
    docs = docs + [next(d for d in pool if naive(d) > MAXPOS - 1)]    # the budget alone is not enough
    calls = []
    run = edge._generate
    edge._generate = lambda ps, c: calls.append(([len(p) for p in ps], c)) or run(ps, c)
    got = edge(docs)["generated"].to_pylist()
    assert all(isinstance(g, str) for g in got)
    assert all(n + c <= MAXPOS and c >= 1 for lens, c in calls for n in lens)
    assert max(n for lens, _ in calls for n in lens) == MAXPOS - 1
    assert [edge([d])["generated"][0].as_py() for d in docs] == got
    # unknown positions: no clamp
    unknown = build_task("generate", short_lm_dir, device="cpu", max_new_tokens=500, template="none")
    unknown.max_positions = None
    assert unknown.ceiling(60) == 500
    # the template alone fills the positions: nothing can be generated
    with pytest.raises(ValueError, match="leaves no room for text"):
        build_task("generate", short_lm_dir, device="cpu", max_new_tokens=1, template="x " * MAXPOS + "{user}")


def test_prox_doc_default_runs_to_the_context_limit(lm_dir):
    """prox_doc's default max_new_tokens is the reference's 2,000, more than a small model's
    positions: the stage still runs (generation stops at the context limit)."""
    pa = pytest.importorskip("pyarrow")
    from thresher.scorers.refine.stages import ProxDoc
    assert ProxDoc.params["max_new_tokens"].default == 2000
    st = ProxDoc(model=lm_dir, device="cpu")
    assert st.config["max_new_tokens"] == 2000
    texts = ["alpha beta gamma river stone", "data model token " * 40, "light"]
    out = st.process(pa.array(texts), pa.table({"text": texts}))
    programs = out.columns["prox_doc_program"].to_pylist()
    assert len(programs) == 3 and all(isinstance(p, str) for p in programs)
    task = st._handle.task
    assert task.max_new_tokens == 2000 and task.max_length == task.lm.max_positions - \
        len(task._prompt_ids([""])[0]) - 1
