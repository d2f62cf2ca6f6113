"""Runs a user can trust, through the CLI as a user runs it: one run per output directory,
mistakes caught before work in one line, errors during work in one line with a log,
Ctrl-C with a resumable result, live progress, CurateShards' bookkeeping."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, corpus

import thresher


def _plugin_copy(site) -> str:
    """The test plugin's source copied next to its install target (pip builds in the tree)."""
    import shutil
    dst = os.path.join(os.path.dirname(str(site)), os.path.basename(str(site)) + "-src")
    shutil.copytree(os.path.join(ROOT, "tests", "data", "plugin"), dst, dirs_exist_ok=True)
    return dst


def cli(*args, cwd=None, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "thresher", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def corpus_dir(tmp_path, name: str, source: str, n: int, shards: int = 2, offset: int = 0) -> str:
    t = pq.read_table(corpus(source), columns=["id", "text"]).slice(offset, n)
    t = pa.table({"id": t["id"].cast(pa.string()), "text": t["text"]})
    d = tmp_path / name
    d.mkdir()
    step = -(-n // shards)
    for i in range(shards):
        pq.write_table(t.slice(i * step, step), d / f"part-{i}.parquet")
    return str(d)


def config(tmp_path, name: str, inp: str, out, stages: str = "[{name: length, min_chars: 50}]", extra: str = ""):
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"input: {inp}\noutput: {out}\nstages: {stages}\n{extra}")
    return p


def digest(out: str) -> dict:
    return {os.path.relpath(f, out): hashlib.sha256(open(f, "rb").read()).hexdigest()
            for f in sorted(glob.glob(os.path.join(out, "kept", "*.parquet")) + glob.glob(os.path.join(out, "rejected", "*.parquet")))}


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), _plugin_copy(site)],
                   check=True, capture_output=True)
    return dict(os.environ, PYTHONPATH=str(site))


# -- an output directory belongs to one run ------------------------------------------------------
def test_second_corpus_into_the_same_directory_is_refused(tmp_path):
    a = corpus_dir(tmp_path, "a", "wiki_summaries.parquet", 300)
    b = corpus_dir(tmp_path, "b", "fortunes.parquet", 200)
    out = tmp_path / "out"
    assert cli("run", config(tmp_path, "a", a, out), "--quiet").returncode == 0
    r = cli("run", config(tmp_path, "b", b, out), "--quiet")
    assert r.returncode == 2 and len(lines(r.stderr)) == 1, r.stderr
    assert "holds the output of another run" in r.stderr and "shards" in r.stderr and "--overwrite" in r.stderr
    # the same with plain --input
    r = cli("run", config(tmp_path, "a2", a, out), "--quiet", "--input", b)
    assert r.returncode == 2 and len(lines(r.stderr)) == 1
    # --overwrite: the previous run's files are gone, the directory holds corpus b only
    r = cli("run", config(tmp_path, "b", b, out), "--quiet", "--overwrite")
    assert r.returncode == 0, r.stderr
    stats = json.load(open(out / "stats.json"))
    assert stats["input_rows"] == 200 == stats["kept_rows"] + stats["rejected_rows"] and stats["reconciled"]
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob(str(out / "kept" / "*.parquet")))
    rows += sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob(str(out / "rejected" / "*.parquet")))
    assert rows == 200
    # a changed config value is named
    r = cli("run", config(tmp_path, "b3", b, out, "[{name: length, min_chars: 60}]"), "--quiet")
    assert r.returncode == 2 and "stages[0].min_chars: 50 -> 60" in r.stderr


def test_a_run_that_failed_before_any_shard_does_not_claim_the_directory(tmp_path, plugin_env):
    src = corpus_dir(tmp_path, "in", "wiki_summaries.parquet", 200)
    boom = tmp_path / "boom"
    boom.mkdir()
    t = pq.read_table(os.path.join(src, "part-0.parquet"))
    pq.write_table(pa.table({"id": ["x1"], "text": ["BOOM goes the document"]}), boom / "part-0.parquet")
    pq.write_table(t, boom / "part-1.parquet")
    out = tmp_path / "out"
    r = cli("run", config(tmp_path, "bad", str(boom), out, "[{name: explode}]",
                          "pipeline_options: {direct_num_workers: 1}\n"), "--quiet", env=plugin_env)
    # an error during work: one line naming the stage, the shard and the rows; exit 1; the trace in a log
    assert r.returncode == 1, r.stderr
    err = lines(r.stderr)
    assert len(err) == 1 and "stage 'explode' failed on part-0.parquet rows 0-0" in err[0], r.stderr
    assert "ValueError: BOOM in row 0" in err[0]
    log = err[0].split("(full trace: ")[1].rstrip(")")
    assert os.path.isfile(log) and "Traceback" in open(log).read()
    # a fixed config is accepted in the same directory
    r = cli("run", config(tmp_path, "good", src, out), "--quiet", env=plugin_env)
    assert r.returncode == 0, r.stderr


