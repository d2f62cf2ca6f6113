"""The experiment configs shipped in benchmarks/effect/ stay valid (every key, stage and parameter
checked by ``thresher experiment``'s own config check, with their data paths pointed at small real
files), and the GPU config is the ~100M-parameter bf16 model its README describes."""
import glob
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import corpus

from thresher.pipelines.commands.experiment import check_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "effect", "*.yaml")))


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    rows = pq.read_table(corpus("wiki_summaries.parquet"), columns=["id", "text"]).slice(0, 50)
    p = tmp_path_factory.mktemp("effect") / "docs.parquet"
    pq.write_table(pa.table({"id": rows["id"], "text": rows["text"]}), p)
    return str(p)


def _remap(node, parquet):
    if isinstance(node, dict):
        return {k: _remap(v, parquet) for k, v in node.items()}
    if isinstance(node, list):
        return [_remap(v, parquet) for v in node]
    if isinstance(node, str) and node.startswith("bench-out/") and node.endswith(".parquet"):
        return parquet
    return node


def test_every_shipped_config_is_found():
    assert {os.path.basename(c) for c in CONFIGS} >= {"default.yaml", "models.yaml", "selection.yaml", "gpu.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_config_passes_the_check(path, parquet, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)                       # relative paths (prepare configs, the encoder) as users run it
    raw = yaml.safe_load(open(path))
    raw = {**_remap(raw, parquet), "output": str(tmp_path / "out")}
    cfg = check_config(raw)
    assert cfg["steps"] * cfg["model"]["batch_size"] * cfg["model"]["seq_len"] <= raw["token_budget"]


def test_gpu_config_is_a_100m_bf16_model(parquet, tmp_path):
    import torch

    from thresher.scorers.training.lm import new_causal_lm

    class Vocab:                                # what new_causal_lm reads of a tokenizer
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

        def __len__(self):
            return m["vocab_size"]

    raw = yaml.safe_load(open(os.path.join(ROOT, "benchmarks", "effect", "gpu.yaml")))
    cfg = check_config({**_remap(raw, parquet), "output": str(tmp_path / "out")})
    m = cfg["model"]
    assert (m["device"], m["precision"]) == ("cuda", "bf16")
    assert set(cfg["arms"]) >= {"random", "default", "preselect"}          # the three arms at least
    with torch.device("meta"):                  # the model the experiment builds, without allocating it
        lm = new_causal_lm(Vocab(), hidden=m["hidden"], layers=m["layers"], heads=m["heads"], context=m["context"])
    params = sum(p.numel() for p in lm.parameters())
    assert 90e6 < params < 115e6, params
    assert cfg["train_tokens"] == 1_597_440
