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

import math
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from thresher.schemas import columns as C
from thresher.schemas.preselect import PRESELECT_SCORE
from thresher.scorers.base import GlobalStage, Param, ParamError, between, one_of
from thresher.scorers.selection.select import top_fraction


class PreSelect(GlobalStage):
    """Score with a PreSelect fastText classifier; keep the top of the corpus."""

    name = "preselect"
    doc = ("PreSelect fastText score (P(__label__1)); keep a global top fraction by characters "
           "(default 10%), by documents, or above a threshold.")
    params = {
        "model": Param(str, doc="fastText .bin classifier with labels __label__1/__label__0"),
        "threshold": Param(float, None, "keep score >= threshold", between(0.0, 1.0), nullable=True),
        "top_fraction_chars": Param(float, None, "keep the top fraction of characters", between(0.0, 1.0),
                                    nullable=True),
        "top_fraction_docs": Param(float, None, "keep the top fraction of documents", between(0.0, 1.0),
                                   nullable=True),
        "label": Param(str, "1", "the positive label"),
        "engine": Param(str, "fasttext", "fastText inference: fasttext (the package; fastest for "
                                         "PreSelect's word-bigram classifier without character "
                                         "n-grams) or native (thresher's vectorised implementation, "
                                         "same scores)", one_of("native", "fasttext")),
    }
    reasons = ("preselect.below_threshold",)

    @classmethod
    def check_params(cls, params: dict[str, Any], prefix: str) -> None:
        given = [k for k in ("threshold", "top_fraction_chars", "top_fraction_docs") if params.get(k) is not None]
        if len(given) > 1:
            raise ParamError(prefix + given[1], f"give only one of threshold, top_fraction_chars, "
                                                f"top_fraction_docs (got {', '.join(given)})")
        if not given:
            params["top_fraction_chars"] = 0.1  # the method's default: top 10% by characters
        path = params["model"]
        if not os.path.isfile(path):
            raise ParamError(prefix + "model", f"fastText model {path!r} does not exist")

    def setup(self) -> None:
        from thresher.scorers.classifiers.fasttext_util import load_classifier
        if getattr(self, "_model", None) is None:
            self._model = load_classifier(self.config["model"], self.config["engine"])

    def __getstate__(self):
        d = dict(self.__dict__)
        d.pop("_model", None)
        return d

    def score(self, text: pa.Array) -> np.ndarray:
        from thresher.scorers.classifiers.fasttext_util import predict_label_prob
        self.setup()
        return predict_label_prob(self._model, text, self.config["label"])

    def keys(self, text: pa.Array, batch: pa.Table, ids: pa.Array) -> pa.Table:
        return pa.table({PRESELECT_SCORE: pa.array(self.score(text), pa.float32()),
                         "_chars": pc.utf8_length(text).cast(pa.int64()), "_id": ids})

    def compute(self, keys: pa.Table) -> pa.Table:
        from thresher.scorers.text.hashing import stable_id_hash
        n = keys.num_rows
        scores = keys[PRESELECT_SCORE].to_numpy().astype(np.float64) if n else np.zeros(0)
        chars = keys["_chars"].to_numpy().astype(np.float64) if n else np.zeros(0)
        cfg = self.config
        if cfg["threshold"] is not None:
            mask = scores >= cfg["threshold"]
            thr = cfg["threshold"]
            mode = "threshold"
        else:
            tb = stable_id_hash(keys["_id"].combine_chunks()) if n else np.zeros(0, np.uint64)
            if cfg["top_fraction_docs"] is not None:
                mask, thr = top_fraction(scores, np.ones(n), tb, cfg["top_fraction_docs"])
                mode = "top_fraction_docs"
            else:
                mask, thr = top_fraction(scores, chars, tb, cfg["top_fraction_chars"])
                mode = "top_fraction_chars"
        total = float(chars.sum())
        self.compute_stats = {"mode": mode, "threshold": thr if math.isfinite(thr) else None,
                              "selected_docs": int(mask.sum()), "docs": n,
                              "selected_chars": int(chars[mask].sum()), "chars": int(total),
                              "selected_char_fraction": float(chars[mask].sum() / total) if total else 0.0}
        rej = np.flatnonzero(~mask)
        return pa.table({
            C.SHARD: keys[C.SHARD].take(pa.array(rej)).combine_chunks() if n else pa.array([], pa.int32()),
            C.ROW: keys[C.ROW].take(pa.array(rej)).combine_chunks() if n else pa.array([], pa.int64()),
            C.REASON: pa.array([self.reason("below_threshold")] * rej.size, pa.string()),
        })
