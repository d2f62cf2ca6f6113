"""Model-backed stages: :class:`ModelStage` and ``lm_loss``, ``classifier``, ``generate``.

A model stage wraps one of the engine's tasks (``thresher.scorers.models.tasks``) and runs
inside ``thresher run`` with every other stage. What every model stage shares lives here:
the ``model`` path, ``device``, ``dtype``, the token budget (``max_tokens_per_batch``),
truncation, lazy loading once per worker process (one cache keyed by the task spec, so
two stages with the same model share it and the threads of a worker share one copy), the
engine's throughput and padding counters (written per shard to the manifest, summed in
``stats.json``) and the accelerator hint: with ``accelerator`` set the stage runs in a
Beam step of its own with that resource hint (on Dataflow only that step asks for GPU
workers), reading its shard's rows from the previous step's work file.

This module imports torch only when a model is loaded, so the registry can list these
stages on an install without the ``models`` extra.
"""
from __future__ import annotations

import re
import threading
from typing import Any, ClassVar, Optional

import numpy as np
import pyarrow as pa

from thresher.schemas import models as M
from thresher.scorers.base import Column, LocalStage, Param, ParamError, Resources, StageOutput, between, one_of
from thresher.scorers.registry import register


def _device(v: str) -> Optional[str]:
    return None if re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) else f"must be auto, cpu, cuda or cuda:N, got {v!r}"


def _positive_or_none(v):
    return None if v is None or v >= 1 else f"must be >= 1, got {v}"


MODEL_PARAMS: dict[str, Param] = {
    "model": Param(str, doc="local checkpoint directory (safetensors or weights-only torch files) or fastText "
                            "file; loaded once per worker, never with remote code"),
    "device": Param(str, "auto", "auto (CUDA when present, else CPU) | cpu | cuda | cuda:N", _device),
    "dtype": Param(str, "auto", "compute dtype: auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16",
                   one_of("auto", "fp32", "bf16", "fp16")),
    "weights_dtype": Param(str, None, "dtype the weights are loaded in (default: as stored)",
                           one_of("fp32", "bf16", "fp16"), nullable=True),
    "max_tokens_per_batch": Param(int, None, "padded tokens per batch (batch size × longest); default 16384 on "
                                             "CPU, 32768 on CUDA", _positive_or_none, nullable=True),
    "max_batch_size": Param(int, None, "documents per batch at most", _positive_or_none, nullable=True),
    "max_length": Param(int, None, "tokens per model input (default: the model's positions)", _positive_or_none,
                        nullable=True),
    "truncation": Param(str, None, "head | head_tail | windows (default per stage)",
                        one_of("head", "head_tail", "windows"), nullable=True),
    "max_doc_tokens": Param(int, None, "with truncation windows: only the first N tokens of a document",
                            _positive_or_none, nullable=True),
    "accelerator": Param(str, None, "Beam accelerator resource hint, e.g. 'type:nvidia-l4;count:1;"
                                    "install-nvidia-driver'; when set the stage runs in a step of its own",
                         nullable=True),
}

_CACHE: dict[str, _Loaded] = {}
_CACHE_LOCK = threading.Lock()
#: how many times a model stage built its task in this process (tests check one load per process)
BUILD_COUNT = 0


class _Loaded:
    def __init__(self, task):
        self.task = task
        self.lock = threading.Lock()


