"""ProX stages: ``prox_doc`` (keep or drop a document) and ``prox_chunk`` (remove lines,
normalise strings), each a refining LM that writes a program and the safe executor
(:mod:`thresher.scorers.refine.program`) that applies it.

Prompts follow the reference (``apply_doc_refining.py`` / ``apply_chunk_refining.py`` of
the ProX code): the system message "You are a helpful, respectful and honest assistant.",
the Llama-2 chat format by default (``template: llama2``; ``auto`` uses the model's own chat
template), greedy decoding. Doc level: the raw document is the user turn, cut to
``max_length`` tokens (2,000). Chunk level: every line is prefixed ``[NNN]`` with its global
0-based index (3 digits, more past 999), lines are packed greedily into chunks of at most
``chunk_tokens`` (1,500) tokens of the refining model's tokenizer (a longer line is cut to
that budget, a fix: the reference sends it whole), each chunk is sent as
``[doc]\\n<chunk>\\n[/doc]``, and the chunks' programs are joined in order and executed over
the whole document.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa

from thresher.schemas import models as M
from thresher.scorers.base import Column, Param, StageOutput, between, first_reason, one_of
from thresher.scorers.models.stages import MODEL_PARAMS, ModelStage
from thresher.scorers.refine.program import Limits, run_program
from thresher.scorers.registry import register

SYSTEM = "You are a helpful, respectful and honest assistant."
#: the Llama-2 chat format the reference applies (BOS comes from the tokenizer)
LLAMA2_TEMPLATE = "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]"

_PROX_PARAMS = {
    **{k: v for k, v in MODEL_PARAMS.items() if k not in ("truncation", "max_doc_tokens")},
    "template": Param(str, "llama2", "llama2 (the reference's chat format) | auto (the model's chat template) | "
                                     "fallback | none | a custom template with {user} and {system}"),
    "system": Param(str, SYSTEM, "system message"),
    "max_errors": Param(int, 2, "a program with this many error operations is ignored", between(1)),
    "batching": Param(str, "auto", "generation: auto (continuous on CUDA, static on CPU) | static | continuous",
                      one_of("auto", "static", "continuous")),
}


def _template(cfg: dict) -> str:
    return LLAMA2_TEMPLATE if cfg["template"] == "llama2" else cfg["template"]


class _ProxStage(ModelStage):
    task = M.TASK_GENERATE
    kinds = ("causal_lm",)
    task_params = ("max_new_tokens", "system", "template", "batching")

    def task_options(self, **extra: Any) -> dict[str, Any]:
        opts = super().task_options(**extra)
        opts["template"] = _template(self.config)
        return opts

    def generate(self, prompts: list[str]) -> list[str]:
        self.setup()
        with self._handle.lock:
            out = self._handle.task(prompts)
        return [s or "" for s in out[M.GENERATED].to_pylist()]

    def limits(self) -> Limits:
        return Limits(max_errors=self.config["max_errors"])


@register
class ProxDoc(_ProxStage):
    """ProX document-level refining: the refining LM reads the raw document (cut to
    `max_length` tokens) and writes `drop_doc()` or `keep_doc()`; only a parsed `drop_doc()`
    call drops (the reference drops when `drop` appears anywhere in the output). The program
    is kept in `prox_doc_program`."""

    name = "prox_doc"
    doc = "ProX doc-level refining: a refining LM writes keep_doc()/drop_doc() per document."
    params = {
        **_PROX_PARAMS,
        "max_length": Param(int, 2000, "document tokens in the prompt (the reference's 2,000)", between(1)),
        "max_new_tokens": Param(int, 2000, "tokens generated at most (the reference's 2,000; generation also "
                                           "stops at the model's context limit, as vLLM does)", between(1)),
    }
    columns = (
        Column("prox_doc_program", pa.string(), "the program the refining model wrote"),
        Column("prox_doc_errors", pa.int32(), "error operations in it"),
    )
    reasons = {"drop": "the program is drop_doc()"}

    def process(self, text: pa.Array, batch: pa.Table) -> StageOutput:
        docs = text.to_pylist()
        programs = self.generate(docs)
        errors = np.zeros(len(docs), np.int32)
        drop = np.zeros(len(docs), bool)
        lim = self.limits()
        for i, (d, p) in enumerate(zip(docs, programs)):
            r = run_program(d, p, lim, length_rule=False)
            errors[i] = r.errors
            drop[i] = r.dropped == "drop_doc"
        return StageOutput(columns={"prox_doc_program": pa.array(programs, pa.string()),
                                    "prox_doc_errors": pa.array(errors, pa.int32())},
                           reasons=first_reason(len(docs), [(drop, self.reason("drop"))]))


def number_lines(text: str) -> list[str]:
    """Every line prefixed with its global 0-based index, ``[000]`` … (more digits past 999)."""
    return [f"[{i:03d}]{line}" for i, line in enumerate(text.split("\n"))]


def pack_chunks(lines: list[str], lengths: list[int], budget: int) -> list[list[int]]:
    """Greedy packing of consecutive lines into chunks of at most ``budget`` tokens
    (a line alone over the budget is a chunk of its own; the caller cuts it)."""
    chunks: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if cur and used + n > budget:
            chunks.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n
    if cur:
        chunks.append(cur)
    return chunks


@register
class ProxChunk(_ProxStage):
    """ProX chunk-level refining: the document's lines are numbered and packed into chunks;
    for each chunk the refining LM writes `remove_lines(...)` / `normalize(...)` /
    `skip_chunk()` calls; the programs are joined and executed over the whole document
    (normalisations first, then the removed ranges), and the refined text replaces the
    input for every later stage. A document with at most 5% or at most 10 of its words left
    is rejected (`too_short`); a program with `max_errors` or more error operations is
    ignored (the document stays as it was; `prox_chunk_errors` says so). `keep_raw: true`
    keeps the input in `raw_text`."""

    name = "prox_chunk"
    doc = "ProX chunk-level refining: a refining LM writes line removals and normalisations per chunk."
    rewrites_text = True
    params = {
        **_PROX_PARAMS,
        "chunk_tokens": Param(int, 1500, "tokens of numbered lines per chunk (the reference's 1,500)", between(16)),
        "max_new_tokens": Param(int, 256, "tokens generated per chunk at most (the reference's 256)", between(1)),
        "max_length": Param(int, None, "prompt tokens at most (default: chunk_tokens + the wrapper)",
                            nullable=True),
        "min_words": Param(int, 10, "drop when this many words or fewer remain", between(0)),
        "min_word_fraction": Param(float, 0.05, "drop when this fraction of the words or less remains",
                                   between(0.0, 1.0)),
        "keep_raw": Param(bool, False, "keep the input text in raw_text"),
    }
    columns = (
        Column("prox_chunk_program", pa.string(), "the document's program (the chunks' programs joined)"),
        Column("prox_chunk_errors", pa.int32(), "error operations in it"),
        Column("prox_chunk_lines_removed", pa.int32(), "lines removed"),
        Column("prox_chunk_chars_removed", pa.int64(), "characters removed"),
        Column("prox_chunk_ignored", pa.bool_(), "the program had max_errors or more errors and was ignored"),
    )
    RAW = Column("raw_text", pa.string(), "the input text (keep_raw: true)")
    reasons = {"too_short": "at most min_word_fraction or min_words of the words remain",
               "drop": "a chunk program called drop_doc()"}

    def active_columns(self) -> list[Column]:
        return list(self.columns) + ([self.RAW] if self.config["keep_raw"] else [])

    def task_options(self, **extra: Any) -> dict[str, Any]:
        opts = super().task_options(**extra)
        if self.config.get("max_length") is None:
            opts["max_length"] = self.config["chunk_tokens"] + 16
        return opts

    def limits(self) -> Limits:
        return Limits(max_errors=self.config["max_errors"], min_words=self.config["min_words"],
                      min_word_fraction=self.config["min_word_fraction"])

    def chunks(self, text: str) -> list[str]:
        """The user turns of one document: numbered lines packed into ``[doc]`` chunks."""
        return self.chunks_of([text])[0]

    def chunks_of(self, texts: list[str]) -> list[list[str]]:
        """The user turns of each document; every line of the batch is tokenised in one call."""
        self.setup()
        tok = self._handle.task.lm.tokenizer
        budget = self.config["chunk_tokens"]
        per_doc = [number_lines(t) for t in texts]
        flat = [line for lines in per_doc for line in lines]
        ids = (tok(flat, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
               if flat else [])
        out, pos = [], 0
        for lines in per_doc:
            seqs = ids[pos:pos + len(lines)]
            pos += len(lines)
            for i, seq in enumerate(seqs):
                if len(seq) > budget:                  # an over-long line is cut to the budget
                    lines[i] = tok.decode(seq[:budget])
                    seqs[i] = seq[:budget]
            packed = pack_chunks(lines, [len(q) + 1 for q in seqs], budget)
            out.append(["[doc]\n" + "\n".join(lines[j] for j in c) + "\n[/doc]" for c in packed])
        return out

    def process(self, text: pa.Array, batch: pa.Table) -> StageOutput:
        docs = text.to_pylist()
        per_doc = self.chunks_of(docs)
        flat = [c for cs in per_doc for c in cs]
        programs_flat = self.generate(flat) if flat else []
        lim = self.limits()
        n = len(docs)
        out_text: list[Optional[str]] = []
        programs, errors = [], np.zeros(n, np.int32)
        lines_rm, chars_rm = np.zeros(n, np.int32), np.zeros(n, np.int64)
        ignored = np.zeros(n, bool)
        too_short, dropped = np.zeros(n, bool), np.zeros(n, bool)
        pos = 0
        for i, d in enumerate(docs):
            k = len(per_doc[i])
            prog = "\n".join(p.strip() for p in programs_flat[pos:pos + k])
            pos += k
            r = run_program(d, prog, lim)
            programs.append(prog)
            errors[i], ignored[i] = r.errors, r.ignored
            lines_rm[i], chars_rm[i] = r.lines_removed, r.chars_removed
            too_short[i] = r.dropped == "too_short"
            dropped[i] = r.dropped == "drop_doc"
            out_text.append(d if r.text is None else r.text)
        cols = {"prox_chunk_program": pa.array(programs, pa.string()),
                "prox_chunk_errors": pa.array(errors, pa.int32()),
                "prox_chunk_lines_removed": pa.array(lines_rm, pa.int32()),
                "prox_chunk_chars_removed": pa.array(chars_rm, pa.int64()),
                "prox_chunk_ignored": pa.array(ignored, pa.bool_())}
        if self.config["keep_raw"]:
            cols["raw_text"] = pa.array(docs, pa.string())
        reasons = first_reason(n, [(dropped, self.reason("drop")), (too_short, self.reason("too_short"))])
        return StageOutput(columns=cols, reasons=reasons, text=pa.array(out_text, text.type))
