"""Global selection over scores (framework-free)."""
from __future__ import annotations

import math

import numpy as np


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
