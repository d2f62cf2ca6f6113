"""``thresher mates probe | fit | loop``: MATES oracle probing, the influence model, the stage loop.

``probe``: one optimizer step per sampled candidate from a pretraining checkpoint (with its
AdamW state), then the reference loss (``thresher.scorers.training.mates``); writes
``DIR/oracle.parquet`` (``id``, ``mates_ref_loss``, ``mates_ref_loss_delta``,
``mates_probe_tokens``) and ``DIR/card.json``.

``fit``: the data influence model (an encoder + regression head) on the oracle's scores
(``thresher.scorers.training.influence``); the directory it writes is what the ``mates``
stage's ``model:`` takes.

``loop CONFIG``: train → probe → fit → score the next pool → select, for several stages
(see :func:`loop` for the config and the checkpoint hand-off to an external trainer).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher.pipelines import io
from thresher.schemas.config import ConfigError, did_you_mean, load_command_config
from thresher.schemas.documents import InputError

ORACLE_FILE = "oracle.parquet"
CARD_FILE = "card.json"


class UsageError(ValueError):
    """A user mistake found before work: one line, exit 2."""


def _err(msg: str) -> None:
    sys.stderr.write(f"thresher: error: {msg}\n")


def _log(msg: str) -> None:
    sys.stderr.write(f"[thresher mates] {msg}\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------- inputs
def _check_candidates(pattern: str, text_column: str, id_column: str) -> None:
    try:
        files = io.discover(pattern)
    except (InputError, OSError, ValueError) as e:
        raise UsageError(f"--candidates {pattern}: {e}") from None
    if not files:
        raise UsageError(f"--candidates {pattern}: no Parquet files")
    schema = pq.read_schema(files[0])
    for c in (text_column, id_column):
        if c not in schema.names:
            raise UsageError(f"--candidates {files[0]}: no column {c!r}{did_you_mean(c, schema.names)} "
                             f"(columns: {', '.join(schema.names)}); MATES needs stable document ids")


def texts_by_id(pattern: str, wanted: Sequence[str], text_column: str = "text", id_column: str = "id"
                ) -> dict[str, str]:
    """The texts of the ``wanted`` ids, streaming the candidate shards (memory: the wanted set)."""
    want = set(wanted)
    out: dict[str, str] = {}
    for path in io.discover(pattern):
        for b in io.iter_batches(path, 4096, columns=[id_column, text_column]):
            ids = b.column(id_column).cast(pa.string()).to_pylist()
            txt = b.column(text_column).to_pylist()
            for i, t in zip(ids, txt):
                if i in want and isinstance(t, str):
                    out[i] = t
    return out


def _sample(pattern: str, size: int, seed: int, text_column: str, id_column: str) -> pa.Table:
    from thresher.pipelines.commands.preselect import sample_documents
    return sample_documents(pattern, text_column, id_column, size, seed)


def _check_device(device: str) -> None:
    import re
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine (use auto or cpu)")


def _prepare_output(path: str, overwrite: bool, names: Sequence[str]) -> None:
    present = [n for n in names if os.path.exists(os.path.join(path, n))]
    if present and not overwrite:
        raise UsageError(f"{path} already holds {', '.join(present)}; pass --overwrite or choose another directory")
    os.makedirs(path, exist_ok=True)


# ----------------------------------------------------------------------------- probe
def probe(model_dir: str, reference: str, candidates: str, output: str, *, sample: int = 1000, seed: int = 0,
          lr: Optional[float] = None, max_length: Optional[int] = None, device: str = "auto", dtype: str = "fp32",
          max_tokens_per_batch: Optional[int] = None, text_column: str = "text", id_column: str = "id",
          overwrite: bool = False, log: Callable[[str], None] = _log) -> dict:
    """Probe a deterministic sample of the candidates; write the oracle and its card."""
    from thresher.scorers.models.engine import Engine
    from thresher.scorers.models.loading import CheckpointError, detect_kind, load_model
    from thresher.scorers.training import mates as MT

    _check_device(device)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr must be a finite number > 0, got {lr}")
    if max_length is not None and max_length < 2:
        raise UsageError(f"--max-length must be >= 2, got {max_length}")
    if dtype not in ("auto", "fp32", "bf16", "fp16"):
        raise UsageError(f"--dtype must be auto, fp32, bf16 or fp16, got {dtype!r}")
    if not os.path.isdir(model_dir):
        raise UsageError(f"--model {model_dir}: not a checkpoint directory")
    try:
        kind = detect_kind(model_dir)
    except CheckpointError as e:
        raise UsageError(f"--model: {e}") from None
    if kind != "causal_lm":
        raise UsageError(f"--model {model_dir}: a {kind} checkpoint; probing needs the causal LM being pretrained")
    if not os.path.isfile(reference):
        raise UsageError(f"--reference {reference}: no such Parquet file")
    ref_table = pq.read_table(reference)
    if "text" not in ref_table.column_names and not {"prompt", "continuation"} <= set(ref_table.column_names):
        raise UsageError(f"--reference {reference}: needs a 'text' column or 'prompt' and 'continuation' columns "
                         f"(has {', '.join(ref_table.column_names)})")
    _check_candidates(candidates, text_column, id_column)
    if sample < 1:
        raise UsageError(f"--sample must be >= 1, got {sample}")
    _prepare_output(output, overwrite, [ORACLE_FILE, CARD_FILE])

    t0 = time.time()
    docs = _sample(candidates, sample, seed, text_column, id_column)
    lm = load_model(model_dir, weights_dtype="fp32")
    ctx = lm.max_positions or MT.DEFAULT_CONTEXT
    ml = int(max_length or min(ctx, MT.DEFAULT_CONTEXT))
    if ml > ctx:
        raise UsageError(f"--max-length {ml} exceeds the model's {ctx} positions")
    opt, oinfo = MT.load_optimizer(lm.model, model_dir, lr=lr)
    if not oinfo["optimizer_state"]:
        log(f"{model_dir} has no {MT.OPTIMIZER_FILE}: probing with a fresh AdamW (lr {oinfo['lr']}, betas "
            f"{tuple(oinfo['betas'])}, weight decay {oinfo['weight_decay'][0]}); the moments of the run are not used")
    if oinfo["lr"] <= 0:
        raise UsageError(f"{model_dir}: the checkpoint's scheduled learning rate is {oinfo['lr']} (the end of its "
                         f"decay?): every probe would leave the model unchanged; give --lr")
    ref = MT.reference_set(ref_table, lm.tokenizer, ml)
    engine = Engine(device=device, dtype=dtype, max_tokens_per_batch=max_tokens_per_batch, cast_weights=False)
    prober = MT.Prober(lm.model, lm.tokenizer, opt, ref, engine, max_length=ml)
    log(f"probing {docs.num_rows:,} candidates against {ref.examples:,} reference examples "
        f"({ref.scored_tokens:,} scored tokens) on {engine.device}")
    res = prober.probe(docs["text"].to_pylist(), log=log)
    ok = np.isfinite(res.ref_loss)
    diverged = int((~ok & (res.tokens > 0)).sum())
    if diverged:
        log(f"{diverged:,} probes gave a non-finite reference loss (the step diverged); they are left out "
            f"and counted in the card (probes_diverged)")
    table = pa.table({"id": docs["id"].filter(pa.array(ok)),
                      "mates_ref_loss": pa.array(res.ref_loss[ok], pa.float64()),
                      "mates_ref_loss_delta": pa.array(res.ref_loss[ok] - res.base_loss, pa.float64()),
                      "mates_probe_tokens": pa.array(res.tokens[ok], pa.int64())})
    pq.write_table(table, os.path.join(output, ORACLE_FILE))
    nparams = sum(p.numel() for p in lm.model.parameters())
    card = {"format": "thresher.mates.oracle/1", "model": os.path.abspath(model_dir), "parameters": int(nparams),
            "reference": os.path.abspath(reference), "reference_kind": ref.kind, "reference_examples": ref.examples,
            "reference_scored_tokens": ref.scored_tokens, "reference_truncated": ref.truncated,
            "candidates": candidates, "sample": sample, "seed": seed, "probes": int(ok.sum()),
            "skipped_empty": int((~ok).sum()) - diverged,
            "probes_diverged": diverged, "reference_dropped": ref.dropped, "max_length": ml,
            "device": str(engine.device),
            "optimizer": oinfo, "base_ref_loss": res.base_loss,
            "seconds_per_probe": res.info["seconds_per_probe"], "probes_per_second":
                (1.0 / res.info["seconds_per_probe"]) if res.info["seconds_per_probe"] else None,
            "seconds": round(time.time() - t0, 3)}
    with open(os.path.join(output, CARD_FILE), "w") as f:
        json.dump(card, f, indent=2)
    return card


# ----------------------------------------------------------------------------- fit
def read_oracle(path: str) -> pa.Table:
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path) if f.endswith(".parquet")) if os.path.isdir(path) else []
    if not files:
        raise UsageError(f"--oracle {path}: no oracle Parquet (thresher mates probe writes {ORACLE_FILE})")
    t = pa.concat_tables([pq.read_table(f, columns=None) for f in files])
    for c in ("id", "mates_ref_loss"):
        if c not in t.column_names:
            raise UsageError(f"--oracle {files[0]}: no column {c!r} (columns: {', '.join(t.column_names)})")
    return t


def fit(oracle: str, candidates: str, encoder: str, output: str, *, text_column: str = "text",
        id_column: str = "id", overwrite: bool = False, log: Callable[[str], None] = _log, **options: Any) -> dict:
    """Fit the influence model on the oracle's post-step reference losses."""
    from thresher.scorers.training.influence import fit_influence_model

    table = read_oracle(oracle)
    if not os.path.isdir(encoder):
        raise UsageError(f"--encoder {encoder}: not a checkpoint directory")
    if os.path.abspath(output) == os.path.abspath(encoder):
        raise UsageError("--output is the --encoder directory: the fitted model would overwrite its encoder")
    _check_device(options.get("device", "auto"))
    _check_candidates(candidates, text_column, id_column)
    _prepare_output(output, overwrite, ["influence_card.json", "thresher_head.json"])
    ids = table["id"].cast(pa.string()).to_pylist()
    y = table["mates_ref_loss"].to_numpy(zero_copy_only=False).astype(np.float64)
    found = texts_by_id(candidates, ids, text_column, id_column)
    missing = [i for i in ids if i not in found]
    if missing:
        raise UsageError(f"{len(missing):,} of {len(ids):,} oracle ids are not in --candidates {candidates} "
                         f"(e.g. {missing[0]!r}); give the pool the probes were sampled from")
    log(f"fitting the influence model on {len(ids):,} probes with {encoder}")
    return fit_influence_model([found[i] for i in ids], y, encoder, output, ids=ids, log=log, **options)


