"""The shared pretrainer's mixed precision (``precision: bf16``): the same code a GPU run uses,
exercised on CPU autocast with real text."""
from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import corpus
from thresher.scorers.training.pretrain import TRAINER_FILE, Pretrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def texts():
    return pq.read_table(corpus("wiki_summaries.parquet")).slice(0, 300)["text"].to_pylist()


def _trainer(texts, precision):
    return Pretrainer.new(texts, vocab_size=512, hidden=32, layers=2, heads=2, context=128, seq_len=64,
                          batch_size=8, total_steps=30, warmup_steps=3, lr=3e-3, precision=precision)


def test_bf16_trains_in_bf16_keeps_fp32_state_and_round_trips(texts, tmp_path):
    fp32, bf16 = _trainer(texts, "fp32"), _trainer(texts, "bf16")
    before = bf16.eval_loss(texts[-40:])
    seen = []
    hook = bf16.model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    bf16.train(texts[:-40], 30)
    hook.remove()
    fp32.train(texts[:-40], 30)
    after, ref = bf16.eval_loss(texts[-40:]), fp32.eval_loss(texts[-40:])
    assert set(seen) == {torch.bfloat16}                       # the matmuls really ran in bf16
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert all(v.dtype == torch.float32 for s in bf16.opt.state.values() for v in s.values() if v.dim())
    assert math.isfinite(after) and after < before - 0.5       # it learns
    assert abs(after - ref) < 0.15 and after != ref            # close to fp32, not the same computation
    d = str(tmp_path / "ck")
    bf16.save(d)
    assert json.loads(open(f"{d}/{TRAINER_FILE}").read())["precision"] == "bf16"
    back = Pretrainer.load(d)
    assert back.precision == "bf16" and back.eval_loss(texts[-40:]) == pytest.approx(after, abs=1e-6)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        Pretrainer(torch.nn.Linear(2, 2), None, total_steps=1, precision="fp16")
