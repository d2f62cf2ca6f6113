"""The PreSelect proof benchmark (benchmarks/preselect_proof.py) runs end to end at its smallest settings."""
import json
import math

import pytest
from conftest import (
    bench,
    corpus,
)


def _bench():
    return bench("preselect_proof", "thresher_bench_preselect_proof")


def test_auc_rank_statistic():
    import numpy as np
    auc = _bench().auc
    assert auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0], bool)) == 1.0
    assert auc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([1, 1, 0, 0], bool)) == 0.0
    assert auc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([1, 0, 1, 0], bool)) == 0.5   # ties count half
    assert auc(np.array([0.3, 0.1, 0.2]), np.array([1, 0, 1], bool)) == 1.0
    assert math.isnan(auc(np.array([0.3, 0.1]), np.array([1, 1], bool)))


@pytest.mark.slow
def test_preselect_proof_quick(tmp_path):
    for name in ("wiki_summaries.parquet", "fortunes.parquet", "web_sample.parquet", "handbook.parquet",
                 "style_paragraphs.parquet"):
        corpus(name)
    lines = []
    report = _bench().main(["--quick", "--out", str(tmp_path)], log=lines.append)
    assert report == json.loads(json.dumps(report, default=float))   # JSON-serialisable as written
    on_disk = json.load(open(tmp_path / "preselect_proof.json"))
    assert set(on_disk) == {"machine", "args", "pool", "tokenizer_vocab", "scoring_lms", "preselect_train",
                            "scoring", "final", "seconds"}
    assert len(report["scoring_lms"]) >= 3
    assert len({m["target_dev_loss"] for m in report["scoring_lms"]}) >= 2
    auc = report["scoring"]["auc_wiki_vs_off_domain"]
    assert 0.0 <= auc <= 1.0
    assert 0.0 < report["scoring"]["selected_char_fraction"] <= 1.0
    lab = report["preselect_train"]["labels"]
    assert lab["positives"] == lab["negatives"] > 0
    final = report["final"]
    assert len(final["runs"]) == final["seeds"] >= 1
    for r in final["runs"]:
        for arm in ("preselect", "random"):
            assert math.isfinite(r[arm]["target_test_loss"]) and r[arm]["target_test_loss"] > 0
            assert r[arm]["train_tokens"] == r["preselect"]["train_tokens"]   # same token budget
    assert math.isfinite(final["random_minus_preselect"]["mean"])
    text = "\n".join(lines)
    assert "AUC of preselect_score" in text and "random 20%" in text