# ----------------------------------------------------------------------------- CLI
def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--text-column", default="text", help="text column of the candidates")
    ap.add_argument("--id-column", default="id", help="id column of the candidates (stable ids are required)")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier result in the output directory")


def main_probe(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="thresher mates probe", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description="MATES oracle data influence: for each sampled candidate, one AdamW "
                                             "step on it alone from the checkpoint's state, then the mean reference "
                                             "loss; the state is restored before the next probe.")
    ap.add_argument("--model", required=True, help="causal-LM checkpoint directory (with optimizer.pt when saved)")
    ap.add_argument("--reference", required=True, help="Parquet with 'text' (loss on every token) or 'prompt' + "
                                                       "'continuation' (loss on the continuation)")
    ap.add_argument("--candidates", required=True, help="candidate pool: Parquet file, directory or glob")
    ap.add_argument("--output", required=True, help="directory for oracle.parquet and card.json")
    ap.add_argument("--sample", type=int, default=1000, help="candidates to probe (smallest xxh64(seed, id))")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample")
    ap.add_argument("--lr", type=float, default=None, help="learning rate of the probe step (default: the "
                                                           "checkpoint's scheduled rate; 1e-3 without optimizer.pt)")
    ap.add_argument("--max-length", type=int, default=None, help="tokens per probe document and reference "
                                                                 "example (default min(positions, 1024))")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default="fp32", help="compute dtype: fp32 (probe differences are ~1e-4 nats: "
                                                    "below bf16's resolution) | auto (bf16 autocast on CUDA) | bf16")
    ap.add_argument("--max-tokens-per-batch", type=int, default=None, help="reference evaluation token budget")
    _common(ap)
    a = ap.parse_args(argv)
    try:
        card = probe(a.model, a.reference, a.candidates, a.output, sample=a.sample, seed=a.seed, lr=a.lr,
                     max_length=a.max_length, device=a.device, dtype=a.dtype,
                     max_tokens_per_batch=a.max_tokens_per_batch, text_column=a.text_column,
                     id_column=a.id_column, overwrite=a.overwrite)
    except (UsageError, ConfigError, InputError) as e:
        _err(str(e))
        return 2
    except ValueError as e:          # ProbeError, CheckpointError: the user's files
        _err(str(e))
        return 2
    state = "restored" if card["optimizer"]["optimizer_state"] else "absent (fresh AdamW)"
    print(f"probed {card['probes']:,} candidates: {card['seconds_per_probe']:.4f} s per probe "
          f"({card['probes_per_second']:.2f} probes/s on {card['device']}); base reference loss "
          f"{card['base_ref_loss']:.4f}; optimizer state {state}; "
          f"wrote {os.path.join(a.output, ORACLE_FILE)}")
    return 0


