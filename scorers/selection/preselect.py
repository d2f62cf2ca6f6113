"""PreSelect: predictive-strength labels, a fastText scorer, and character-budget selection.

Method (Shum et al., "Predictive Data Selection", arXiv 2503.00808), as the
authors' code does it:

1. per document, the normalised loss (bits per character) under N causal LMs;
2. predictive strength: over the model pairs whose downstream scores differ,
   the fraction where the stronger model (higher downstream score) has the
   strictly lower loss. Loss ties count as not concordant; pairs of models with
   equal downstream scores carry no order and are left out. A document missing
   any model's loss is skipped (and counted);
3. positives = documents of maximal strength (S = 1, every ordered pair
   concordant), negatives = as many of the lowest-strength documents (ascending;
   ties broken by a stable hash of the id);
4. a fastText classifier on ``__label__1`` / ``__label__0`` with the method's
   hyper-parameters (epoch 3, lr 0.1, wordNgrams 2, other fastText defaults),
   text preprocessed by replacing newlines with spaces only;
5. corpus scoring: ``preselect_score`` = P(``__label__1``); selection of the top
   fraction of the corpus by characters (default 10%), by documents, or above a
   fixed threshold — computed globally, never per shard.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.scorers.base import Column, Param, ParamError, one_of
from thresher.scorers.registry import register
from thresher.scorers.selection.select import ScoreThenSelect

PRESELECT_SCORE = "preselect_score"   # P(__label__1) from the PreSelect fastText classifier


@register
class PreSelect(ScoreThenSelect):
    """PreSelect scoring and selection. `preselect_score` = P(`__label__1`) from a fastText
    classifier (`model:`, the one `thresher preselect train` writes or any compatible `.bin`,
    including the published PreSelect classifier). Exactly one of `threshold`,
    `top_fraction_chars` (the method's default, 0.1 when none is given), `top_fraction_docs`
    or `top_k`. The selection is exact and global: the (score, characters, id) keys of the
    whole corpus are sorted by score, then by a stable id hash, and the cut is taken where the
    cumulative characters reach the fraction (tested within 1% on uneven shards).
    `_global/preselect.json` records the threshold and the selected fraction.

    `thresher preselect train CONFIG` (see `pipelines/commands/preselect.py` for the config):
    deterministic sample (smallest xxh64(seed, id), independent of the shard layout) → bits
    per character under each causal LM (`causal_lm_loss`) → predictive strength (fraction of
    model pairs with distinct downstream scores where the stronger model has the strictly
    lower loss; loss ties count nothing; documents missing a loss are skipped and counted) →
    positives of maximal strength, as many lowest-strength negatives → fastText (`epoch 3,
    lr 0.1, wordNgrams 2`, newlines replaced by spaces) → `classifier.bin`, `card.json`,
    `labels.parquet`. Degenerate data is refused before anything is written, in one line naming
    the counts and the option to change: fewer than `min_labels_per_class` (default 50)
    positives or negatives, one class empty, or a validation split (`validation_fraction`,
    default 0.1) with fewer than 5 documents of a class; the card records whether the validation
    accuracy beats chance.

    Each model's downstream score is a number in the config, or measured by the command:
    `score: {loss_on: target.parquet}` (optional `text_column`, default `text`, and `limit`, the
    first N rows) is −(total bits / total characters) of that model on that file, computed with
    the labels' own `causal_lm_loss` task and `scoring:` settings (character-weighted, not a
    mean of per-document ratios). Every model takes the same form and measured scores the same
    texts (a mix is refused before any model runs); `card.json` records each measured score
    under `score_measured`.
    """

    name = "preselect"
    cpu_ns_per_byte = 40  # native fastText inference, as language
    doc = ("PreSelect fastText score (P(__label__1)); keep a global top fraction by characters "
           "(default 10%), by documents, or above a threshold.")
    params = {
        "model": Param(str, doc="fastText .bin classifier with labels __label__1/__label__0"),
        **ScoreThenSelect.SELECTION_PARAMS,
        "label": Param(str, "1", "the positive label"),
        "engine": Param(str, "fasttext", "fastText inference: fasttext (the package; fastest for "
                                         "PreSelect's word-bigram classifier without character "
                                         "n-grams) or native (thresher's vectorised implementation, "
                                         "same scores)", one_of("native", "fasttext")),
    }
    columns = (Column(PRESELECT_SCORE, pa.float32(), "P(__label__1) of the PreSelect classifier"),)
    score_column = PRESELECT_SCORE
    reject_rule = "below_threshold"
    reasons = {"below_threshold": "outside the selection (below the threshold or the global cut)"}
    _loaded = ("_model",)

    @classmethod
    def check_params(cls, params: dict[str, Any], prefix: str) -> None:
        super().check_params(params, prefix)
        if params["threshold"] is not None and not 0.0 <= params["threshold"] <= 1.0:
            raise ParamError(prefix + "threshold", f"must be between 0 and 1, got {params['threshold']}")
        path = params["model"]
        if not os.path.isfile(path):
            raise ParamError(prefix + "model", f"fastText model {path!r} does not exist")

    def setup(self) -> None:
        from thresher.scorers.classifiers.fasttext_util import load_classifier
        if getattr(self, "_model", None) is None:
            self._model = load_classifier(self.config["model"], self.config["engine"])

    def score(self, text: pa.Array, batch: pa.Table = None) -> np.ndarray:
        from thresher.scorers.classifiers.fasttext_util import predict_label_prob
        self.setup()
        return predict_label_prob(self._model, text, self.config["label"])
