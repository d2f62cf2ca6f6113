"""Model tasks through Beam: the table DoFn, RunInference handler, and ``thresher score``."""
from __future__ import annotations

import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import apache_beam as beam  # noqa: E402
from apache_beam.ml.inference.base import RunInference  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.testing.util import assert_that, equal_to  # noqa: E402
from conftest import bench  # noqa: E402

from thresher.pipelines import model_beam  # noqa: E402
from thresher.pipelines.commands.score import main as score_main  # noqa: E402
from thresher.pipelines.model_beam import (  # noqa: E402
    ModelTaskSpec,
    ScoreTables,
    TextTaskModelHandler,
)
from thresher.schemas import models as M  # noqa: E402
from thresher.scorers.models import EncoderHead, build_task, save_encoder_head  # noqa: E402

B = bench("model_scorers", "thresher_bench_model_scorers_b")


pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
WORDS = "alpha beta gamma delta river stone light paper music city train data model token".split()


def texts(n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def runner():
    return PipelineOptions(["--runner=FnApiRunner"])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    train = texts(300, 0)
    tok = B.train_bpe_tokenizer(train, vocab_size=300, max_length=256)
    lm = B.build_causal_lm(tok, "tiny", max_positions=256, num_key_value_heads=2, **TINY)
    lm.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    etok = B.train_wordpiece_tokenizer(train, vocab_size=300, max_length=64)
    enc = B.build_encoder(etok, "tiny", max_positions=64, **TINY)
    enc.save_pretrained(root / "enc")
    etok.save_pretrained(root / "enc")
    save_encoder_head(str(root / "enc"), EncoderHead(32, 2))
    return {"lm": str(root / "lm"), "enc": str(root / "enc")}


@pytest.fixture()
def shards(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    all_rows = []
    for s, n in enumerate([23, 0, 41]):
        t = texts(n, 10 + s)
        if n:
            t[3] = None
        ids = [f"s{s}-{i}" for i in range(n)]
        table = pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(t, pa.string()),
                          "n": pa.array(range(n), pa.int64())})
        pq.write_table(table, d / f"part-{s:03d}.parquet", row_group_size=10)
        all_rows.append(table)
    return d, all_rows


def test_score_cmd_causal_lm_loss(models, shards, tmp_path):
    d, tables = shards
    out = tmp_path / "out"
    rc = score_main(["causal_lm_loss", "--model", models["lm"], "--input", str(d), "--output", str(out),
                     "--max-length", "32", "--stride", "8", "--batch-rows", "16", "--runner", "FnApiRunner"])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["part-000.parquet", "part-001.parquet", "part-002.parquet"]
    task = build_task("causal_lm_loss", models["lm"], device="cpu", max_length=32, stride=8)
    for s, table in enumerate(tables):
        got = pq.read_table(out / f"part-{s:03d}.parquet")
        assert got.column_names == ["id", "text", "n", M.LM_LOSS_SUM, M.LM_TOKENS, M.LM_CHARS, M.LM_BPC]
        assert got.num_rows == table.num_rows
        assert got.select(["id", "text", "n"]).equals(table)
        if table.num_rows:
            exp = task(table.column("text"))
            np.testing.assert_allclose(got.column(M.LM_LOSS_SUM).to_numpy(zero_copy_only=False),
                                       exp[M.LM_LOSS_SUM].to_numpy(zero_copy_only=False), rtol=1e-5)
            assert got.column(M.LM_TOKENS).to_pylist() == exp[M.LM_TOKENS].to_pylist()
            assert got.column(M.LM_LOSS_SUM)[3].as_py() is None
    # rerun: existing outputs are skipped, nothing temporary is left behind
    before = os.path.getmtime(out / "part-000.parquet")
    assert score_main(["causal_lm_loss", "--model", models["lm"], "--input", str(d), "--output", str(out),
                       "--runner", "FnApiRunner"]) == 0
    assert os.path.getmtime(out / "part-000.parquet") == before
    assert not [n for n in os.listdir(out) if n.startswith(".")]


def test_score_cmd_encoder_glob_and_errors(models, shards, tmp_path, capsys):
    d, tables = shards
    out = tmp_path / "out"
    rc = score_main(["encoder_score", "--model", models["enc"], "--input", str(d / "part-00[02].parquet"),
                     "--output", str(out), "--column-prefix", "q_", "--device", "cpu"])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["part-000.parquet", "part-002.parquet"]
    got = pq.read_table(out / "part-002.parquet")
    assert got.column_names[-2:] == ["q_score_0", "q_score_1"]
    assert got.schema.field("q_score_0").type == pa.float32()
    assert '"docs": 62' in capsys.readouterr().out  # 22 + 40 non-null rows
    with pytest.raises(SystemExit):
        score_main(["encoder_score", "--model", models["enc"], "--input", str(d), "--output", str(out),
                    "--stride", "4"])
    with pytest.raises(SystemExit):
        score_main(["encoder_score", "--model", models["enc"], "--input", str(d), "--output", str(out),
                    "--text-column", "nope"])
    with pytest.raises(SystemExit):
        score_main(["generate", "--model", models["lm"], "--input", str(tmp_path / "missing"),
                    "--output", str(out)])


