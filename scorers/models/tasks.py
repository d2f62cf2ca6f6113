"""The three model tasks: ``causal_lm_loss``, ``encoder_score``, ``generate``.

Each task turns a list of texts into columns (see ``schemas/models.py``):

* :class:`CausalLMLoss` -> ``lm_loss_sum`` (summed token NLL, nats), ``lm_tokens``,
  ``lm_chars``, ``lm_bpc = lm_loss_sum / (lm_chars · ln 2)``. Documents longer
  than the context are scored in sliding windows: the first window scores its
  tokens, every later window advances by ``stride`` tokens and scores only the
  new ones, with the ``max_length - stride`` tokens before them as context, so
  each token is scored exactly once.
* :class:`EncoderScore` -> ``score`` or ``score_0..score_<k-1>``: an encoder
  with mean pooling and a thresher head, an HF sequence-classification model,
  or a fastText classifier.
* :class:`Generate` -> ``generated``: batched greedy decoding of a prompt built
  from each document with the tokenizer's chat template (or a fallback).

Truncation is explicit (``truncation=``): ``head`` keeps the first
``max_length`` tokens, ``head_tail`` the first and last halves, ``windows``
scores everything (causal LM: overlapping windows; encoder: consecutive
chunks whose token states are pooled together), optionally only the first
``max_doc_tokens`` tokens of each document. Null texts give null
outputs and are not sent to the model.
"""
from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from thresher.schemas import models as M
from thresher.scorers.models.engine import Engine
from thresher.scorers.models.loading import (
    KIND_CAUSAL_LM,
    KIND_ENCODER,
    KIND_FASTTEXT,
    KIND_SEQ_CLS,
    LoadedModel,
    load_model,
)

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
TRUNCATIONS = ("head", "head_tail", "windows")
#: default context for a causal LM whose config gives none, and the cap on the default
DEFAULT_LM_CONTEXT = 2048
MAX_DEFAULT_LM_CONTEXT = 4096
#: chars kept per allowed token before tokenising a document for ``head`` truncation
_CHARS_PER_TOKEN_CUT = 32
#: rows of logits materialised at once when computing the loss
_CE_CHUNK = 8192
#: architectures whose logits are exactly ``lm_head(last_hidden_state)``; for
#: those only the scored positions go through the output layer
_PLAIN_LM_HEAD = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "olmo", "olmo2",
                  "phi3", "stablelm", "starcoder2", "gptj", "smollm3"}
FALLBACK_TEMPLATE = "{system}\n\n{user}\n\n"
FALLBACK_TEMPLATE_NO_SYSTEM = "{user}\n\n"


# ----------------------------------------------------------------------------- helpers
def _whitespace_cut(text: str, limit: int) -> str:
    """``text`` cut at the last whitespace before ``limit`` chars (or unchanged)."""
    if len(text) <= limit:
        return text
    lo = limit // 2
    pos = max(text.rfind(" ", lo, limit), text.rfind("\n", lo, limit), text.rfind("\t", lo, limit))
    return text[:pos] if pos > 0 else text


def _keep(n: int, limit: int, policy: str, cap: Optional[int] = None) -> tuple[int, int]:
    """(head, tail) token counts kept from ``n`` tokens under ``limit``
    (``windows``: everything, or the first ``cap`` tokens)."""
    if policy == "windows":
        return (min(n, cap) if cap else n), 0
    if n <= limit:
        return n, 0
    if policy == "head":
        return limit, 0
    tail = limit // 2
    return limit - tail, tail


def _kept_chars(text: str, offsets, n: int, head: int, tail: int) -> int:
    if head + tail >= n:
        return len(text)
    c = offsets[head - 1][1] if head else 0
    if tail:
        c += len(text) - offsets[n - tail][0]
    return int(c)


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """Special tokens the tokenizer puts before and after one sequence."""
    probe = "a"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for s in range(len(full) - len(bare) + 1):
        if full[s:s + len(bare)] == bare:
            return list(full[:s]), list(full[s + len(bare):])
    return [], []