class ModelBacked:
    """What every stage that runs an engine task shares (mixed into a ``LocalStage`` as
    :class:`ModelStage`, or into a global stage such as ``mates``): the task built once per
    process from ``model`` and the engine options, the accelerator hint, the preflight checks
    of the model path, and the engine counters reported per shard."""

    task: ClassVar[str] = ""
    task_params: ClassVar[tuple[str, ...]] = ()
    resources = Resources(accelerator=True, note="GPU when present (device auto); CPU otherwise")
    #: a forward pass per token on CPU: orders of magnitude above the rule stages
    cpu_ns_per_byte = 20_000.0
    _loaded = ("_handle",)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._handle: Optional[_Loaded] = None
        self._reported: dict[str, float] = {}

    def accelerator_hint(self) -> Optional[str]:
        return self.config.get("accelerator")

    def task_options(self, **extra: Any) -> dict[str, Any]:
        """Options for ``build_task``: the engine options and the stage's task parameters
        that are set, plus ``extra`` (e.g. ``column_prefix`` for ``thresher score``)."""
        keys = [k for k in MODEL_PARAMS if k not in ("model", "accelerator", "weights_dtype")] + list(self.task_params)
        opts = {k: self.config[k] for k in keys if self.config.get(k) is not None}
        opts.update({k: v for k, v in extra.items() if v is not None})
        return opts

    def load(self, **extra: Any) -> _Loaded:
        """The task for this stage's model and options, built once per process (one cache
        for ``thresher run`` and ``thresher score``) and shared by the worker's threads."""
        opts = self.task_options(**extra)
        wd, head = self.config.get("weights_dtype"), self.config.get("head")
        key = repr((self.task, self.config["model"], sorted((k, repr(v)) for k, v in opts.items()), wd, head))
        with _CACHE_LOCK:
            h = _CACHE.get(key)
            if h is None:
                global BUILD_COUNT
                from thresher.scorers.models.tasks import build_task
                BUILD_COUNT += 1
                h = _CACHE[key] = _Loaded(build_task(self.task, self.config["model"], weights_dtype=wd, head=head,
                                                     **opts))
        return h

    def setup(self) -> None:
        if self._handle is None:
            self._handle = self.load()

    #: model kinds this stage's task accepts (``loading.detect_kind``)
    kinds: ClassVar[tuple[str, ...]] = ()

    def preflight(self, ctx) -> None:
        """Before any work: the ``models`` extra is installed, the model path holds a
        checkpoint of a kind the task takes (weights, tokenizer, a head for a bare
        encoder), and on a local runner the requested device exists."""
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as e:
            raise ParamError("model", f"model stages need the models extra ({e.name} is not installed): "
                                      f"pip install 'thresher[models]'") from None
        import os

        import torch

        from thresher.scorers.models.loading import HEAD_CONFIG, CheckpointError, detect_kind
        dev = self.config["device"]
        if ctx.local and dev.startswith("cuda") and not torch.cuda.is_available():
            raise ParamError("device", f"{dev!r} requested but CUDA is not available on this machine; use "
                                       f"device: auto (GPU when present) or cpu")
        path = os.path.abspath(os.path.expanduser(self.config["model"]))
        if not os.path.exists(path) and not ctx.local:
            return                      # e.g. baked into the workers' container image
        try:
            kind = detect_kind(path)
        except CheckpointError as e:
            raise ParamError("model", str(e)) from None
        if self.kinds and kind not in self.kinds:
            raise ParamError("model", f"{path} is a {kind} checkpoint; stage {self.name!r} takes "
                                      f"{' or '.join(self.kinds)}")
        if kind != "fasttext":
            head = self.config.get("head")
            enc_dir = path
            if kind == "encoder" or head:
                head_dir = os.path.abspath(head) if head else path
                if not os.path.isfile(os.path.join(head_dir, HEAD_CONFIG)):
                    raise ParamError("head" if head else "model",
                                     f"{head_dir}: a bare encoder needs a head ({HEAD_CONFIG}); make one with "
                                     f"thresher.scorers.models.save_encoder_head(dir, EncoderHead(hidden, outputs)) "
                                     f"or use a sequence-classification checkpoint")
                if not head:            # the head names its encoder (relative to the head directory)
                    import json
                    with open(os.path.join(head_dir, HEAD_CONFIG)) as f:
                        rel = (json.load(f) or {}).get("encoder", ".")
                    enc_dir = os.path.normpath(os.path.join(head_dir, os.path.expanduser(rel)))
            tok_files = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                         "sentencepiece.bpe.model", "tokenizer.model")
            if os.path.isdir(enc_dir) and not any(os.path.exists(os.path.join(enc_dir, f)) for f in tok_files):
                raise ParamError("model", f"{enc_dir}: no tokenizer files ({', '.join(tok_files[:3])}, ...); save the "
                                          f"tokenizer with the model (tokenizer.save_pretrained(dir))")

    def take_stats(self) -> Optional[dict[str, float]]:
        """Engine counters since the last call (docs, tokens, padding, OOM back-offs, seconds)."""
        if self._handle is None:
            return None
        cur = {k: v for k, v in self._handle.task.stats.as_dict().items()
               if k not in ("docs_per_s", "tokens_per_s", "padding_waste")}
        delta = {k: v - self._reported.get(k, 0) for k, v in cur.items()}
        self._reported = cur
        return delta