def test_score_tables_dofn_loads_once(models):
    spec = ModelTaskSpec.make("encoder_score", models["enc"], device="cpu", label=1)
    t = texts(30, 5)
    tables = [pa.table({"text": t[i:i + 5], "k": list(range(i, i + 5))}) for i in range(0, 30, 5)]
    exp = build_task("encoder_score", models["enc"], device="cpu", label=1)(t)["score"].to_pylist()
    before = model_beam.BUILD_COUNT
    with beam.Pipeline(options=runner()) as p:
        res = (p | beam.Create(tables) | ScoreTables(spec)
               | beam.FlatMap(lambda tb: zip(tb.column("k").to_pylist(), tb.column("score").to_pylist())))
        keyed = (p | "K" >> beam.Create([("a", tables[0])]) | "S2" >> ScoreTables(spec)
                 | beam.MapTuple(lambda k, tb: (k, tb.num_rows)))
        assert_that(res, equal_to(list(zip(range(30), [pytest.approx(x, abs=1e-6) for x in exp]))))
        assert_that(keyed, equal_to([("a", 5)]), label="keyed")
    assert model_beam.BUILD_COUNT - before == 1


def test_run_inference_handler(models):
    spec = ModelTaskSpec.make("generate", models["lm"], device="cpu", max_new_tokens=3, template="none")
    t = texts(7, 8)
    exp = build_task("generate", models["lm"], device="cpu", max_new_tokens=3, template="none")(t)
    exp = dict(zip(t, exp[M.GENERATED].to_pylist()))
    with beam.Pipeline(options=runner()) as p:
        res = (p | beam.Create(t) | RunInference(TextTaskModelHandler(spec, max_batch_size=4))
               | beam.Map(lambda r: (r.example, r.inference[M.GENERATED])))
        assert_that(res, equal_to(list(exp.items())))


def test_shard_progress_is_throttled_and_ends_with_the_last_batch():
    now = [100.0]
    p = model_beam.ShardProgress("part-000.parquet", 23_100, interval_s=2.0, clock=lambda: now[0])
    lines = []
    for rows in range(1000, 23_100, 1000):
        now[0] += 0.5                                 # a batch every 0.5 s: a line every 4 batches
        lines.append(p.update(rows))
    now[0] += 0.5
    lines.append(p.update(23_100))                    # the last batch always reports
    got = [ln for ln in lines if ln is not None]
    assert len(got) == 6 and lines[-1] is not None
    assert got[0] == "scored 4,000/23,100 rows of part-000.parquet · 2,000 docs/s · ETA 10s"
    assert got[-1] == "scored 23,100/23,100 rows of part-000.parquet · 1,925 docs/s · ETA 0s"   # 12 s in all
    assert model_beam._duration(22.4) == "22s" and model_beam._duration(185) == "3m05s"
    assert model_beam._duration(7322) == "2h02m"


def test_score_cmd_logs_progress_per_batch(models, shards, tmp_path, caplog, monkeypatch):
    # in process, with no throttle: one line per batch of --batch-rows, the footer's row count as total
    d, _ = shards
    monkeypatch.setattr(model_beam.ScoreShardDoFn, "progress_interval_s", 0.0)
    with caplog.at_level("INFO", logger="thresher.pipelines.model_beam"):
        assert score_main(["causal_lm_loss", "--model", models["lm"], "--input", str(d), "--output",
                           str(tmp_path / "out"), "--max-length", "32", "--stride", "8", "--batch-rows", "8",
                           "--device", "cpu"]) == 0
    lines = [r.getMessage() for r in caplog.records
             if r.name == "thresher.pipelines.model_beam" and r.getMessage().startswith("scored ")
             and " · " in r.getMessage()]
    done = [ln.split(" ")[1] for ln in lines if ln.split(" ")[4] == "part-002.parquet"]
    assert done == ["8/41", "16/41", "24/41", "32/41", "40/41", "41/41"], lines
    assert [ln.split(" ")[1] for ln in lines if ln.split(" ")[4] == "part-000.parquet"] == \
        ["8/23", "16/23", "23/23"]
    assert not [ln for ln in lines if "part-001" in ln]   # empty shard: no batch, no progress line
    assert all(" docs/s · ETA " in ln for ln in lines)


def test_score_cmd_subprocess_progress_and_no_apitools_warning(models, shards, tmp_path):
    # as a user runs it: a fresh interpreter, so Beam's import-time warning would show if not filtered
    import subprocess
    import sys
    d, _ = shards
    r = subprocess.run([sys.executable, "-m", "thresher", "score", "causal_lm_loss", "--model", models["lm"],
                        "--input", str(d), "--output", str(tmp_path / "out"), "--max-length", "32",
                        "--stride", "8", "--batch-rows", "8", "--device", "cpu"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "apitools not found" not in r.stderr and "apitools" not in r.stdout
    # tiny shards finish well inside the 2 s throttle: the last batch of each shard still reports
    assert "scored 23/23 rows of part-000.parquet · " in r.stderr, r.stderr[-3000:]
    assert "scored 41/41 rows of part-002.parquet · " in r.stderr
    assert " docs/s · ETA 0s" in r.stderr
    assert '"docs": 62' in r.stdout
