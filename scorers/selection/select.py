"""Global selection over scores (framework-free): :class:`ScoreThenSelect`.

A score-then-select stage scores every document where its shard is read (``score``, in
``keys``) and keeps a global selection decided on the small (score, characters, id-hash)
key table:

* ``threshold``: keep documents scoring at least (or, when lower is better, at most) it;
* ``top_fraction_chars``: the best documents until their characters first reach the
  fraction of all characters (the row that crosses is kept when that lands closer);
* ``top_fraction_docs``: the best fraction of documents (rounded to the nearest count);
* ``top_k``: the best k documents.

Order: score (best first), then ``stable_id_hash(id)``, then nothing else, so the selection
does not depend on shard order, batch sizes or worker count. With ``gumbel_temperature``
set the fraction/k selections rank ``score / temperature + G`` instead, with ``G`` a
Gumbel(0, 1) draw that is a pure function of (``seed``, id), i.e. Gumbel-top-k sampling
without replacement (MATES samples this way with temperature 0.5; for lower-is-better
scores the k smallest perturbed values are taken, as the authors do).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.schemas import columns as C
from thresher.scorers.base import Decisions, GlobalStage, Param, ParamError, between
from thresher.scorers.text.hashing import stable_id_hash

MODES = ("threshold", "top_fraction_chars", "top_fraction_docs", "top_k")


def top_fraction(scores: np.ndarray, weights: np.ndarray, tiebreak: np.ndarray,
                 fraction: float) -> tuple[np.ndarray, float]:
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


def top_k(scores: np.ndarray, tiebreak: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Mask of the ``k`` highest scores (ties by ``tiebreak`` ascending) and the lowest kept score."""
    n = scores.size
    mask = np.zeros(n, dtype=bool)
    k = min(max(int(k), 0), n)
    if k == 0:
        return mask, math.inf
    order = np.lexsort((tiebreak, -scores))
    mask[order[:k]] = True
    return mask, float(scores[order[k - 1]])


def gumbel_noise(id_hash: np.ndarray, seed: int) -> np.ndarray:
    """Gumbel(0, 1) draws, one per id hash, a pure function of (seed, id): splitmix64 of
    ``id_hash ^ f(seed)`` -> a uniform in (0, 1) from its top 53 bits -> ``-log(-log u)``."""
    with np.errstate(over="ignore"):
        x = id_hash.astype(np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % (1 << 64))
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    u = ((x >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    return -np.log(-np.log(u))


class ScoreThenSelect(GlobalStage):
    """Base of the stages that score each document, then keep an exact global selection.

    Subclasses set ``score_column`` (a declared column), ``higher_is_better`` and
    implement ``score(text, batch) -> float ndarray``; the selection parameters below
    come with the base. ``default_mode`` applies when the config gives none."""

    score_column: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    default_mode: ClassVar[tuple[str, Any]] = ("top_fraction_chars", 0.1)
    #: the reason rule of documents outside the selection
    reject_rule: ClassVar[str] = "not_selected"

    SELECTION_PARAMS: ClassVar[dict[str, Param]] = {
        "threshold": Param(float, None, "keep documents whose score is at least this (at most, when lower "
                                        "is better)", nullable=True),
        "top_fraction_chars": Param(float, None, "keep the best documents holding this fraction of all "
                                                 "characters", between(0.0, 1.0), nullable=True),
        "top_fraction_docs": Param(float, None, "keep this fraction of the documents, best first",
                                   between(0.0, 1.0), nullable=True),
        "top_k": Param(int, None, "keep the k best documents", between(0), nullable=True),
        "gumbel_temperature": Param(float, None, "Gumbel-top-k sampling: rank score/temperature + Gumbel "
                                                 "noise (seeded per id) instead of the score; null = off",
                                    between(1e-9), nullable=True),
        "seed": Param(int, 0, "seed of the Gumbel noise", between(0, (1 << 63) - 1)),
    }

    @classmethod
    def check_params(cls, params: dict[str, Any], prefix: str) -> None:
        given = [k for k in MODES if params.get(k) is not None]
        if len(given) > 1:
            raise ParamError(prefix + given[1], f"give only one of {', '.join(MODES)} (got {', '.join(given)})")
        if not given:
            mode, value = cls.default_mode
            params[mode] = value
        elif params.get("gumbel_temperature") is not None and given[0] == "threshold":
            raise ParamError(prefix + "gumbel_temperature", "Gumbel sampling needs top_fraction_chars, "
                                                            "top_fraction_docs or top_k, not threshold")

    @property
    def mode(self) -> str:
        return next(k for k in MODES if self.config.get(k) is not None)

    def score(self, text: pa.Array, batch: pa.Table) -> np.ndarray:
        raise NotImplementedError

    def keys(self, text: pa.Array, batch: pa.Table, ids: pa.Array) -> pa.Table:
        return pa.table({self.score_column: pa.array(np.asarray(self.score(text, batch), np.float32), pa.float32()),
                         "_chars": pc.utf8_length(text).cast(pa.int64()), "_id": ids})

    def select(self, scores: np.ndarray, chars: np.ndarray, id_hash: np.ndarray) -> tuple[np.ndarray, Optional[float]]:
        """Mask of the selected rows and the cut (lowest kept score, or highest when lower
        is better; for Gumbel sampling the cut on the perturbed ranking value)."""
        cfg = self.config
        n = scores.size
        if self.mode == "threshold":
            t = cfg["threshold"]
            return ((scores >= t) if self.higher_is_better else (scores <= t)), t
        rank = scores.astype(np.float64)
        if cfg["gumbel_temperature"] is not None:
            rank = rank / cfg["gumbel_temperature"] + gumbel_noise(id_hash, cfg["seed"])
        sign = 1.0 if self.higher_is_better else -1.0
        key = sign * rank
        if self.mode == "top_k":
            mask, thr = top_k(key, id_hash, cfg["top_k"])
        elif self.mode == "top_fraction_docs":
            mask, thr = top_fraction(key, np.ones(n), id_hash, cfg["top_fraction_docs"])
        else:
            mask, thr = top_fraction(key, chars.astype(np.float64), id_hash, cfg["top_fraction_chars"])
        return mask, (sign * thr if math.isfinite(thr) else None)

    def compute(self, keys: pa.Table) -> Decisions:
        n = keys.num_rows
        scores = keys[self.score_column].to_numpy().astype(np.float64) if n else np.zeros(0)
        chars = keys["_chars"].to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
        ih = stable_id_hash(keys["_id"].combine_chunks()) if n else np.zeros(0, np.uint64)
        mask, thr = self.select(scores, chars, ih)
        total = int(chars.sum())
        stats = {"mode": self.mode, "gumbel_temperature": self.config.get("gumbel_temperature"),
                 "threshold": thr, "selected_docs": int(mask.sum()), "docs": n,
                 "selected_chars": int(chars[mask].sum()), "chars": total,
                 "selected_char_fraction": float(chars[mask].sum() / total) if total else 0.0}
        rej = np.flatnonzero(~mask)
        take = pa.array(rej)
        return Decisions(pa.table({
            C.SHARD: keys[C.SHARD].take(take).combine_chunks() if n else pa.array([], pa.int32()),
            C.ROW: keys[C.ROW].take(take).combine_chunks() if n else pa.array([], pa.int64()),
            C.REASON: pa.array([self.reason(self.reject_rule)] * rej.size, pa.string()),
        }), stats)
