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

import json
import math
import os
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import columns as C
from schemas.preselect import PRESELECT_SCORE
from scorers.base import GlobalStage, Param, ParamError, between, one_of

FASTTEXT_PARAMS = {"epoch": 3, "lr": 0.1, "wordNgrams": 2}


# --------------------------------------------------------------------------- strength
def predictive_strength(losses: np.ndarray, scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, int]:
    """Concordance of each document's loss ranking with the models' downstream ranking.

    ``losses``: (n_docs, n_models) normalised losses (NaN = missing).
    ``scores``: downstream score per model (higher = stronger).
    Returns (strength in [0, 1] (NaN for skipped docs), concordant pair counts
    (int, -1 for skipped), number of ordered model pairs).
    """
    losses = np.asarray(losses, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if losses.ndim != 2 or losses.shape[1] != s.size:
        raise ValueError(f"losses must be (n_docs, {s.size}) for {s.size} model scores, got {losses.shape}")
    if s.size < 2:
        raise ValueError("predictive strength needs at least two models")
    i, j = np.triu_indices(s.size, k=1)
    ordered = s[i] != s[j]
    i, j = i[ordered], j[ordered]
    if i.size == 0:
        raise ValueError("all models have the same downstream score: no ordering to agree with")
    strong = np.where(s[i] > s[j], i, j)
    weak = np.where(s[i] > s[j], j, i)
    conc = (losses[:, strong] < losses[:, weak]).sum(axis=1)
    missing = np.isnan(losses).any(axis=1)
    strength = conc / i.size
    strength = np.where(missing, np.nan, strength)
    return strength, np.where(missing, -1, conc), int(i.size)


def select_labels(strength: np.ndarray, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Indices of positives (maximal strength) and as many lowest-strength negatives."""
    from scorers.textops_basic import stable_id_hash

    ok = ~np.isnan(strength)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        raise ValueError("no document has a loss from every model")
    top = 1.0
    pos = idx[strength[idx] >= top - 1e-12]
    info: dict[str, Any] = {"positive_strength": top}
    if pos.size == 0:  # no perfectly concordant document: take the maximum observed
        top = float(strength[idx].max())
        pos = idx[strength[idx] >= top - 1e-12]
        info["positive_strength"] = top
        info["note"] = "no document had strength 1; positives are those of the maximum observed strength"
    rest = np.setdiff1d(idx, pos)
    h = stable_id_hash(pa.array(list(ids), pa.string()))
    order = rest[np.lexsort((h[rest], strength[rest]))]  # ascending strength, then id hash
    k = min(pos.size, order.size)
    pos_sorted = pos[np.argsort(h[pos], kind="stable")]
    pos_sel = pos_sorted[:k] if k < pos.size else pos_sorted
    neg = order[:k]
    info.update({"positives": int(pos_sel.size), "negatives": int(neg.size),
                 "positives_available": int(pos.size),
                 "negative_strength_max": float(strength[neg].max()) if neg.size else None})
    return pos_sel, neg, info


def fasttext_line(text: str) -> str:
    return text.replace("\n", " ")


# --------------------------------------------------------------------------- selection
def top_fraction(scores: np.ndarray, weights: np.ndarray, tiebreak: np.ndarray, fraction: float) -> tuple[np.ndarray, float]:
    """Boolean mask of the highest-scoring rows whose weight sum first reaches
    ``fraction`` of the total, and the score threshold (the lowest selected score).

    Order: score descending, then ``tiebreak`` ascending (a stable hash of the id),
    so the selection does not depend on input order.
    """
    n = scores.size
    mask = np.zeros(n, dtype=bool)
    if n == 0 or fraction <= 0:
        return mask, math.inf
    total = float(weights.sum())
    order = np.lexsort((tiebreak, -scores))
    if fraction >= 1:
        mask[:] = True
        return mask, float(scores.min())
    cum = np.cumsum(weights[order], dtype=np.float64)
    target = fraction * total
    k = int(np.searchsorted(cum, target, side="left")) + 1   # include the row that crosses
    k = min(max(k, 1), n)
    # choose between stopping before or after the crossing row: whichever is closer
    if k > 1 and abs(cum[k - 2] - target) < abs(cum[k - 1] - target):
        k -= 1
    mask[order[:k]] = True
    return mask, float(scores[order[k - 1]])


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
        from scorers.fasttext_util import load_classifier
        if getattr(self, "_model", None) is None:
            self._model = load_classifier(self.config["model"], self.config["engine"])

    def __getstate__(self):
        d = dict(self.__dict__)
        d.pop("_model", None)
        return d

    def score(self, text: pa.Array) -> np.ndarray:
        from scorers.fasttext_util import predict_label_prob
        self.setup()
        return predict_label_prob(self._model, text, self.config["label"])

    def keys(self, text: pa.Array, batch: pa.Table, ids: pa.Array) -> pa.Table:
        return pa.table({PRESELECT_SCORE: pa.array(self.score(text), pa.float32()),
                         "_chars": pc.utf8_length(text).cast(pa.int64()), "_id": ids})

    def compute(self, keys: pa.Table) -> pa.Table:
        from scorers.textops_basic import stable_id_hash
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


def write_card(path: str, card: dict[str, Any]) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(card, f, indent=2, sort_keys=True, default=float)
    os.replace(path + ".tmp", path)
