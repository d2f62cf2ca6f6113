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


@pytest.mark.parametrize("change, key", [
    ({"arms": {"random": "random", "x": "rand"}}, "arms.x"),
    ({"arms": {"x": {"stagez": []}}}, "arms.x"),
    ({"arms": {"x": {"stages": [{"name": "lenght"}]}}}, "arms.x.stages[0].name"),
    ({"pool": None}, "pool"),
    ({"token_budget": 100}, "token_budget"),
    ({"eval": {"bad": {"fraction": 0.1, "path": "x"}}}, "eval.bad"),
    ({"model": {**MODEL, "hiden": 3}}, "model.hiden"),
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
