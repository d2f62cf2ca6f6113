"""PreSelect training pieces: predictive strength, balanced labels, the fastText line format, cards."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

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
    """Indices of positives (maximal strength) and as many lowest-strength negatives.

    Never refuses: with no document to label (every strength NaN) or a single
    strength value (no negative left) the arrays are empty and ``info`` says so;
    the training command decides whether the counts are enough to train on."""
    from thresher.scorers.text.hashing import stable_id_hash

    ok = ~np.isnan(strength)
    idx = np.flatnonzero(ok)
    if idx.size == 0:  # nothing to label: the training command reports the counts
        empty = np.zeros(0, np.int64)
        return empty, empty, {"positive_strength": None, "positives": 0, "negatives": 0,
                              "positives_available": 0, "negative_strength_max": None,
                              "note": "no document has a loss from every model"}
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


def accuracy_vs_chance(correct: int, n: int, majority_fraction: float = 0.5) -> float:
    """One-sided binomial p-value of ``correct`` right answers out of ``n`` when each answer
    is right with probability ``majority_fraction`` (what always answering the larger class
    scores): small = better than chance. 1.0 for ``n == 0``."""
    if n <= 0:
        return 1.0
    p = min(max(float(majority_fraction), 0.0), 1.0)
    if correct <= 0:
        return 1.0
    if p in (0.0, 1.0):
        return 0.0 if p == 0.0 else 1.0
    # log-space terms: exact enough, and no overflow for any validation size
    from math import exp, lgamma, log
    lp, lq = log(p), log(1.0 - p)
    terms = [lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1) + k * lp + (n - k) * lq
             for k in range(int(correct), n + 1)]
    m = max(terms)
    return float(min(1.0, exp(m) * sum(exp(t - m) for t in terms)))


def fasttext_line(text: str) -> str:
    return text.replace("\n", " ")


def write_card(path: str, card: dict[str, Any]) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(card, f, indent=2, sort_keys=True, default=float)
    os.replace(path + ".tmp", path)