def test_stray_files_are_reported_and_never_counted(tmp_path):
    src = corpus_dir(tmp_path, "in", "wiki_summaries.parquet", 300)
    out = tmp_path / "out"
    cfg = config(tmp_path, "c", src, out)
    assert cli("run", cfg, "--quiet").returncode == 0
    pq.write_table(pq.read_table(os.path.join(src, "part-0.parquet")), out / "kept" / "stray.parquet")
    os.remove(out / "_manifests" / "part-1.json")       # force a resumed run
    r = cli("run", cfg)
    assert r.returncode == 0, r.stderr
    stats = json.load(open(out / "stats.json"))
    assert stats["stray_files"] == ["kept/stray.parquet"] and stats["reconciled"]
    assert stats["kept_rows"] + stats["rejected_rows"] == 300
    assert "kept/stray.parquet" in r.stderr


# -- mistakes fail before work, in one line --------------------------------------------------------
@pytest.mark.parametrize("stages,extra,needle", [
    ("[{name: language, languages: [english, french]}]", "", "stages[0].languages: 'english' is not a label"),
    ("[{name: minhash_dedup, survivor: 'highest:qualityy'}]", "",
     "stages[0].survivor: column 'qualityy' is neither an input column"),
    ("[{name: length}]", "runner: DirectRuner\n", "unknown Beam runner 'DirectRuner' (did you mean 'DirectRunner'?)"),
])
def test_config_mistakes_fail_in_one_line_before_beam_starts(tmp_path, stages, extra, needle):
    src = corpus_dir(tmp_path, "in", "wiki_summaries.parquet", 50)
    out = tmp_path / "out"
    t0 = time.time()
    r = cli("run", config(tmp_path, "m", src, out, stages, extra), "--quiet")
    assert r.returncode == 2 and len(lines(r.stderr)) == 1, r.stderr
    assert r.stderr.startswith("thresher: error: ") and needle in r.stderr, r.stderr
    assert not (out / "_run.json").exists()        # nothing claimed, no work started
    assert time.time() - t0 < 60


@pytest.fixture(scope="module")
def bare_encoder(tmp_path_factory):
    pytest.importorskip("transformers")
    from conftest import bench
    B = bench("model_scorers", "thresher_bench_model_scorers_trust")
    d = tmp_path_factory.mktemp("bare")
    texts = ["alpha beta gamma delta", "river stone light paper"] * 50
    tok = B.train_wordpiece_tokenizer(texts, vocab_size=100, max_length=32)
    enc = B.build_encoder(tok, "tiny", max_positions=32, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=1, num_attention_heads=4)
    enc.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def test_model_mistakes_fail_in_one_line(tmp_path, bare_encoder):
    src = corpus_dir(tmp_path, "in", "wiki_summaries.parquet", 20, shards=1)
    r = cli("score", "encoder_score", "--model", bare_encoder, "--input", src, "--output", tmp_path / "o")
    assert r.returncode == 2 and len(lines(r.stderr)) == 1, r.stderr
    assert "a bare encoder needs a head" in r.stderr and "save_encoder_head" in r.stderr
    r = cli("run", config(tmp_path, "c", src, tmp_path / "o2", f"[{{name: classifier, model: {bare_encoder}}}]"),
            "--quiet")
    assert r.returncode == 2 and len(lines(r.stderr)) == 1 and "stages[0].model:" in r.stderr, r.stderr
    import torch
    if not torch.cuda.is_available():
        r = cli("score", "causal_lm_loss", "--model", bare_encoder, "--input", src, "--output", tmp_path / "o3",
                "--device", "cuda")
        assert r.returncode == 2 and len(lines(r.stderr)) == 1, r.stderr
        assert "--device: 'cuda' requested but CUDA is not available" in r.stderr


