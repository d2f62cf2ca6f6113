"""Columns written by the model-scorer tasks (``scorers/models``).

Three tasks, three column families:

* ``causal_lm_loss``: ``lm_loss_sum`` (float64, summed token NLL in nats),
  ``lm_tokens`` (int64, tokens whose NLL was summed), ``lm_chars`` (int64,
  characters covered by those tokens), ``lm_bpc`` (float64, bits per character
  = ``lm_loss_sum / (lm_chars * ln 2)``, null when ``lm_chars`` is 0).
* ``encoder_score``: ``score`` (float32) for a single-output head, else
  ``score_0 … score_<k-1>``. The number of outputs depends on the model, so
  these columns are dynamic: use :func:`score_columns` / :func:`task_fields`.
* ``generate``: ``generated`` (string).

Every task accepts a column prefix (e.g. ``"llama7b_"``) so several models can
score the same rows; :func:`task_fields` applies it. The model stages
(``lm_loss``, ``classifier``, ``generate``) declare these columns too.
"""
from __future__ import annotations

from typing import Optional

import pyarrow as pa

LM_LOSS_SUM = "lm_loss_sum"
LM_TOKENS = "lm_tokens"
LM_CHARS = "lm_chars"
LM_BPC = "lm_bpc"
SCORE = "score"
GENERATED = "generated"

TASK_CAUSAL_LM_LOSS = "causal_lm_loss"
TASK_ENCODER_SCORE = "encoder_score"
TASK_GENERATE = "generate"
TASKS = (TASK_CAUSAL_LM_LOSS, TASK_ENCODER_SCORE, TASK_GENERATE)

LM_FIELDS = [
    pa.field(LM_LOSS_SUM, pa.float64()),
    pa.field(LM_TOKENS, pa.int64()),
    pa.field(LM_CHARS, pa.int64()),
    pa.field(LM_BPC, pa.float64()),
]
SCORE_TYPE = pa.float32()
GENERATED_FIELDS = [pa.field(GENERATED, pa.string())]


def score_column(i: Optional[int], num_outputs: int = 1, prefix: str = "") -> str:
    """Name of output ``i`` of an ``encoder_score`` head with ``num_outputs`` outputs."""
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
    if num_outputs == 1:
        return prefix + SCORE
    if i is None or not 0 <= i < num_outputs:
        raise ValueError(f"output index {i!r} out of range for {num_outputs} outputs")
    return f"{prefix}{SCORE}_{i}"


def score_columns(num_outputs: int, prefix: str = "") -> list[str]:
    """``["score"]`` for one output, else ``["score_0", …, "score_<k-1>"]``."""
    if num_outputs == 1:
        return [prefix + SCORE]
    return [score_column(i, num_outputs, prefix) for i in range(num_outputs)]


def task_fields(task: str, num_outputs: int = 1, prefix: str = "") -> list[pa.Field]:
    """Arrow fields a model task adds to every row, in order."""
    if task == TASK_CAUSAL_LM_LOSS:
        return [pa.field(prefix + f.name, f.type) for f in LM_FIELDS]
    if task == TASK_ENCODER_SCORE:
        return [pa.field(n, SCORE_TYPE) for n in score_columns(num_outputs, prefix)]
    if task == TASK_GENERATE:
        return [pa.field(prefix + GENERATED, pa.string())]
    raise ValueError(f"unknown model task {task!r}; known: {', '.join(TASKS)}")


