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

Both global steps rank by :meth:`ScoreThenSelect.rank_keys`: a ``uint64`` order (ascending =
best first; the ranking value with its noise, sign and NaN-last folded in by :func:`order_key`)
and the id hash. ``global_step: gather`` decides in ``compute`` on one worker;
``distributed`` (``pipelines/select_beam.py``) finds the same cut from per-shard histograms
refined to the exact boundary; ``auto`` (default) is distributed above 1,000,000 input rows or
256 shards.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.schemas import columns as C
from thresher.scorers.base import Decisions, GlobalStage, Param, ParamError, between, one_of
from thresher.scorers.text.hashing import stable_id_hash

MODES = ("threshold", "top_fraction_chars", "top_fraction_docs", "top_k")
GLOBAL_STEPS = ("auto", "gather", "distributed")
#: the Beam builder of the distributed global step (``pipelines/select_beam.py``)
DISTRIBUTED_STEP = "thresher.pipelines.select_beam:distributed_select"
GLOBAL_STEP_PARAM = Param(
    str, "auto", "how the global cut is computed: gather (every key on one worker), distributed "
                 "(per-shard histograms refined to the exact boundary; memory per worker bounded by "
                 "the shard size; the same selection) or auto (distributed above 1,000,000 input rows "
                 "or 256 shards, else gather)", one_of(*GLOBAL_STEPS))


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


_SIGN = np.uint64(1 << 63)
_NAN_ORDER = np.uint64(0xFFFFFFFFFFFFFFFF)


def order_key(v: np.ndarray) -> np.ndarray:
    """Order-preserving ``uint64`` of float64 ranking values (ascending = best first): the
    IEEE bits with the sign bit flipped for positives and every bit flipped for negatives;
    ``-0.0`` and ``0.0`` map to one value and every NaN to the largest (last), the order
    ``np.lexsort`` gives floats."""
    v = np.asarray(v, np.float64) + 0.0          # -0.0 + 0.0 == +0.0
    bits = v.view(np.uint64)
    out = np.where(bits & _SIGN, ~bits, bits | _SIGN)
    out[np.isnan(v)] = _NAN_ORDER
    return out.astype(np.uint64, copy=False)


def order_value(o) -> np.ndarray:
    """The inverse of :func:`order_key` (NaN for the NaN order)."""
    o = np.atleast_1d(np.asarray(o, np.uint64))
    bits = np.where(o & _SIGN, o & ~_SIGN, ~o)
    v = bits.view(np.float64).copy()
    v[o == _NAN_ORDER] = np.nan
    return v


