"""MATES selection: data influence model scoring, then global Gumbel-top-k.

Method (Yu et al., "MATES", arXiv 2406.06046), as the authors' ``predict_data_influence.py``
and ``select_data.py`` do it: every candidate gets the influence model's predicted
reference loss (lower is better); the selection takes the ``k = ratio × pool`` candidates
with the smallest ``prediction / temperature + G``, ``G`` a Gumbel(0, 1) draw (ratio 0.2,
temperature 0.5): Gumbel-top-k over the perturbed predictions, a sampling of k documents
without replacement that leans to low predictions (the exact Plackett-Luce sampling of
``exp(-prediction / temperature)`` would subtract the Gumbel draw; this is the authors' form).
The random baseline is the same procedure with every prediction zero.

Here the draw ``G`` is a pure function of (``seed``, the document id) and the ranking is
computed once over the whole pool's (prediction, id) keys, so the selection is exact in k,
reproducible by seed, and independent of the shard layout, batch sizes and worker count.
``temperature: 0`` is plain top-k (the k smallest predictions, ties by a stable id hash).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.scorers.base import Column, Param, ParamError, between
from thresher.scorers.models.stages import MODEL_PARAMS, ModelBacked
from thresher.scorers.registry import register
from thresher.scorers.selection.select import GLOBAL_STEP_PARAM, ScoreThenSelect, gumbel_noise, top_k

MATES_INFLUENCE = "mates_influence"
#: written by ``thresher mates fit`` next to the influence model
INFLUENCE_CARD = "influence_card.json"
DEFAULT_MAX_DOC_TOKENS = 1024


def gumbel_top_k(pred: np.ndarray, id_hash: np.ndarray, k: int, temperature: float, seed: int
                 ) -> tuple[np.ndarray, Optional[float]]:
    """Mask of the ``k`` rows with the smallest ``pred / temperature + Gumbel(seed, id)``
    (``temperature == 0``: the smallest ``pred``), ties by ``id_hash``; and the cut (the
    largest selected ranking value)."""
    rank = np.asarray(pred, np.float64)
    if temperature > 0:
        rank = rank / temperature + gumbel_noise(id_hash, seed)
    mask, thr = top_k(-rank, id_hash, k)
    return mask, (-thr if math.isfinite(thr) else None)


def selection_size(n: int, ratio: float, k: Optional[int] = None) -> int:
    """``k`` when given (at most ``n``), else ``floor(ratio × n)`` (the authors' ``n // 5``
    for 0.2), guarded against float error (0.29 × 100 is 29, not 28)."""
    if k is not None:
        return min(int(k), n)
    return min(n, int(math.floor(ratio * n + 1e-9)))


@register
class Mates(ModelBacked, ScoreThenSelect):
    """MATES: score every candidate with a data influence model (`model:`, the directory
    `thresher mates fit` writes: an encoder with a regression head whose output is the
    predicted reference loss after training on the document; lower is better) through the
    engine's `encoder_score` task, GPU-batched when present; then keep `k = floor(ratio ×
    pool)` documents (or `k:`) by Gumbel-top-k over the whole pool: the k smallest
    `mates_influence / temperature + G`, with `G` a Gumbel(0, 1) draw that is a pure function
    of (`seed`, id). Exact in k, reproducible by seed, independent of shards and workers;
    `temperature: 0` is plain top-k (with model scores, "independent of shards" holds up to the
    floating-point noise of batched encoder inference, ~1e-6, which can only matter for ties at
    the cut). `random_baseline: true` ranks every document as if its
    prediction were 0 (the authors' random-selection control; no model is loaded and
    `mates_influence` is null). Documents are scored in windows of the encoder's length,
    pooled together, up to `max_doc_tokens` (default: the influence model's card, else 1,024).
    The temperature acts on the prediction in the units the influence model was trained in
    (z-normalised oracle scores, with the mean and std of its card), as the authors'
    predictions are; `mates_influence` holds the de-normalised value. Unselected documents are
    rejected as `mates.not_selected`; `_global/mates.json` records k, the cut (z units) and the
    selected characters. `thresher mates probe | fit | loop` make the model
    (see the README's MATES section)."""

    name = "mates"
    doc = ("MATES: data influence model scores (predicted reference loss), global Gumbel-top-k "
           "selection of ratio × pool (default 20%, temperature 0.5).")
    task = "encoder_score"
    kinds = ("encoder", "sequence_classification")
    params = {
        **{k: v for k, v in MODEL_PARAMS.items() if k != "model"},
        "model": Param(str, None, "data influence model directory (`thresher mates fit`); not needed with "
                                  "random_baseline", nullable=True),
        "ratio": Param(float, 0.2, "fraction of the candidate pool to keep (k = floor(ratio × pool))",
                       between(0.0, 1.0)),
        "k": Param(int, None, "keep exactly this many documents (overrides ratio)", between(0), nullable=True),
        "temperature": Param(float, 0.5, "Gumbel-top-k temperature; 0 = plain top-k", between(0.0)),
        "seed": Param(int, 0, "seed of the Gumbel draws", between(0, (1 << 63) - 1)),
        "random_baseline": Param(bool, False, "rank by Gumbel noise alone (every prediction 0): the random "
                                              "selection of the same size"),
        "global_step": GLOBAL_STEP_PARAM,
    }
    columns = (Column(MATES_INFLUENCE, pa.float32(),
                      "predicted reference loss after training on the document (lower is better)"),)
    score_column = MATES_INFLUENCE
    higher_is_better = False
    reject_rule = "not_selected"
    reasons = {"not_selected": "outside the Gumbel-top-k selection of the pool"}

    @classmethod
    def check_params(cls, params: dict[str, Any], prefix: str) -> None:
        if params["model"] is None and not params["random_baseline"]:
            raise ParamError(prefix + "model", "required (the influence model directory from thresher mates fit) "
                                               "unless random_baseline is true")

    @property
    def mode(self) -> str:
        return "gumbel_top_k" if self.config["temperature"] > 0 else "top_k"

    def preflight(self, ctx) -> None:
        if self.config["model"] is not None and not self.config["random_baseline"]:
            super().preflight(ctx)

    def _card(self) -> dict[str, Any]:
        path = os.path.join(os.path.expanduser(self.config["model"] or ""), INFLUENCE_CARD)
        if self.config["model"] and os.path.isfile(path):
            with open(path) as f:
                return json.load(f)
        return {}

    def task_options(self, **extra: Any) -> dict[str, Any]:
        opts = super().task_options(**extra)
        opts.setdefault("truncation", "windows")
        if opts["truncation"] == "windows":
            opts.setdefault("max_doc_tokens", int(self._card().get("max_doc_tokens", DEFAULT_MAX_DOC_TOKENS)))
        return opts

    def score(self, text: pa.Array, batch: pa.Table = None) -> np.ndarray:
        if self.config["random_baseline"]:
            return np.full(len(text), np.nan, np.float32)
        self.setup()
        with self._handle.lock:
            out = self._handle.task(text)
        if "score" not in out:
            raise ParamError("model", f"the influence model at {self.config['model']} has "
                                      f"{self._handle.task.lm.num_outputs} outputs; MATES needs one")
        return out["score"].to_numpy(zero_copy_only=False)

    def setup(self) -> None:
        if not self.config["random_baseline"]:
            super().setup()

    def target_scale(self) -> tuple[float, float]:
        """(mean, std) of the oracle scores the influence model was fitted on (its card; the
        head's ``extra`` otherwise), or (0, 1) for a model without them."""
        card = self._card()
        if not card and self.config["model"]:
            from thresher.scorers.models.loading import HEAD_CONFIG
            p = os.path.join(os.path.expanduser(self.config["model"]), HEAD_CONFIG)
            if os.path.isfile(p):
                with open(p) as f:
                    card = (json.load(f) or {}).get("extra") or {}
        mean, std = card.get("target_mean"), card.get("target_std")
        if isinstance(mean, (int, float)) and isinstance(std, (int, float)) and std > 0:
            return float(mean), float(std)
        return 0.0, 1.0

    def keys(self, text: pa.Array, batch: pa.Table, ids: pa.Array) -> pa.Table:
        """The base keys plus ``_z``, the prediction on the influence model's training scale,
        computed here, where the model directory is at hand (the global step may run where
        it is not)."""
        raw = np.asarray(self.score(text, batch), np.float64)
        if self.config["random_baseline"]:
            z = np.zeros(raw.size)
        else:
            mean, std = self.target_scale()
            z = (np.nan_to_num(raw, nan=np.inf) - mean) / std
        return pa.table({self.score_column: pa.array(raw.astype(np.float32), pa.float32()),
                         "_chars": pc.utf8_length(text).cast(pa.int64()), "_id": ids,
                         "_z": pa.array(z, pa.float64())})

    # -- the rank order (the base's hooks): the prediction on the influence model's scale
    def rank_input(self, scores: np.ndarray, keys: Optional[pa.Table] = None) -> np.ndarray:
        n = np.asarray(scores).size
        if self.config["random_baseline"]:
            return np.zeros(n)
        z = None
        if keys is not None and "_z" in keys.column_names and keys.num_rows:
            z = keys["_z"].to_numpy().astype(np.float64)
        elif getattr(self, "_z", None) is not None and self._z.size == n:
            z = self._z
        if z is not None:
            return z
        # the temperature acts on the scale the influence model was trained in (z-normalised
        # oracle scores, as the authors' predictions are): de-normalised losses differ by
        # ~1e-3 and would leave the selection to the noise alone
        mean, std = self.target_scale()
        return (np.nan_to_num(np.asarray(scores, np.float64), nan=np.inf) - mean) / std

    def rank_temperature(self) -> Optional[float]:
        return self.config["temperature"] or None

    def cut_target(self, n: int, total_chars: int) -> tuple[str, float, bool, bool]:
        k = selection_size(n, self.config["ratio"], self.config["k"])
        return ("at", float(k), False, False) if k > 0 else ("none", 0.0, False, False)

    def selection_stats(self, n: int, total: int, selected_docs: int, selected_chars: int,
                        thr: Optional[float]) -> dict[str, Any]:
        st = super().selection_stats(n, total, selected_docs, selected_chars, thr)
        cfg = self.config
        mean, std = (0.0, 1.0) if cfg["random_baseline"] else self.target_scale()
        st.update({"k": selection_size(n, cfg["ratio"], cfg["k"]), "ratio": cfg["ratio"],
                   "target_mean": mean, "target_std": std,
                   "temperature": cfg["temperature"], "seed": cfg["seed"],
                   "random_baseline": cfg["random_baseline"]})
        st.pop("gumbel_temperature", None)
        return st