def test_missing_models_extra_is_named(tmp_path):
    """Without torch (simulated by a package that fails to import), a model stage names the extra."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('No module named torch', name='torch')\n")
    src = corpus_dir(tmp_path, "in", "wiki_summaries.parquet", 20, shards=1)
    env = dict(os.environ, PYTHONPATH=str(fake))
    r = cli("run", config(tmp_path, "c", src, tmp_path / "o", "[{name: lm_loss, model: /nowhere}]"), "--quiet", env=env)
    assert r.returncode == 2 and len(lines(r.stderr)) == 1, r.stderr
    assert "pip install 'thresher[models]'" in r.stderr


# -- Ctrl-C ----------------------------------------------------------------------------------------
def test_sigint_during_a_two_worker_run_then_resume_is_identical(tmp_path):
    src = corpus_dir(tmp_path, "in", "wiki_summaries.parquet", 24000, shards=24)
    stages = "[{name: language}, {name: gopher_repetition}, {name: gopher_quality}]"
    extra = "pipeline_options: {direct_num_workers: 2, direct_running_mode: multi_processing}\n"
    out = tmp_path / "out"
    cfg = config(tmp_path, "c", src, out, stages, extra)
    p = subprocess.Popen([sys.executable, "-m", "thresher", "run", str(cfg), "--quiet"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(glob.glob(str(out / "_manifests" / "*.json"))) < 2:
        time.sleep(0.2)
    assert p.poll() is None, "the run finished before it could be interrupted"
    os.killpg(p.pid, signal.SIGINT)           # Ctrl-C: the whole foreground process group
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    err_lines = lines(err)
    assert len(err_lines) <= 2, err            # no tracebacks
    assert "thresher: interrupted:" in err and "of 24 shards complete; rerun the same command to resume" in err
    r = cli("run", cfg, "--quiet")
    assert r.returncode == 0, r.stderr
    clean = tmp_path / "clean"
    assert cli("run", config(tmp_path, "clean", src, clean, stages, extra), "--quiet").returncode == 0
    assert digest(str(out)) == digest(str(clean))


# -- progress ----------------------------------------------------------------------------------------
def test_progress_during_a_global_stage(tmp_path):
    src = corpus_dir(tmp_path, "in", "wiki_summaries.parquet", 12000, shards=12)
    out = tmp_path / "out"
    r = cli("run", config(tmp_path, "c", src, out, "[{name: exact_dedup}, {name: gopher_quality}]",
                          "pipeline_options: {direct_num_workers: 1}\n"))
    assert r.returncode == 0, r.stderr
    prog = [ln for ln in r.stderr.splitlines() if ln.startswith("[thresher]")]
    phases = [ln.split(":")[0] for ln in prog]
    assert any("local stages and keys" in ph for ph in phases), r.stderr
    assert any("applying decisions and writing" in ph for ph in phases), r.stderr
    keyed = [ln for ln in prog if "local stages and keys" in ln]
    assert any(" 0/12,000 docs" not in ln for ln in keyed) and all("docs/s" in ln for ln in keyed)


# -- CurateShards in a user's own pipeline --------------------------------------------------------------
def test_curate_shards_in_a_users_pipeline_does_the_bookkeeping(tmp_path):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    src = corpus_dir(tmp_path, "in", "wiki_summaries.parquet", 400)
    out = str(tmp_path / "out")
    p = thresher.plan({"input": src, "output": out, "stages": [{"name": "exact_dedup"}, {"name": "length"}]})
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as bp:
        _ = bp | thresher.CurateShards(p)
    stats = json.load(open(os.path.join(out, "stats.json")))
    assert stats["reconciled"] and stats["input_rows"] == 400
    assert not glob.glob(os.path.join(out, "_work", "*.rows.parquet"))     # work rows cleaned up
    # and the directory check: another corpus into the same directory is refused before work
    other = corpus_dir(tmp_path, "other", "fortunes.parquet", 100)
    with pytest.raises(thresher.ConfigError, match="holds the output of another run"):
        with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as bp:
            _ = bp | thresher.CurateShards(thresher.plan({"input": other, "output": out, "stages": [{"name": "length"}]}))


def test_model_directory_without_tokenizer_is_named(tmp_path, bare_encoder):
    import shutil
    d = tmp_path / "no_tok"
    shutil.copytree(bare_encoder, d)
    from thresher.scorers.models import EncoderHead, save_encoder_head
    save_encoder_head(str(d), EncoderHead(32, 1))
    for f in os.listdir(d):
        if f.startswith(("tokenizer", "vocab", "special_tokens")):
            os.remove(d / f)
    src = corpus_dir(tmp_path, "in", "wiki_summaries.parquet", 20, shards=1)
    r = cli("run", config(tmp_path, "c", src, tmp_path / "o", f"[{{name: classifier, model: {d}}}]"), "--quiet")
    assert r.returncode == 2 and len(lines(r.stderr)) == 1 and "no tokenizer files" in r.stderr, r.stderr


def test_progress_bar_on_a_terminal(tmp_path):
    """On a terminal the progress is a tqdm bar per phase (here: a fake terminal stream)."""
    import io as _io

    from thresher.pipelines.api import Progress
    src = corpus_dir(tmp_path, "in", "wiki_summaries.parquet", 300, shards=3)
    out = tmp_path / "out"
    p = thresher.plan({"input": src, "output": str(out), "stages": [{"name": "exact_dedup"}]})
    from conftest import local_run
    local_run({"input": src, "output": str(out), "stages": [{"name": "exact_dedup"}]})
    stream = _io.StringIO()
    prog = Progress(p, stream=stream, tty=True)
    prog._print()
    prog._print(final=True)
    if prog._bar is not None:
        prog._bar.close()
    text = stream.getvalue()
    assert "thresher applying decisions and writing" in text and "300/300" in text and "docs" in text
