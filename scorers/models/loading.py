"""Load scoring models from local checkpoints, safely.

Supported inputs (``detect_kind`` tells them apart):

* a Hugging Face checkpoint directory with a causal LM (``*ForCausalLM``,
  ``*LMHeadModel``) -> kind ``causal_lm``;
* a Hugging Face encoder with a sequence-classification head
  (``*ForSequenceClassification``) -> kind ``sequence_classification``;
* a bare Hugging Face encoder plus a head saved by this project
  (``thresher_head.json`` + ``thresher_head.safetensors``, see
  :func:`save_encoder_head`) -> kind ``encoder``;
* a fastText ``.bin``/``.ftz`` model file -> kind ``fasttext``.

Safety rules, enforced here rather than left to library defaults:

* ``trust_remote_code`` is always ``False``; a config that asks for custom code
  (``auto_map``) is refused.
* Weights come from ``*.safetensors`` when present. A checkpoint with only
  pickle weights (``pytorch_model.bin`` and its shards) is opened with
  ``torch.load(weights_only=True)`` ourselves; anything that loader rejects
  (arbitrary objects, code) raises :class:`UnsafeCheckpointError`. Accepted
  tensors are re-saved as safetensors in a temporary directory and loaded from
  there, so the model library never unpickles anything.
* Nothing is downloaded: every load passes ``local_files_only=True``.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import nn

KIND_CAUSAL_LM = "causal_lm"
KIND_SEQ_CLS = "sequence_classification"
KIND_ENCODER = "encoder"
KIND_FASTTEXT = "fasttext"
KINDS = (KIND_CAUSAL_LM, KIND_SEQ_CLS, KIND_ENCODER, KIND_FASTTEXT)

HEAD_CONFIG = "thresher_head.json"
HEAD_WEIGHTS = "thresher_head.safetensors"
HEAD_FORMAT = "thresher.encoder_head"

_FASTTEXT_MAGIC = 793712314  # int32 at the start of every fastText .bin / .ftz
_PICKLE_WEIGHTS = ("pytorch_model.bin",)
_PICKLE_INDEX = "pytorch_model.bin.index.json"
_UNLIMITED = 1_000_000  # tokenizer.model_max_length above this means "not set"

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}
OUTPUT_ACTIVATIONS = ("none", "softmax", "sigmoid")


class CheckpointError(ValueError):
    """The checkpoint cannot be loaded (missing files, unknown layout)."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint needs arbitrary code or unpickling to load; refused."""