def main_fit(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="thresher mates fit", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description="Fit the MATES data influence model (encoder + regression head, mean "
                                             "pooling over windows) on the probed reference losses.")
    ap.add_argument("--oracle", required=True, help="directory (or Parquet file) from thresher mates probe")
    ap.add_argument("--candidates", required=True, help="the pool the probes came from (for the texts)")
    ap.add_argument("--encoder", required=True, help="local HF encoder checkpoint directory")
    ap.add_argument("--output", required=True, help="directory for the influence model")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-doc-tokens", type=int, default=1024, help="encoder tokens per document (in windows)")
    ap.add_argument("--heldout-fraction", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=20, help="held-out Spearman every N steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    _common(ap)
    a = ap.parse_args(argv)
    try:
        card = fit(a.oracle, a.candidates, a.encoder, a.output, text_column=a.text_column, id_column=a.id_column,
                   overwrite=a.overwrite, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
                   max_doc_tokens=a.max_doc_tokens, heldout_fraction=a.heldout_fraction, eval_every=a.eval_every,
                   seed=a.seed, device=a.device)
    except (UsageError, ConfigError, InputError, ValueError, RuntimeError) as e:
        _err(str(e))
        return 2
    sp = card["best_spearman"]
    print(f"influence model: held-out Spearman {'n/a (constant predictions)' if sp is None else f'{sp:.3f}'} "
          f"({card['n_train']:,} train / {card['n_heldout']:,} held out); wrote {a.output}")
    return 0


def main_loop(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="thresher mates loop", description="Run the MATES stage loop from a config.")
    ap.add_argument("config")
    ap.add_argument("--output", help="override the config's output directory")
    a = ap.parse_args(argv)
    from thresher.pipelines.commands.mates_loop import run_loop
    try:
        raw = load_command_config(a.config, a.output)
        summary = run_loop(raw)
    except (UsageError, ConfigError, InputError) as e:
        _err(str(e))
        return 2
    except (ValueError, RuntimeError) as e:     # a refused checkpoint, too few probes, a missing device
        _err(f"{type(e).__name__}: {e}" if not str(e) else str(e).splitlines()[0])
        return 2
    for st in summary["stages"]:
        sp = st.get("fit", {}).get("best_spearman")
        print(f"stage {st['stage']}: {st['selected_docs']:,} of {st['pool_docs']:,} selected, trained to "
              f"{st['train_tokens']:,} tokens, reference loss {st['reference_loss']:.4f}"
              + (f", influence Spearman {sp:.3f}" if sp is not None else ""))
    return 0