def cut_count(cum: np.ndarray, target: float, closer: bool) -> int:
    """Rows kept of ``cum`` (the inclusive cumulative weights in rank order): through the
    first row whose cumulative weight reaches ``target``; with ``closer`` one row fewer when
    stopping before that row lands closer to the target."""
    n = cum.size
    k = int(np.searchsorted(cum, target, side="left")) + 1
    k = min(max(k, 1), n)
    if closer and k > 1 and abs(cum[k - 2] - target) < abs(cum[k - 1] - target):
        k -= 1
    return k


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
        "global_step": GLOBAL_STEP_PARAM,
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

    def distributed_step(self) -> Optional[str]:
        """The distributed cut (``global_step: distributed``, or ``auto``: the builder then
        falls back to the gather path for a small run), else None (gather)."""
        if self.config.get("global_step", "gather") == "gather":
            return None
        return DISTRIBUTED_STEP

    # -- the rank order both global steps share ------------------------------------------
    def rank_input(self, scores: np.ndarray, keys: Optional[pa.Table] = None) -> np.ndarray:
        """The float64 value that is ranked (before the Gumbel noise): the score."""
        return np.asarray(scores, np.float64)

    def rank_temperature(self) -> Optional[float]:
        """Gumbel temperature (None or 0 = no noise)."""
        return self.config.get("gumbel_temperature")

    def rank_order(self, scores: np.ndarray, id_hash: np.ndarray, keys: Optional[pa.Table] = None) -> np.ndarray:
        """Per-row ``uint64`` order, ascending = best first (ties: ``id_hash`` ascending):
        the ranking value (score, or ``score / temperature + Gumbel``), negated when higher
        is better, through :func:`order_key` (NaN last)."""
        rank = self.rank_input(scores, keys)
        t = self.rank_temperature()
        if t:
            rank = rank / t + gumbel_noise(id_hash, self.config["seed"])
        sign = 1.0 if self.higher_is_better else -1.0
        return order_key(-(sign * rank))

    def rank_keys(self, keys: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A key table -> (``order`` uint64, ascending = best first; ``id_hash`` uint64, the
        tiebreak, ascending; ``chars`` int64): the total order of both global steps."""
        n = keys.num_rows
        if n == 0:
            return np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64)
        scores = keys[self.score_column].to_numpy().astype(np.float64)
        chars = keys["_chars"].to_numpy().astype(np.int64)
        ih = stable_id_hash(keys["_id"].combine_chunks())
        return self.rank_order(scores, ih, keys), ih, chars

    def reported_cut(self, order: Optional[int]) -> Optional[float]:
        """The cut written to the stats from the ``order`` of the last kept row: the lowest
        kept score (highest when lower is better; the perturbed value under Gumbel)."""
        if order is None:
            return None
        v = float(order_value(order)[0])
        sign = 1.0 if self.higher_is_better else -1.0
        return -sign * v if math.isfinite(v) else None

    def cut_target(self, n: int, total_chars: int) -> tuple[str, float, bool, bool]:
        """(outcome, target, closer, weigh_chars): outcome ``none`` (keep nothing), ``all``
        or ``at``: keep through the first row (in rank order) whose cumulative weight
        (characters when ``weigh_chars``, else documents) reaches ``target``, one row fewer
        when ``closer`` and stopping before it lands closer."""
        cfg = self.config
        if self.mode == "top_k":
            k = min(max(int(cfg["top_k"]), 0), n)
            return ("at", float(k), False, False) if k else ("none", 0.0, False, False)
        chars = self.mode == "top_fraction_chars"
        f = cfg["top_fraction_chars"] if chars else cfg["top_fraction_docs"]
        if n == 0 or f <= 0:
            return "none", 0.0, False, chars
        if f >= 1:
            return "all", 0.0, False, chars
        return "at", f * float(total_chars if chars else n), True, chars

    def select_ordered(self, order: np.ndarray, id_hash: np.ndarray, chars: np.ndarray
                       ) -> tuple[np.ndarray, Optional[float]]:
        """Mask of the selected rows given their rank order, and the reported cut."""
        n = order.size
        mask = np.zeros(n, dtype=bool)
        outcome, target, closer, weigh_chars = self.cut_target(n, int(np.asarray(chars, np.int64).sum()))
        if outcome == "none" or n == 0:
            return mask, None
        o = np.lexsort((id_hash, order))
        if outcome == "all":
            kk = n
        else:
            w = np.asarray(chars, np.float64)[o] if weigh_chars else np.ones(n)
            kk = cut_count(np.cumsum(w, dtype=np.float64), target, closer)
        mask[o[:kk]] = True
        return mask, self.reported_cut(int(order[o[kk - 1]]))

    def select(self, scores: np.ndarray, chars: np.ndarray, id_hash: np.ndarray) -> tuple[np.ndarray, Optional[float]]:
        """Mask of the selected rows and the cut (lowest kept score, or highest when lower
        is better; for Gumbel sampling the cut on the perturbed ranking value)."""
        if self.mode == "threshold":
            return self.threshold_mask(scores), self.config["threshold"]
        return self.select_ordered(self.rank_order(scores, id_hash), id_hash, chars)

    def threshold_mask(self, scores: np.ndarray) -> np.ndarray:
        t = self.config["threshold"]
        return (scores >= t) if self.higher_is_better else (scores <= t)

    def selection_stats(self, n: int, total: int, selected_docs: int, selected_chars: int,
                        thr: Optional[float]) -> dict[str, Any]:
        """The stats of ``_global/<id>.json`` (both global steps)."""
        return {"mode": self.mode, "gumbel_temperature": self.config.get("gumbel_temperature"),
                "threshold": thr, "selected_docs": int(selected_docs), "docs": int(n),
                "selected_chars": int(selected_chars), "chars": int(total),
                "selected_char_fraction": float(selected_chars / total) if total else 0.0}

    def compute(self, keys: pa.Table) -> Decisions:
        n = keys.num_rows
        if self.mode == "threshold":
            scores = keys[self.score_column].to_numpy().astype(np.float64) if n else np.zeros(0)
            chars = keys["_chars"].to_numpy().astype(np.int64) if n else np.zeros(0, np.int64)
            mask, thr = self.threshold_mask(scores), self.config["threshold"]
        else:
            order, ih, chars = self.rank_keys(keys)
            mask, thr = self.select_ordered(order, ih, chars)
        stats = self.selection_stats(n, int(chars.sum()), int(mask.sum()), int(chars[mask].sum()), thr)
        stats["global_step"] = "gather"
        rej = np.flatnonzero(~mask)
        take = pa.array(rej)
        return Decisions(pa.table({
            C.SHARD: keys[C.SHARD].take(take).combine_chunks() if n else pa.array([], pa.int32()),
            C.ROW: keys[C.ROW].take(take).combine_chunks() if n else pa.array([], pa.int64()),
            C.REASON: pa.array([self.reason(self.reject_rule)] * rej.size, pa.string()),
        }), stats)