# --------------------------------------------------------------------------- head
class EncoderHead(nn.Module):
    """Pooled encoder output -> ``num_outputs`` numbers.

    ``hidden_layers`` lists the widths of optional hidden layers (each followed
    by ``activation``); the last layer is linear. ``output`` is applied at
    inference: ``none`` (regression / raw logits), ``softmax`` or ``sigmoid``.
    """

    def __init__(self, hidden_size: int, num_outputs: int = 1, hidden_layers: Sequence[int] = (),
                 activation: str = "gelu", output: str = "none", pooling: str = "mean"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if output not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"output must be one of {OUTPUT_ACTIVATIONS}, got {output!r}")
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        self.hidden_size = int(hidden_size)
        self.num_outputs = int(num_outputs)
        self.hidden_layers = [int(w) for w in hidden_layers]
        self.activation = activation
        self.output = output
        self.pooling = pooling
        layers: list[nn.Module] = []
        width = self.hidden_size
        for w in self.hidden_layers:
            layers += [nn.Linear(width, w), _ACTIVATIONS[activation]()]
            width = w
        layers.append(nn.Linear(width, self.num_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.layers(pooled)

    def config(self) -> dict[str, Any]:
        return {"hidden_size": self.hidden_size, "num_outputs": self.num_outputs,
                "hidden_layers": list(self.hidden_layers), "activation": self.activation,
                "output": self.output, "pooling": self.pooling}


def save_encoder_head(directory: str, head: EncoderHead, encoder: str = ".",
                      labels: Optional[Sequence[str]] = None, max_length: Optional[int] = None,
                      extra: Optional[dict] = None) -> str:
    """Write ``head`` as ``thresher_head.json`` + ``thresher_head.safetensors``.

    ``encoder`` is the encoder checkpoint directory, relative to ``directory``
    (default: the same directory) or absolute. Returns ``directory``.
    """
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    cfg = {"format": HEAD_FORMAT, "version": 1, "encoder": encoder, **head.config()}
    if labels is not None:
        if len(labels) != head.num_outputs:
            raise ValueError(f"{len(labels)} labels for {head.num_outputs} outputs")
        cfg["labels"] = list(labels)
    if max_length is not None:
        cfg["max_length"] = int(max_length)
    if extra:
        cfg["extra"] = extra
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()}
    save_file(state, os.path.join(directory, HEAD_WEIGHTS))
    with open(os.path.join(directory, HEAD_CONFIG), "w") as f:
        json.dump(cfg, f, indent=2)
    return directory


def load_encoder_head(directory: str) -> tuple[EncoderHead, dict[str, Any]]:
    """Read a head written by :func:`save_encoder_head` (safetensors only)."""
    from safetensors.torch import load_file

    cfg_path = os.path.join(directory, HEAD_CONFIG)
    w_path = os.path.join(directory, HEAD_WEIGHTS)
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{directory}: no {HEAD_CONFIG}")
    if not os.path.isfile(w_path):
        raise CheckpointError(f"{directory}: {HEAD_CONFIG} present but {HEAD_WEIGHTS} missing")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("format") != HEAD_FORMAT:
        raise CheckpointError(f"{cfg_path}: format must be {HEAD_FORMAT!r}, got {cfg.get('format')!r}")
    try:
        head = EncoderHead(cfg["hidden_size"], cfg.get("num_outputs", 1), cfg.get("hidden_layers", ()),
                           cfg.get("activation", "gelu"), cfg.get("output", "none"), cfg.get("pooling", "mean"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: bad head config: {e}") from e
    state = load_file(w_path)
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{w_path}: weights do not match the head config "
                              f"(missing {missing}, unexpected {unexpected})")
    head.train(False)
    return head, cfg


# --------------------------------------------------------------------------- result
@dataclasses.dataclass
class LoadedModel:
    """A model ready for the engine, with what the tasks need to know about it."""

    kind: str
    model: Any                                  # nn.Module, or a fastText model
    tokenizer: Any = None
    head: Optional[EncoderHead] = None
    path: str = ""
    max_positions: Optional[int] = None         # longest input the model accepts (tokens)
    num_outputs: int = 1                        # encoder_score outputs
    output_activation: str = "none"             # none | softmax | sigmoid
    labels: Optional[list[str]] = None          # names of the outputs, when known
    pooling: str = "mean"                       # custom head pooling

    @property
    def is_torch(self) -> bool:
        return isinstance(self.model, nn.Module)

    def to(self, device: torch.device) -> LoadedModel:
        if self.is_torch:
            self.model.to(device)
        if self.head is not None:
            self.head.to(device)
        return self

    @classmethod
    def wrap(cls, model: Any, tokenizer: Any = None, kind: Optional[str] = None,
             head: Optional[EncoderHead] = None, **kw: Any) -> LoadedModel:
        """Wrap in-memory objects (tests, benchmarks, notebooks)."""
        if kind is None:
            if head is not None:
                kind = KIND_ENCODER
            elif isinstance(model, nn.Module):
                kind = _kind_from_architectures(getattr(getattr(model, "config", None), "architectures", None)
                                                or [type(model).__name__])
            else:
                kind = KIND_FASTTEXT
        out = cls(kind=kind, model=model, tokenizer=tokenizer, head=head, **kw)
        if isinstance(model, nn.Module):
            model.train(False)
            if out.max_positions is None:
                out.max_positions = _max_positions(getattr(model, "config", None), tokenizer)
        _fill_outputs(out)
        return out


def _fill_outputs(lm: LoadedModel) -> None:
    if lm.kind == KIND_ENCODER and lm.head is not None:
        lm.num_outputs, lm.output_activation, lm.pooling = lm.head.num_outputs, lm.head.output, lm.head.pooling
    elif lm.kind == KIND_SEQ_CLS:
        cfg = lm.model.config
        lm.num_outputs = int(cfg.num_labels)
        pt = getattr(cfg, "problem_type", None)
        if pt == "regression" or (pt is None and lm.num_outputs == 1):
            lm.output_activation = "none"
        elif pt == "multi_label_classification":
            lm.output_activation = "sigmoid"
        else:
            lm.output_activation = "softmax"
        id2label = getattr(cfg, "id2label", None) or {}
        if lm.labels is None and len(id2label) == lm.num_outputs:
            lm.labels = [str(id2label[i]) for i in range(lm.num_outputs)]


# --------------------------------------------------------------------------- detection
def _is_fasttext_file(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and struct.unpack("<i", head)[0] == _FASTTEXT_MAGIC


def _kind_from_architectures(archs: Sequence[str]) -> str:
    for a in archs:
        if a.endswith("ForCausalLM") or a.endswith("LMHeadModel"):
            return KIND_CAUSAL_LM
        if a.endswith("ForSequenceClassification"):
            return KIND_SEQ_CLS
    return KIND_ENCODER


def _read_config(directory: str) -> dict[str, Any]:
    p = os.path.join(directory, "config.json")
    if not os.path.isfile(p):
        raise CheckpointError(f"{directory}: no config.json (not a Hugging Face checkpoint directory)")
    with open(p) as f:
        return json.load(f)


def detect_kind(path: str) -> str:
    """``causal_lm``, ``sequence_classification``, ``encoder`` or ``fasttext``."""
    if os.path.isfile(path):
        if _is_fasttext_file(path):
            return KIND_FASTTEXT
        raise CheckpointError(f"{path}: a file that is not a fastText model; pass a checkpoint directory")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such file or directory")
    if os.path.isfile(os.path.join(path, HEAD_CONFIG)):
        return KIND_ENCODER
    cfg = _read_config(path)
    return _kind_from_architectures(cfg.get("architectures") or [])


# --------------------------------------------------------------------------- weights
def _weights_layout(directory: str) -> tuple[str, list[str]]:
    """(``safetensors``|``pickle``, files). Raises when there are no weights."""
    st = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    st = [p for p in st if os.path.basename(p) != HEAD_WEIGHTS]
    if st:
        return "safetensors", st
    idx = os.path.join(directory, _PICKLE_INDEX)
    if os.path.isfile(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f).get("weight_map", {}).values()))
        paths = [os.path.join(directory, os.path.basename(p)) for p in files]
        return "pickle", paths
    pk = [os.path.join(directory, n) for n in _PICKLE_WEIGHTS if os.path.isfile(os.path.join(directory, n))]
    if pk:
        return "pickle", pk
    pickled = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack")
    others = [n for n in os.listdir(directory) if n.endswith(pickled)]
    if others:
        raise UnsafeCheckpointError(f"{directory}: weights only in {sorted(others)}; thresher loads "
                                    f"*.safetensors or pytorch_model.bin (weights-only)")
    raise CheckpointError(f"{directory}: no model weights (*.safetensors or pytorch_model.bin)")


def load_weights_only(path: str) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a pickle weights file, or refuse."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, AttributeError ... all mean "refuse"
        raise UnsafeCheckpointError(
            f"{path}: refused: pickle checkpoint not loadable with torch.load(weights_only=True) "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"Convert it to safetensors with a trusted tool first.") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise UnsafeCheckpointError(f"{path}: refused: not a state dict of tensors")
    return obj


def _pickle_to_safetensors_dir(directory: str, files: list[str]) -> str:
    """Validate pickle weights with weights_only=True and stage them as safetensors."""
    from safetensors.torch import save_file

    state: dict[str, torch.Tensor] = {}
    for p in files:
        if not os.path.isfile(p):
            raise CheckpointError(f"{p}: listed in {_PICKLE_INDEX} but missing")
        state.update(load_weights_only(p))
    tmp = tempfile.mkdtemp(prefix="thresher-ckpt-")
    try:
        for name in os.listdir(directory):
            src = os.path.join(directory, name)
            if os.path.isfile(src) and name.endswith((".json", ".txt", ".model", ".jinja", ".tiktoken")) \
                    and name != _PICKLE_INDEX:
                shutil.copy2(src, os.path.join(tmp, name))
        # safetensors refuses shared storage (tied weights): give each tensor its own.
        seen: set[int] = set()
        clean: dict[str, torch.Tensor] = {}
        for k, v in state.items():
            ptr = v.untyped_storage().data_ptr() if v.numel() else -1
            clean[k] = v.detach().clone().contiguous() if ptr in seen else v.detach().contiguous()
            seen.add(ptr)
        save_file(clean, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


# --------------------------------------------------------------------------- helpers
def _max_positions(config: Any, tokenizer: Any = None, directory: Optional[str] = None) -> Optional[int]:
    vals: list[int] = []
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"):
        v = getattr(config, name, None) if config is not None else None
        if isinstance(v, int) and v > 0:
            vals.append(v)
            break
    tl = getattr(tokenizer, "model_max_length", None)
    if isinstance(tl, int) and 0 < tl < _UNLIMITED:
        vals.append(tl)
    if directory:
        # sentence-transformers checkpoints record the length they were trained with
        p = os.path.join(directory, "sentence_bert_config.json")
        if os.path.isfile(p):
            try:
                with open(p) as f:
                    v = json.load(f).get("max_seq_length")
                if isinstance(v, int) and v > 0:
                    vals.append(v)
            except (OSError, ValueError):
                pass
    return min(vals) if vals else None


def _torch_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    if name in (None, "auto"):
        return None
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(table)}")
    return table[name]


def _load_tokenizer(directory: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise CheckpointError(f"{directory}: cannot load the tokenizer: {type(e).__name__}: {e}") from e


def _load_hf(directory: str, kind: str, weights_dtype: Optional[torch.dtype]):
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no per-load progress bars in worker logs

    cfg = _read_config(directory)
    if cfg.get("auto_map"):
        raise UnsafeCheckpointError(f"{directory}: config.json asks for custom model code (auto_map); "
                                    f"thresher never runs remote code")
    layout, files = _weights_layout(directory)
    cls = {KIND_CAUSAL_LM: AutoModelForCausalLM, KIND_SEQ_CLS: AutoModelForSequenceClassification,
           KIND_ENCODER: AutoModel}[kind]
    staged = None
    src = directory
    if layout == "pickle":
        staged = _pickle_to_safetensors_dir(directory, files)
        src = staged
    try:
        kw: dict[str, Any] = dict(local_files_only=True, trust_remote_code=False, use_safetensors=True)
        if weights_dtype is not None:
            kw["dtype"] = weights_dtype
        try:
            model = cls.from_pretrained(src, **kw)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{directory}: cannot load as {kind}: {type(e).__name__}: {e}") from e
    finally:
        if staged:
            shutil.rmtree(staged, ignore_errors=True)
    model.train(False)
    return model


def _load_fasttext(path: str) -> LoadedModel:
    try:
        import fasttext
    except ImportError as e:  # pragma: no cover - fasttext is a project dependency
        raise CheckpointError("fastText models need the 'fasttext' module") from e
    model = fasttext.load_model(path)
    labels = sorted(model.get_labels())
    if not labels or not all(str(lab).startswith("__label__") for lab in labels):
        raise CheckpointError(f"{path}: not a supervised fastText classifier")
    return LoadedModel(kind=KIND_FASTTEXT, model=model, path=path, num_outputs=len(labels),
                       output_activation="softmax", labels=[str(x) for x in labels])


# --------------------------------------------------------------------------- entry point
def load_model(path: str, kind: Optional[str] = None, *, weights_dtype: Optional[str] = None,
               head: Optional[str] = None) -> LoadedModel:
    """Load a scoring model from a local path (on CPU; the engine moves it).

    ``kind`` defaults to :func:`detect_kind`. ``head`` points at a directory
    with a thresher head to put on top of the encoder at ``path`` (otherwise
    the head's own ``encoder`` entry says where the encoder is).
    ``weights_dtype`` (``fp32``/``bf16``/``fp16``) sets the dtype of the weights.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if head is not None:
        kind = kind or KIND_ENCODER
        if kind != KIND_ENCODER:
            raise CheckpointError(f"a head only goes on an encoder (kind {kind!r} given)")
    det = detect_kind(path)
    kind = kind or det
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")
    if kind == KIND_FASTTEXT:
        if det != KIND_FASTTEXT:
            raise CheckpointError(f"{path}: not a fastText model file")
        return _load_fasttext(path)
    if det == KIND_FASTTEXT:
        raise CheckpointError(f"{path}: a fastText model cannot be loaded as {kind!r}")
    dtype = _torch_dtype(weights_dtype)

    head_mod: Optional[EncoderHead] = None
    head_cfg: dict[str, Any] = {}
    enc_dir = path
    if kind == KIND_ENCODER:
        head_dir = os.path.abspath(head) if head is not None else path
        if not os.path.isfile(os.path.join(head_dir, HEAD_CONFIG)):
            raise CheckpointError(f"{path}: a bare encoder needs a head ({HEAD_CONFIG}); use a "
                                  f"sequence-classification checkpoint or save a head with save_encoder_head")
        head_mod, head_cfg = load_encoder_head(head_dir)
        if head is None:
            rel = head_cfg.get("encoder", ".")
            enc_dir = os.path.normpath(os.path.join(head_dir, os.path.expanduser(rel)))
        if not os.path.isdir(enc_dir):
            raise CheckpointError(f"{head_dir}: encoder directory {enc_dir} does not exist")

    tokenizer = _load_tokenizer(enc_dir)
    model = _load_hf(enc_dir, kind, dtype)
    if kind == KIND_ENCODER:
        hs = getattr(model.config, "hidden_size", None)
        if hs is not None and hs != head_mod.hidden_size:
            raise CheckpointError(f"head expects hidden size {head_mod.hidden_size}, encoder has {hs}")
    mp = _max_positions(model.config, tokenizer, enc_dir)
    if head_cfg.get("max_length"):
        mp = min(mp, int(head_cfg["max_length"])) if mp else int(head_cfg["max_length"])
    out = LoadedModel(kind=kind, model=model, tokenizer=tokenizer, head=head_mod, path=path,
                      max_positions=mp, labels=head_cfg.get("labels"))
    _fill_outputs(out)
    return out


__all__ = [
    "KIND_CAUSAL_LM", "KIND_SEQ_CLS", "KIND_ENCODER", "KIND_FASTTEXT", "KINDS",
    "HEAD_CONFIG", "HEAD_WEIGHTS", "CheckpointError", "UnsafeCheckpointError",
    "EncoderHead", "save_encoder_head", "load_encoder_head", "LoadedModel",
    "detect_kind", "load_model", "load_weights_only",
]