class ModelStage(ModelBacked, LocalStage):
    """Base of the local stages that run a model from the engine (``task``).

    Subclasses set ``task``, their ``columns`` (the task's output columns, declared) and
    ``task_params`` (their own parameters, passed to the task), and may override
    ``decide(columns) -> reasons``. ``engine_stats`` counters are reported per shard."""

    params: ClassVar[dict[str, Param]] = MODEL_PARAMS

    def decide(self, cols: dict[str, pa.Array]) -> Optional[pa.Array]:
        return None

    def task_columns(self) -> dict[str, str]:
        """task output column -> declared column."""
        return {c.name: c.name for c in self.active_columns()}

    def process(self, text: pa.Array, batch: pa.Table) -> StageOutput:
        self.setup()
        with self._handle.lock:
            raw = self._handle.task(text)
        names = self.task_columns()
        cols = {names[k]: v for k, v in raw.items() if k in names}
        return StageOutput(columns=cols, reasons=self.decide(cols))


@register
class LmLoss(ModelStage):
    """Per-document loss of a causal LM (`causal_lm_loss`): summed token NLL in nats, tokens,
    characters covered and bits per character. Long documents are scored in sliding windows
    (each token once, `stride` new tokens per window). `max_bpc` / `min_bpc` reject documents
    the model finds too surprising (noise) or too predictable (boilerplate); without them the
    stage only scores."""

    name = "lm_loss"
    column_prefix = "lm"
    doc = "Causal-LM loss per document (nats, tokens, characters, bits per character); optional bpc bounds."
    task = M.TASK_CAUSAL_LM_LOSS
    kinds = ("causal_lm",)
    task_params = ("stride", "prepend_bos")
    params = {
        **MODEL_PARAMS,
        "stride": Param(int, None, "new tokens per sliding window (default max_length // 2)", _positive_or_none,
                        nullable=True),
        "prepend_bos": Param(bool, None, "prepend BOS so the first token is scored (default: when the "
                                         "tokenizer has one)", nullable=True),
        "max_bpc": Param(float, None, "reject documents above this many bits per character", between(0.0),
                         nullable=True),
        "min_bpc": Param(float, None, "reject documents below this many bits per character", between(0.0),
                         nullable=True),
    }
    columns = (
        Column(M.LM_LOSS_SUM, pa.float64(), "summed token negative log-likelihood, nats"),
        Column(M.LM_TOKENS, pa.int64(), "tokens whose loss was summed"),
        Column(M.LM_CHARS, pa.int64(), "characters covered by those tokens"),
        Column(M.LM_BPC, pa.float64(), "bits per character = lm_loss_sum / (lm_chars · ln 2)"),
    )
    reasons = {"high_bpc": "bits per character above `max_bpc`", "low_bpc": "bits per character below `min_bpc`"}

    def decide(self, cols):
        from thresher.scorers.base import first_reason
        bpc = cols[M.LM_BPC].to_numpy(zero_copy_only=False).astype(np.float64)
        masks = []
        if self.config["max_bpc"] is not None:
            masks.append((np.nan_to_num(bpc, nan=-np.inf) > self.config["max_bpc"], self.reason("high_bpc")))
        if self.config["min_bpc"] is not None:
            masks.append((np.nan_to_num(bpc, nan=np.inf) < self.config["min_bpc"], self.reason("low_bpc")))
        return first_reason(len(bpc), masks) if masks else None