class ModelTask:
    """Common machinery: engine, truncation, null handling, Arrow output."""

    name = ""
    default_truncation = "head"
    truncations: tuple[str, ...] = TRUNCATIONS
    kinds: tuple[str, ...] = ()

    def __init__(self, model: LoadedModel, *, engine: Optional[Engine] = None, device: Optional[str] = "auto",
                 dtype: Optional[str] = "auto", max_tokens_per_batch: Optional[int] = None,
                 max_batch_size: Optional[int] = None, max_length: Optional[int] = None,
                 truncation: Optional[str] = None, max_doc_tokens: Optional[int] = None,
                 column_prefix: str = "", sort_by_length: bool = True, oom_injector=None):
        if model.kind not in self.kinds:
            raise ValueError(f"task {self.name!r} needs a model of kind {' or '.join(self.kinds)}, "
                             f"got {model.kind!r} ({model.path or type(model.model).__name__})")
        self.lm = model
        self.engine = engine or Engine(device=device, dtype=dtype, max_tokens_per_batch=max_tokens_per_batch,
                                       max_batch_size=max_batch_size, sort_by_length=sort_by_length,
                                       oom_injector=oom_injector)
        self.truncation = truncation or self.default_truncation
        if self.truncation not in self.truncations:
            raise ValueError(f"task {self.name!r}: truncation must be one of {self.truncations}, "
                             f"got {self.truncation!r}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if max_doc_tokens is not None and (max_doc_tokens < 1 or self.truncation != "windows"):
            raise ValueError("max_doc_tokens must be >= 1 and goes with truncation='windows' "
                             "(it caps the tokens of a document before it is split into windows)")
        self.max_doc_tokens = max_doc_tokens
        self.column_prefix = column_prefix
        self.stats = self.engine.stats
        if model.is_torch:
            self.engine.place(model.model)

    # -------------------------------------------------------------- public
    def fields(self) -> list[pa.Field]:
        return M.task_fields(self.name, self._num_columns(), self.column_prefix)

    @property
    def column_names(self) -> list[str]:
        return [f.name for f in self.fields()]

    def __call__(self, texts: Union[Sequence[Optional[str]], pa.Array, pa.ChunkedArray]) -> dict[str, pa.Array]:
        """Score texts; returns one Arrow array per output column (input order)."""
        t0 = time.perf_counter()
        if isinstance(texts, (pa.Array, pa.ChunkedArray)):
            texts = texts.to_pylist()
        texts = list(texts)
        valid = [i for i, t in enumerate(texts) if t is not None]
        raw = self._score([texts[i] for i in valid]) if valid else None
        out: dict[str, pa.Array] = {}
        n = len(texts)
        for f in self.fields():
            if raw is None:
                out[f.name] = pa.nulls(n, f.type)
                continue
            vals = raw[f.name]
            if len(valid) == n:
                full = vals
            else:
                full = [None] * n
                for j, i in enumerate(valid):
                    full[i] = vals[j]
            out[f.name] = _to_arrow(full, f.type)
        self.stats.docs += len(valid)
        self.stats.wall_s += time.perf_counter() - t0
        return out

    score = __call__

    def score_table(self, table: pa.Table, text_column: str = "text") -> pa.Table:
        """``table`` plus this task's columns (an existing column of the same name is replaced)."""
        if text_column not in table.column_names:
            raise KeyError(f"text column {text_column!r} not in {table.column_names}")
        cols = self(table.column(text_column))
        for name, arr in cols.items():
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, arr)
            else:
                table = table.append_column(name, arr)
        return table

    # -------------------------------------------------------------- internals
    def _num_columns(self) -> int:
        return 1

    def _score(self, texts: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def _encode(self, texts: list[str], offsets: bool, head_limit: Optional[int] = None):
        """Token ids (no special tokens) and, if asked, char offsets.

        With ``head_limit`` (tokens), very long texts are first cut at a
        whitespace boundary far beyond what can be kept, which leaves the
        kept tokens unchanged; a cut text that turns out short is redone whole.
        """
        t0 = time.perf_counter()
        tok = self.lm.tokenizer
        offsets = offsets and getattr(tok, "is_fast", True)
        cut = texts
        if head_limit is not None:
            cut = [_whitespace_cut(t, head_limit * _CHARS_PER_TOKEN_CUT) for t in texts]
        enc = tok(cut, add_special_tokens=False, return_offsets_mapping=offsets, return_attention_mask=False,
                  return_token_type_ids=False, verbose=False)
        ids = enc["input_ids"]
        offs = enc["offset_mapping"] if offsets else None
        if head_limit is not None:
            redo = [i for i, (a, b) in enumerate(zip(cut, texts)) if a is not b and len(ids[i]) <= head_limit]
            if redo:
                enc2 = tok([texts[i] for i in redo], add_special_tokens=False, return_offsets_mapping=offsets,
                           return_attention_mask=False, return_token_type_ids=False, verbose=False)
                for j, i in enumerate(redo):
                    ids[i] = enc2["input_ids"][j]
                    if offs is not None:
                        offs[i] = enc2["offset_mapping"][j]
            # texts that were cut and kept: their offsets are valid for the original text too
        self.stats.tokenize_s += time.perf_counter() - t0
        return ids, offs

    def _chars(self, text: str, ids: list[int], offs, head: int, tail: int) -> int:
        n = len(ids)
        if head + tail >= n:
            return len(text)
        if offs is not None:
            return _kept_chars(text, offs, n, head, tail)
        dec = self.lm.tokenizer.decode
        return len(dec(ids[:head])) + (len(dec(ids[n - tail:])) if tail else 0)


def _to_arrow(values, typ: pa.DataType) -> pa.Array:
    if isinstance(values, np.ndarray):
        if pa.types.is_floating(typ):
            return pa.array(values.astype(typ.to_pandas_dtype()), type=typ, from_pandas=True)
        return pa.array(values, type=typ)
    if pa.types.is_floating(typ):
        values = [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]
    return pa.array(values, type=typ)


# ============================================================================= causal LM
class CausalLMLoss(ModelTask):
    """Summed token NLL per document, with sliding windows for long documents.

    ``max_length`` is the window (context) length in tokens, including the
    BOS token; ``stride`` (default ``max_length // 2``) is how many new tokens
    each window after the first scores. ``prepend_bos`` (default: when the
    tokenizer has a BOS or, failing that, an EOS token) puts that token in
    front so the first text token is scored too; without it the first token
    is context only. ``lm_chars`` counts the characters of the kept tokens
    (``len(text)`` when nothing is truncated).
    """

    name = M.TASK_CAUSAL_LM_LOSS
    default_truncation = "windows"
    kinds = (KIND_CAUSAL_LM,)

    def __init__(self, model: LoadedModel, *, stride: Optional[int] = None, prepend_bos: Optional[bool] = None,
                 fast_path: Optional[bool] = None, **kw: Any):
        super().__init__(model, **kw)
        maxpos = model.max_positions
        ml = kw.get("max_length")
        if ml is None:
            ml = min(maxpos or DEFAULT_LM_CONTEXT, MAX_DEFAULT_LM_CONTEXT)
        elif maxpos is not None and ml > maxpos:
            raise ValueError(f"max_length {ml} exceeds the model's {maxpos} positions")
        if ml < 2:
            raise ValueError("causal_lm_loss needs max_length >= 2")
        self.max_length = int(ml)
        self.stride = int(stride) if stride else max(1, self.max_length // 2)
        if not 1 <= self.stride <= self.max_length - 1:
            raise ValueError(f"stride must be in [1, max_length - 1] = [1, {self.max_length - 1}], got {self.stride}")
        tok = model.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if prepend_bos is None:
            prepend_bos = bos is not None
        if prepend_bos and bos is None:
            raise ValueError("prepend_bos=True but the tokenizer has no BOS or EOS token")
        self.bos_id = bos if prepend_bos else None
        self.pad_id = next(x for x in (tok.pad_token_id, tok.eos_token_id, 0) if x is not None)
        mt = getattr(model.model.config, "model_type", "")
        plain = mt in _PLAIN_LM_HEAD and not any(
            getattr(model.model.config, a, None) for a in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
        self.fast_path = plain if fast_path is None else bool(fast_path)
        if self.fast_path and model.model.get_output_embeddings() is None:
            self.fast_path = False

    def _units(self, texts: list[str]):
        L = self.max_length
        has_bos = self.bos_id is not None
        limit = L - (1 if has_bos else 0)
        cap = self.max_doc_tokens
        need_offsets = self.truncation != "windows" or cap is not None
        head_limit = limit if self.truncation == "head" else cap
        ids, offs = self._encode(texts, need_offsets, head_limit=head_limit)
        units: list[tuple[int, list[int], int]] = []  # (doc, token ids, index of first scored token)
        tokens = np.zeros(len(texts), dtype=np.int64)
        chars = np.zeros(len(texts), dtype=np.int64)
        for d, (text, seq) in enumerate(zip(texts, ids)):
            n = len(seq)
            head, tail = _keep(n, limit, self.truncation, cap)
            chars[d] = self._chars(text, seq, offs[d] if offs is not None else None, head, tail)
            self.stats.doc_tokens += head + tail
            kept = seq if head + tail >= n else (seq[:head] + (seq[n - tail:] if tail else []))
            full = ([self.bos_id] + kept) if has_bos else kept
            m = len(full)
            if m < 2:
                continue
            tokens[d] = m - 1
            if m <= L:
                units.append((d, full, 1))
                continue
            units.append((d, full[:L], 1))
            end = L
            while end < m:
                new_end = min(end + self.stride, m)
                start = new_end - L
                units.append((d, full[start:new_end], end - start))
                end = new_end
        return units, tokens, chars

    def _score(self, texts: list[str]) -> dict[str, Any]:
        units, tokens, chars = self._units(texts)
        loss = np.zeros(len(texts), dtype=np.float64)
        if units:
            sums = self.engine.run([len(u[1]) for u in units], lambda idx: self._step([units[i] for i in idx]))
            np.add.at(loss, np.fromiter((u[0] for u in units), dtype=np.int64, count=len(units)),
                      np.asarray(sums, dtype=np.float64).reshape(-1))
        with np.errstate(divide="ignore", invalid="ignore"):
            bpc = np.where(chars > 0, loss / (np.maximum(chars, 1) * LN2), np.nan)
        p = self.column_prefix
        return {p + M.LM_LOSS_SUM: loss, p + M.LM_TOKENS: tokens, p + M.LM_CHARS: chars, p + M.LM_BPC: bpc}

    def _step(self, us: list[tuple[int, list[int], int]]) -> torch.Tensor:
        eng = self.engine
        B = len(us)
        Lm = eng.padded_length(max(len(u[1]) for u in us))
        ids = np.full((B, Lm), self.pad_id, dtype=np.int64)
        mask = np.zeros((B, Lm), dtype=np.int64)
        tgt = np.zeros((B, Lm - 1), dtype=bool)
        for b, (_, seq, first) in enumerate(us):
            n = len(seq)
            ids[b, :n] = seq
            mask[b, :n] = 1
            tgt[b, first - 1:n - 1] = True
        ids_t, mask_t, tgt_t = eng.as_tensor(ids), eng.as_tensor(mask), eng.as_tensor(tgt)
        targets = ids_t[:, 1:][tgt_t]
        model = self.lm.model
        if self.fast_path:
            hidden = model.base_model(input_ids=ids_t, attention_mask=mask_t, use_cache=False).last_hidden_state
            rows = hidden[:, :-1][tgt_t]
            head = model.get_output_embeddings()
            del hidden
        else:
            rows = model(input_ids=ids_t, attention_mask=mask_t, use_cache=False).logits[:, :-1][tgt_t]
            head = None
        nll = torch.empty(rows.shape[0], dtype=torch.float32, device=rows.device)
        for s in range(0, rows.shape[0], _CE_CHUNK):
            chunk = rows[s:s + _CE_CHUNK]
            logits = head(chunk) if head is not None else chunk
            nll[s:s + _CE_CHUNK] = F.cross_entropy(logits.float(), targets[s:s + _CE_CHUNK], reduction="none")
        owner = torch.arange(B, device=nll.device).unsqueeze(1).expand(B, Lm - 1)[tgt_t]
        return torch.zeros(B, dtype=torch.float64, device=nll.device).index_add_(0, owner, nll.double())


# ============================================================================= encoder
class EncoderScore(ModelTask):
    """Encoder + pooling + head -> one or more float scores per document.

    Model kinds: ``encoder`` (bare encoder + thresher head; mean or CLS
    pooling over the attention mask), ``sequence_classification`` (the
    model's own head; softmax/sigmoid per its ``problem_type``, raw values for
    regression), ``fasttext`` (label probabilities in sorted label order;
    newlines are replaced by spaces; device ignored). ``label`` (a label name
    or an output index) keeps one output, written as ``score``.
    With ``windows`` truncation a long document is split into consecutive
    chunks; the token states of all chunks are pooled together (sequence
    classification: chunk logits averaged, weighted by tokens).
    """

    name = M.TASK_ENCODER_SCORE
    default_truncation = "head"
    kinds = (KIND_ENCODER, KIND_SEQ_CLS, KIND_FASTTEXT)

    def __init__(self, model: LoadedModel, *, label: Optional[Union[str, int]] = None, **kw: Any):
        super().__init__(model, **kw)
        self.output_index: Optional[int] = None
        if label is not None:
            if isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
                i = int(label)
            elif model.labels and label in model.labels:
                i = model.labels.index(label)
            else:
                raise ValueError(f"label {label!r} not among the model's outputs {model.labels}")
            if not 0 <= i < model.num_outputs:
                raise ValueError(f"output index {i} out of range for {model.num_outputs} outputs")
            self.output_index = i
        if model.kind == KIND_FASTTEXT:
            self.max_length = None
            return
        if model.kind == KIND_ENCODER and model.head is None:
            raise ValueError("a bare encoder needs a head")
        tok = model.tokenizer
        self.prefix_ids, self.suffix_ids = _special_affixes(tok)
        ml = kw.get("max_length")
        maxpos = model.max_positions
        if ml is None:
            ml = maxpos or 512
        elif maxpos is not None and ml > maxpos:
            raise ValueError(f"max_length {ml} exceeds the model's {maxpos} positions")
        self.max_length = int(ml)
        self.content_length = self.max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if self.content_length < 1:
            raise ValueError(f"max_length {ml} leaves no room for text after special tokens")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        if model.head is not None:
            model.head.float().cpu().train(False)

    def _num_columns(self) -> int:
        return 1 if self.output_index is not None else self.lm.num_outputs

    def _score(self, texts: list[str]) -> dict[str, Any]:
        if self.lm.kind == KIND_FASTTEXT:
            out = self._fasttext(texts)
        else:
            out = self._torch(texts)
        if self.output_index is not None:
            out = out[:, self.output_index:self.output_index + 1]
        names = M.score_columns(out.shape[1], self.column_prefix)
        return {n: out[:, j].astype(np.float32) for j, n in enumerate(names)}

    def _fasttext(self, texts: list[str]) -> np.ndarray:
        labels = self.lm.labels
        pos = {lab: j for j, lab in enumerate(labels)}
        clean = [t.replace("\r", " ").replace("\n", " ") for t in texts]
        t0 = time.perf_counter()
        pred_labels, pred_probs = self.lm.model.predict(clean, k=len(labels))
        out = np.zeros((len(texts), len(labels)), dtype=np.float32)
        for i, (ls, ps) in enumerate(zip(pred_labels, pred_probs)):
            for lab, p in zip(ls, ps):
                out[i, pos[lab]] = p
        self.stats.model_s += time.perf_counter() - t0
        return out

    def _units(self, texts: list[str]):
        C = self.content_length
        cap = self.max_doc_tokens
        ids, offs = self._encode(texts, offsets=False, head_limit=C if self.truncation == "head" else cap)
        units: list[tuple[int, list[int]]] = []
        for d, seq in enumerate(ids):
            if cap is not None and len(seq) > cap:
                seq = seq[:cap]
            n = len(seq)
            if self.truncation == "windows" and n > C:
                for s in range(0, n, C):
                    units.append((d, self.prefix_ids + seq[s:s + C] + self.suffix_ids))
                self.stats.doc_tokens += n
                continue
            head, tail = _keep(n, C, self.truncation)
            kept = seq if head + tail >= n else (seq[:head] + (seq[n - tail:] if tail else []))
            self.stats.doc_tokens += len(kept)
            units.append((d, self.prefix_ids + kept + self.suffix_ids))
        return units

    def _torch(self, texts: list[str]) -> np.ndarray:
        units = self._units(texts)
        rows = self.engine.run([len(u[1]) for u in units], lambda idx: self._step([units[i] for i in idx]))
        rows = np.asarray(rows, dtype=np.float64)
        acc = np.zeros((len(texts), rows.shape[1]), dtype=np.float64)
        np.add.at(acc, np.fromiter((u[0] for u in units), dtype=np.int64, count=len(units)), rows)
        pooled = acc[:, :-1] / np.maximum(acc[:, -1:], 1e-12)
        with torch.inference_mode():
            x = torch.from_numpy(pooled).float()
            if self.lm.kind == KIND_ENCODER:
                x = self.lm.head(x)
            act = self.lm.output_activation
            if act == "softmax":
                x = torch.softmax(x, dim=-1)
            elif act == "sigmoid":
                x = torch.sigmoid(x)
        return x.numpy()

    def _step(self, us: list[tuple[int, list[int]]]) -> torch.Tensor:
        eng = self.engine
        B = len(us)
        Lm = eng.padded_length(max(len(u[1]) for u in us))
        ids = np.full((B, Lm), self.pad_id, dtype=np.int64)
        mask = np.zeros((B, Lm), dtype=np.int64)
        for b, (_, seq) in enumerate(us):
            ids[b, :len(seq)] = seq
            mask[b, :len(seq)] = 1
        ids_t, mask_t = eng.as_tensor(ids), eng.as_tensor(mask)
        out = self.lm.model(input_ids=ids_t, attention_mask=mask_t)
        count = mask_t.sum(1, keepdim=True).float()
        if self.lm.kind == KIND_SEQ_CLS:
            return torch.cat([out.logits.float() * count, count], dim=1)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if self.lm.pooling == "cls":
            one = torch.ones_like(count)
            return torch.cat([hidden[:, 0].float(), one], dim=1)
        summed = torch.einsum("bl,blh->bh", mask_t.float(), hidden.float())
        return torch.cat([summed, count], dim=1)


# ============================================================================= generate
class Generate(ModelTask):
    """Batched greedy generation from a prompt built around each document.

    ``prompt`` wraps the document (``{text}`` is replaced by it; default: the
    document alone). ``template``: ``auto`` (the tokenizer's chat template if
    it has one, else the fallback), ``chat``, ``fallback`` (``{system}\\n\\n{user}\\n\\n``),
    ``none`` (the prompt as is), or a custom string with ``{user}`` and
    optionally ``{system}``. ``max_length`` bounds the document's tokens
    (default: what fits in the model's positions after the template and
    ``max_new_tokens``, or, when those leave no room, after the template and
    one generated token; an explicit one is capped there too). Output stops at
    EOS, after ``max_new_tokens``, or at the first of ``stop`` (the stop string
    itself is removed).

    At the context limit generation behaves as vLLM's does: a sequence stops when it
    reaches the model's positions, so each prompt generates at most
    ``min(max_new_tokens, max_positions - prompt tokens)`` tokens (no clamp when the model's
    positions are unknown). A batch is generated up to its smallest ceiling in one call;
    only prompts still unfinished below their own ceiling are continued in another call
    (:meth:`_by_ceiling`), so an output never depends on which prompts share its batch.
    """

    name = M.TASK_GENERATE
    default_truncation = "head"
    truncations = ("head", "head_tail")
    kinds = (KIND_CAUSAL_LM,)

    def __init__(self, model: LoadedModel, *, max_new_tokens: int = 256, stop: Optional[Sequence[str]] = None,
                 system: Optional[str] = None, prompt: Optional[str] = None, template: str = "auto",
                 batching: str = "auto", **kw: Any):
        super().__init__(model, **kw)
        if batching not in ("auto", "static", "continuous"):
            raise ValueError(f"batching must be auto, static or continuous, got {batching!r}")
        # continuous batching (transformers' generate_batch over a paged KV cache) keeps the
        # GPU full while short programs finish early; on CPU its scheduling overhead costs more
        # than it saves, so `auto` uses it on CUDA only. Stop strings need the static path.
        if batching == "auto":
            batching = "continuous" if self.engine.device.type == "cuda" and not stop else "static"
        if batching == "continuous" and stop:
            raise ValueError("stop strings need batching: static")
        self.batching = batching
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        self.max_new_tokens = int(max_new_tokens)
        self.stop = [s for s in (stop or []) if s]
        self.system = system
        self.prompt = prompt
        tok = model.tokenizer
        has_chat = bool(getattr(tok, "chat_template", None))
        if template == "auto":
            template = "chat" if has_chat else "fallback"
        if template == "chat" and not has_chat:
            raise ValueError("template='chat' but the tokenizer has no chat template")
        if template not in ("chat", "fallback", "none") and "{user}" not in template:
            raise ValueError("a custom template must contain {user}")
        self.template = template
        self.pad_id = next(x for x in (tok.pad_token_id, tok.eos_token_id, 0) if x is not None)
        overhead = len(self._prompt_ids([""])[0])
        #: the model's positions; None: unknown, generation is not clamped
        self.max_positions = model.max_positions
        maxpos = model.max_positions or (MAX_DEFAULT_LM_CONTEXT * 4)
        fit = maxpos - overhead - 1          # document tokens that still leave one generated token
        if fit < 1:
            raise ValueError(f"the template ({overhead} tokens) leaves no room for text and one generated "
                             f"token in {maxpos} positions")
        ml = kw.get("max_length")
        room = maxpos - overhead - self.max_new_tokens
        self.max_length = min(int(ml), fit) if ml is not None else (room if room >= 1 else fit)

    def render(self, doc: str) -> str:
        """The prompt text for one document (before tokenisation)."""
        user = self.prompt.replace("{text}", doc, 1) if self.prompt else doc
        if self.template == "chat":
            msgs = ([{"role": "system", "content": self.system}] if self.system else []) + \
                   [{"role": "user", "content": user}]
            return self.lm.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        if self.template == "none":
            return user
        tpl = self.template if self.template != "fallback" else (
            FALLBACK_TEMPLATE if self.system else FALLBACK_TEMPLATE_NO_SYSTEM)
        return re.sub(r"\{(system|user)\}", lambda m: user if m.group(1) == "user" else (self.system or ""), tpl)

    def _prompt_ids(self, docs: list[str]) -> list[list[int]]:
        prompts = [self.render(d) for d in docs]
        # chat templates write their own special tokens; the others get the tokenizer's
        specials = self.template != "chat"
        return self.lm.tokenizer(prompts, add_special_tokens=specials, return_attention_mask=False,
                                 verbose=False)["input_ids"]

    def ceiling(self, prompt_tokens: int) -> int:
        """Tokens a prompt of ``prompt_tokens`` tokens may generate: ``max_new_tokens``, or
        fewer where the sequence would pass the model's positions."""
        if self.max_positions is None:
            return self.max_new_tokens
        return max(1, min(self.max_new_tokens, self.max_positions - prompt_tokens))

    def _score(self, texts: list[str]) -> dict[str, Any]:
        ids, offs = self._encode(texts, offsets=True,
                                 head_limit=self.max_length if self.truncation == "head" else None)

        def cut(d: int, limit: int) -> tuple[str, int]:
            text, seq = texts[d], ids[d]
            n = len(seq)
            if limit < 1:
                return "", 0
            head, tail = _keep(n, limit, self.truncation)
            if head + tail >= n:
                return text, n
            if offs is not None:
                o = offs[d]
                return text[:o[head - 1][1]] + (text[o[n - tail][0]:] if tail else ""), head + tail
            dec = self.lm.tokenizer.decode
            return dec(seq[:head]) + (dec(seq[n - tail:]) if tail else ""), head + tail

        pairs = [cut(d, self.max_length) for d in range(len(texts))]
        docs, kept = [p[0] for p in pairs], [p[1] for p in pairs]
        t0 = time.perf_counter()
        prompts = self._prompt_ids(docs)
        if self.max_positions is not None:
            # the document's tokens and the prompt's need not add up exactly (merges across the
            # template's edges): a prompt that leaves no position to generate in loses the excess
            # from its document, and is rendered again (an empty document always fits)
            top = self.max_positions - 1
            for d in range(len(prompts)):
                while len(prompts[d]) > top and kept[d] > 0:
                    docs[d], kept[d] = cut(d, kept[d] - (len(prompts[d]) - top))
                    prompts[d] = self._prompt_ids([docs[d]])[0]
        self.stats.tokenize_s += time.perf_counter() - t0
        self.stats.doc_tokens += sum(kept)
        ceilings = [self.ceiling(len(p)) for p in prompts]
        if self.batching == "continuous":
            out = self._continuous(prompts, ceilings)
        else:
            out = self.engine.run([len(p) + c for p, c in zip(prompts, ceilings)],
                                  lambda idx: self._step([prompts[i] for i in idx], [ceilings[i] for i in idx]))
        return {self.column_prefix + M.GENERATED: out}

    def _generation_config(self, max_new_tokens: Optional[int] = None):
        from transformers import GenerationConfig
        base_cfg = getattr(self.lm.model, "generation_config", None)
        eos = getattr(base_cfg, "eos_token_id", None)
        if eos is None:
            eos = self.lm.tokenizer.eos_token_id
        return GenerationConfig(max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=False, num_beams=1,
                                pad_token_id=self.pad_id, eos_token_id=eos,
                                bos_token_id=getattr(base_cfg, "bos_token_id", None),
                                stop_strings=self.stop or None)

    def _continuous(self, prompts: list[list[int]], ceilings: Optional[list[int]] = None) -> list[str]:
        """All prompts through ``generate_batch`` (requests join and leave the running batch as
        they finish, paged attention; greedy, so the outputs equal ``generate``'s), see
        :meth:`_by_ceiling` for prompts near the context limit."""
        if ceilings is None:
            ceilings = [self.ceiling(len(p)) for p in prompts]
        return self._by_ceiling(prompts, ceilings, self._continuous_group)

    def _by_ceiling(self, prompts: list[list[int]], ceilings: list[int], run) -> list[str]:
        """Generate every prompt up to its own ceiling with as few calls as possible: one call
        for all with the smallest ceiling among them (what every prompt may generate); the
        prompts that neither finished (EOS or a stop string) nor reached their own ceiling
        are generated again, one call per ceiling. Greedy decoding
        is prefix-consistent, so each output equals a single call with that prompt's ceiling
        (tested), and the common case (programs far shorter than the room) is one call."""
        c = min(ceilings)
        texts, finished = run(prompts, c)
        out: list[str] = list(texts)
        again = [i for i, (f, ci) in enumerate(zip(finished, ceilings)) if not f and ci > c]
        # second (and last) round: one call per remaining ceiling, so no prompt is generated
        # more than twice whatever the spread of lengths
        groups: dict[int, list[int]] = {}
        for i in again:
            groups.setdefault(ceilings[i], []).append(i)
        for ci, idx in groups.items():
            for i, t in zip(idx, run([prompts[i] for i in idx], ci)[0]):
                out[i] = t
        return out

    def _continuous_group(self, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[str], list[bool]]:
        import torch
        t0 = time.perf_counter()
        model = self.lm.model
        if getattr(model.config, "_attn_implementation", None) == "eager":
            model.set_attn_implementation("paged|eager")     # sdpa and flash attention page by themselves
        tok = self.lm.tokenizer
        cfg = self._generation_config(max_new_tokens)
        with torch.inference_mode(), self.engine.autocast():
            res = model.generate_batch(inputs=[list(p) for p in prompts], generation_config=cfg,
                                       progress_bar=False)
        outs = [res[k].generated_tokens for k in res]
        if len(outs) != len(prompts):
            raise RuntimeError(f"continuous batching returned {len(outs)} of {len(prompts)} generations")
        eos = cfg.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
        raw = [tok.decode([t for t in o if t not in eos], skip_special_tokens=True) for o in outs]
        finished = [any(t in eos for t in o) or self._stopped(r) for o, r in zip(outs, raw)]
        st = self.engine.stats
        st.batches += 1
        st.processed_tokens += sum(len(p) for p in prompts) + sum(len(o) for o in outs)
        st.padded_tokens += sum(len(p) for p in prompts) + sum(len(o) for o in outs)
        st.model_s += time.perf_counter() - t0
        return [self._cut(t) for t in raw], finished

    def _step(self, prompts: list[list[int]], ceilings: Optional[list[int]] = None) -> list[str]:
        """One engine batch: left-padded ``generate`` calls, see :meth:`_by_ceiling`."""
        if ceilings is None:
            ceilings = [self.ceiling(len(p)) for p in prompts]
        return self._by_ceiling(prompts, ceilings, self._generate)

    def _generate(self, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[str], list[bool]]:
        eng = self.engine
        tok = self.lm.tokenizer
        B = len(prompts)
        Lm = eng.padded_length(max(len(p) for p in prompts))
        ids = np.full((B, Lm), self.pad_id, dtype=np.int64)
        mask = np.zeros((B, Lm), dtype=np.int64)
        for b, p in enumerate(prompts):  # left padding
            if p:
                ids[b, Lm - len(p):] = p
                mask[b, Lm - len(p):] = 1
        cfg = self._generation_config(max_new_tokens)
        kw = {"tokenizer": tok} if self.stop else {}
        out = self.lm.model.generate(input_ids=eng.as_tensor(ids), attention_mask=eng.as_tensor(mask),
                                     generation_config=cfg, **kw)
        gen = out[:, Lm:].cpu()
        texts = tok.batch_decode(gen.tolist(), skip_special_tokens=True)
        eos = cfg.eos_token_id
        eos_t = torch.tensor(list(eos) if isinstance(eos, (list, tuple)) else [eos if eos is not None else -1])
        hit = torch.isin(gen, eos_t).any(dim=1).tolist()
        finished = [h or self._stopped(t) for h, t in zip(hit, texts)]
        return [self._cut(t) for t in texts], finished

    def _stopped(self, text: str) -> bool:
        return any(s in text for s in self.stop)

    def _cut(self, text: str) -> str:
        cut = len(text)
        for s in self.stop:
            p = text.find(s)
            if 0 <= p < cut:
                cut = p
        return text[:cut]


# ============================================================================= factory
TASKS: dict[str, type] = {M.TASK_CAUSAL_LM_LOSS: CausalLMLoss, M.TASK_ENCODER_SCORE: EncoderScore,
                          M.TASK_GENERATE: Generate}


def build_task(task: str, model: Union[str, LoadedModel], *, weights_dtype: Optional[str] = None,
               head: Optional[str] = None, **options: Any) -> ModelTask:
    """Load ``model`` (a path, or an already loaded model) and make the task.

    ``options`` go to the task class: engine options (``device``, ``dtype``,
    ``max_tokens_per_batch``, ``max_batch_size``, ``max_length``,
    ``truncation``, ``max_doc_tokens``, ``column_prefix``) and task options (``stride``,
    ``prepend_bos``; ``label``; ``max_new_tokens``, ``stop``, ``system``,
    ``prompt``, ``template``).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    lm = model if isinstance(model, LoadedModel) else load_model(model, weights_dtype=weights_dtype, head=head)
    return TASKS[task](lm, **options)


__all__ = ["ModelTask", "CausalLMLoss", "EncoderScore", "Generate", "TASKS", "build_task", "TRUNCATIONS",
           "FALLBACK_TEMPLATE"]