@register
class Classifier(ModelStage):
    """A document classifier's score (`encoder_score`): an HF sequence classifier
    (softmax / sigmoid per its `problem_type`, raw values for a regression head such as
    FineWeb-Edu's) or a bare encoder with a thresher head (mean pooling over the attention
    mask, `head:` names the head directory when it is not inside the model directory), or a
    fastText classifier. One output is kept: `label` (name or index; default the only output,
    or the last label of a two-label classifier). `min_score` (alias `threshold`) / `max_score`
    decide; without them the stage only scores. Long documents: `truncation: windows` pools
    every window of the document."""

    name = "classifier"
    doc = "Document classifier score (HF sequence classifier, encoder + head, or fastText); min/max score."
    task = M.TASK_ENCODER_SCORE
    kinds = ("encoder", "sequence_classification", "fasttext")
    task_params = ("label",)
    params = {
        **MODEL_PARAMS,
        "head": Param(str, None, "thresher head directory for a bare encoder at `model`", nullable=True),
        "label": Param((str, int), None, "the output to keep: label name or index", nullable=True),
        "min_score": Param(float, None, "reject documents scoring below this", nullable=True),
        "threshold": Param(float, None, "alias of min_score", nullable=True),
        "max_score": Param(float, None, "reject documents scoring above this (e.g. a toxicity classifier)",
                           nullable=True),
    }
    columns = (Column("classifier_score", pa.float32(), "the kept output of the classifier"),)
    reasons = {"low_score": "score below `min_score`", "high_score": "score above `max_score`"}

    @classmethod
    def check_params(cls, params: dict[str, Any], prefix: str) -> None:
        if params.get("threshold") is not None:
            if params.get("min_score") is not None:
                raise ParamError(prefix + "threshold", "give min_score or its alias threshold, not both")
            params["min_score"] = params["threshold"]

    def task_columns(self) -> dict[str, str]:
        if self.config["label"] is not None:
            return {M.SCORE: "classifier_score"}
        n = self._handle.task.lm.num_outputs
        if n > 2:
            raise ParamError("label", f"the classifier at {self.config['model']} has {n} outputs "
                                      f"{self._handle.task.lm.labels}; choose one with 'label'")
        # one output: it; two (a binary classifier): the second, the positive class
        return {M.score_columns(n)[-1]: "classifier_score"}

    def decide(self, cols):
        from thresher.scorers.base import first_reason
        s = cols["classifier_score"].to_numpy(zero_copy_only=False).astype(np.float64)
        masks = []
        if self.config["min_score"] is not None:
            masks.append((np.nan_to_num(s, nan=np.inf) < self.config["min_score"], self.reason("low_score")))
        if self.config["max_score"] is not None:
            masks.append((np.nan_to_num(s, nan=-np.inf) > self.config["max_score"], self.reason("high_score")))
        return first_reason(len(s), masks) if masks else None


@register
class Generate(ModelStage):
    """Batched greedy generation from a prompt built around each document (`generate`): the
    tokenizer's chat template (or a fallback), `system` / `prompt` (`{text}` = the document),
    stop strings, `max_new_tokens`. Writes `generated`; rejects nothing (a later stage, such
    as ProX's executor, acts on it)."""

    name = "generate"
    column_prefix = "generated"
    doc = "Greedy generation per document with a causal LM (chat template, stop strings); writes `generated`."
    task = M.TASK_GENERATE
    kinds = ("causal_lm",)
    task_params = ("max_new_tokens", "stop", "system", "prompt", "template", "batching")
    params = {
        **MODEL_PARAMS,
        "max_new_tokens": Param(int, 256, "tokens generated at most", between(1)),
        "stop": Param(list, None, "stop strings (removed from the output)", nullable=True),
        "system": Param(str, None, "system message", nullable=True),
        "prompt": Param(str, None, "user message; {text} is replaced by the document", nullable=True),
        "template": Param(str, "auto", "auto | chat | fallback | none | a custom template with {user}"),
        "batching": Param(str, "auto", "auto (continuous on CUDA, static on CPU) | static (length-sorted token-budget "
                                       "batches) | continuous (transformers' generate_batch, paged attention)",
                          one_of("auto", "static", "continuous")),
    }
    columns = (Column(M.GENERATED, pa.string(), "the generated text"),)
    reasons = ()
