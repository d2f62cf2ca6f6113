"""``thresher mates loop CONFIG``: the MATES stage loop.

Per stage ``i`` (0-based): select from pool ``i`` → train the pretraining model
``steps_per_stage`` steps on the selection → evaluate the reference loss. The selection of
stage 0 (and of every stage with ``arm: random``) is the random baseline, Gumbel-top-k with
every prediction zero; from stage 1 on with ``arm: mates``: probe the current checkpoint on
a sample of pool ``i`` → fit the influence model → score pool ``i`` with it and keep the
Gumbel-top-k selection (the ``mates`` stage, through ``thresher.run``: every candidate ends
in ``select/kept`` or ``select/rejected`` with ``mates.not_selected``).

Config (YAML)::

    output: mates-run/
    candidates: {path: "pool/*.parquet", text_column: text, id_column: id}
    # or explicit per-stage pools instead: pools: ["pool0/*.parquet", "pool1/*.parquet", ...]
    reference: ref.parquet          # probe reference: 'text' or 'prompt' + 'continuation'
    eval_reference: eval.parquet    # the curve's loss (default: reference)
    stages: 3
    steps_per_stage: 200
    ratio: 0.2                      # of each pool
    temperature: 0.5
    seed: 0
    arm: mates                      # or random (the control arm: no probing, no influence model)
    probe: {sample: 1000, lr: null, max_length: null, device: auto}
    fit: {encoder: /path/to/encoder, epochs: 5, lr: 5.0e-5, batch_size: 32, max_doc_tokens: 1024}
    score: {device: auto}           # engine options of the mates stage
    trainer:
      builtin: {hidden: 128, layers: 2, heads: 4, context: 256, seq_len: 128, batch_size: 16,
                lr: 3.0e-3, warmup_steps: 20, vocab_size: 2048, tokenizer_docs: 2000, device: cpu}
      # or the user's own trainer:
      # external: {checkpoint: "ckpts/stage-{stage}", poll_seconds: 10, timeout_seconds: 86400}

Pools: with ``candidates`` every document goes to stage ``xxh64(seed, id) mod stages``:
disjoint pools of about equal size, independent of the shard layout.

External trainer hand-off: for stage ``i`` the loop writes
``OUTPUT/stage-i/train_request.json`` (``selection``: the Parquet directory to train on,
``steps``, ``stage``, ``previous_checkpoint``, ``checkpoint``: where to write) and waits
until the checkpoint directory holds a file named ``READY`` (write it last, after the
weights, the tokenizer and ``optimizer.pt``: ``torch.save(optimizer.state_dict())`` of an
AdamW, see ``thresher mates probe``). The loop then evaluates and probes that checkpoint.

Outputs: ``OUTPUT/loop.json`` (config, one summary per stage: pool and selected sizes,
train tokens, reference loss, probe cost, the influence model's held-out Spearman) and per
stage ``stage-i/{pool.parquet, select/, oracle/, influence/, checkpoint/}``. A rerun of
the same config resumes after the last completed stage.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher.pipelines import io
from thresher.pipelines.commands.mates import UsageError, _log, fit, probe
from thresher.schemas.config import ConfigError, check_top_keys, config_mapping, config_number

_KEYS = {"output", "candidates", "pools", "reference", "eval_reference", "stages", "steps_per_stage", "ratio",
         "temperature", "seed", "arm", "probe", "fit", "score", "trainer"}
READY = "READY"
#: an external trainer may write this (first line: why) to stop the loop instead of its timeout
FAILED = "FAILED"


def _num(raw: dict, key: str, default, typ, lo=None, hi=None, lo_open: bool = False):
    return config_number(key, raw.get(key, default), typ, lo, hi, lo_open)


#: what each sub-mapping may hold: key -> (type, lower bound, lower bound excluded, nullable)
_PROBE = {"sample": (int, 1, False, False), "lr": (float, 0.0, True, True), "max_length": (int, 2, False, True),
          "device": (str,), "dtype": (str,), "max_tokens_per_batch": (int, 1, False, True)}
_FIT = {"encoder": (str,), "epochs": (int, 1, False, False), "lr": (float, 0.0, True, False),
        "batch_size": (int, 1, False, False), "weight_decay": (float, 0.0, False, False),
        "dropout": (float, 0.0, False, False), "max_doc_tokens": (int, 1, False, False),
        "window": (int, 2, False, True), "eval_every": (int, 1, False, False),
        "heldout_fraction": (float, 0.0, True, False), "seed": (int, 0, False, False), "device": (str,)}
#: the mates stage's engine options a loop may set (the selection itself is the loop's)
_SCORE = {"device": (str,), "dtype": (str,), "weights_dtype": (str,), "max_tokens_per_batch": (int, 1, False, True),
          "max_batch_size": (int, 1, False, True), "accelerator": (str,)}
_BUILTIN = {"vocab_size": (int, 260, False, False), "hidden": (int, 8, False, False), "layers": (int, 1, False, False),
            "heads": (int, 1, False, False), "context": (int, 8, False, False), "seq_len": (int, 2, False, False),
            "batch_size": (int, 1, False, False), "lr": (float, 0.0, True, False),
            "warmup_steps": (int, 0, False, False), "min_lr_ratio": (float, 0.0, False, False),
            "weight_decay": (float, 0.0, False, False), "tokenizer_docs": (int, 10, False, False),
            "device": (str,), "seed": (int, 0, False, False)}
_EXTERNAL = {"checkpoint": (str,), "poll_seconds": (float, 0.0, True, False),
             "timeout_seconds": (float, 0.0, True, False)}


def check_config(raw: Any) -> dict:
    check_top_keys(raw, _KEYS, "loop")
    if not isinstance(raw.get("output"), str) or not raw["output"]:
        raise ConfigError("output", "missing (the loop's directory)")
    stages = _num(raw, "stages", 3, int, 1)
    cand = raw.get("candidates")
    pools = raw.get("pools")
    if (cand is None) == (pools is None):
        raise ConfigError("candidates", "give either candidates (one pool, split per stage) or pools (one per stage)")
    if isinstance(cand, str):
        cand = {"path": cand}
    if cand is not None:
        if not isinstance(cand, dict) or not cand.get("path"):
            raise ConfigError("candidates.path", "missing")
        cand = {"text_column": "text", "id_column": "id", **cand}
        _check_input(cand["path"], cand, "candidates.path")
    else:
        if not isinstance(pools, list) or len(pools) != stages:
            raise ConfigError("pools", f"expected a list of {stages} paths (one per stage)")
        for i, p in enumerate(pools):
            _check_input(p, {"text_column": "text", "id_column": "id"}, f"pools[{i}]")
    for key in ("reference", "eval_reference"):
        p = raw.get(key)
        if p is None and key == "eval_reference":
            continue
        if not isinstance(p, str) or not os.path.isfile(p):
            raise ConfigError(key, f"{p!r} is not a Parquet file")
        try:
            names = pq.read_schema(p).names
        except (pa.ArrowInvalid, OSError) as e:
            raise ConfigError(key, f"{p} is not a Parquet file: {e}") from None
        if "text" not in names and not {"prompt", "continuation"} <= set(names):
            raise ConfigError(key, f"{p} needs a 'text' column or 'prompt' and 'continuation' columns")
    arm = raw.get("arm", "mates")
    if arm not in ("mates", "random"):
        raise ConfigError("arm", f"expected mates or random, got {arm!r}")
    probe_c = config_mapping(raw.get("probe"), "probe", _PROBE)
    fitc = config_mapping(raw.get("fit"), "fit", _FIT)
    score_c = config_mapping(raw.get("score"), "score", _SCORE)
    if arm == "mates" and stages > 1:
        enc = fitc.get("encoder")
        if not isinstance(enc, str) or not os.path.isdir(enc):
            raise ConfigError("fit.encoder", f"{enc!r} is not an encoder checkpoint directory")
    trainer = raw.get("trainer") or {"builtin": {}}
    if not isinstance(trainer, dict) or len(trainer) != 1 or next(iter(trainer)) not in ("builtin", "external"):
        raise ConfigError("trainer", "expected {builtin: {...}} or {external: {checkpoint: ..., ...}}")
    if "external" in trainer:
        ext = config_mapping(trainer["external"] or {}, "trainer.external", _EXTERNAL)
        if "{stage}" not in ext.get("checkpoint", ""):
            raise ConfigError("trainer.external.checkpoint", "expected a path containing {stage}")
        trainer = {"external": ext}
    else:
        b = config_mapping(trainer["builtin"], "trainer.builtin", _BUILTIN)
        ctx = b.get("context", 256)
        if b.get("seq_len", 128) + 1 > ctx:
            raise ConfigError("trainer.builtin.seq_len", f"{b.get('seq_len', 128)} + 1 exceeds the model's context "
                                                         f"({ctx})")
        trainer = {"builtin": b}
    return {"output": raw["output"], "candidates": cand, "pools": pools, "reference": raw["reference"],
            "eval_reference": raw.get("eval_reference") or raw["reference"], "stages": stages,
            "steps_per_stage": _num(raw, "steps_per_stage", 200, int, 1),
            "ratio": _num(raw, "ratio", 0.2, float, 0.0, 1.0, lo_open=True),
            "temperature": _num(raw, "temperature", 0.5, float, 0.0),
            "seed": _num(raw, "seed", 0, int, 0), "arm": arm, "probe": probe_c,
            "fit": fitc, "score": score_c, "trainer": trainer}


def _check_input(path: str, cols: dict, key: str) -> None:
    files = io.discover(path) if isinstance(path, str) else []
    if not files:
        raise ConfigError(key, f"{path!r}: no Parquet files")
    names = pq.read_schema(files[0]).names
    for c in (cols["text_column"], cols["id_column"]):
        if c not in names:
            raise ConfigError(key, f"{files[0]} has no column {c!r} (columns: {', '.join(names)}); MATES needs "
                                   f"stable ids")


#: settings that do not change a loop's results (a resume may change them)
_OPERATIONAL = {("probe", "device"), ("probe", "max_tokens_per_batch"), ("fit", "device"), ("score", "device"),
                ("score", "max_tokens_per_batch"), ("score", "max_batch_size"), ("score", "accelerator"),
                ("trainer", "poll_seconds"), ("trainer", "timeout_seconds")}


def _files_identity(pattern: str) -> list:
    return [[os.path.abspath(f), os.path.getsize(f), int(os.path.getmtime(f))] for f in io.discover(pattern)]


def _fingerprint(cfg: dict) -> str:
    """The loop's identity: its settings (not the operational ones) and the size and mtime of
    every input file, so a resume never mixes inputs or settings."""
    ident = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            sub = v.get("external") or v.get("builtin") if k == "trainer" else v
            sub = {kk: vv for kk, vv in (sub or {}).items() if (k, kk) not in _OPERATIONAL}
            if k == "trainer":
                sub = {next(iter(v)): sub}
            ident[k] = sub
        else:
            ident[k] = v
    ident["files"] = {"reference": _files_identity(cfg["reference"]),
                      "eval_reference": _files_identity(cfg["eval_reference"]),
                      "candidates": _files_identity(cfg["candidates"]["path"]) if cfg["candidates"] else
                      [_files_identity(p) for p in cfg["pools"]]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- pools
def split_pools(cfg: dict, out: str, reuse: bool = False) -> list[str]:
    """Per-stage pool files: ``xxh64(seed, id) mod stages`` (streamed, layout-independent).
    ``reuse``: the files of this same loop (same fingerprint) are kept when all present."""
    import xxhash
    n = cfg["stages"]
    paths = [os.path.join(out, f"stage-{i}", "pool.parquet") for i in range(n)]
    if reuse and all(os.path.exists(p) for p in paths):
        return paths
    c = cfg["candidates"]
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    for p in paths:
        os.makedirs(os.path.dirname(p), exist_ok=True)
    writers = [pq.ParquetWriter(p + ".tmp", schema, compression="zstd") for p in paths]
    try:
        for f in io.discover(c["path"]):
            for b in io.iter_batches(f, 8192, columns=[c["id_column"], c["text_column"]]):
                ids = b.column(c["id_column"]).cast(pa.string())
                txt = b.column(c["text_column"]).cast(pa.string())
                h = np.fromiter((xxhash.xxh64_intdigest(s.encode(), cfg["seed"]) for s in ids.to_pylist()),
                                np.uint64, len(ids))
                bucket = (h % np.uint64(n)).astype(np.int64)
                for i in range(n):
                    sel = pa.array(np.flatnonzero(bucket == i))
                    if len(sel):
                        writers[i].write_table(pa.table({"id": ids.take(sel), "text": txt.take(sel)}, schema=schema))
    finally:
        for w in writers:
            w.close()
    for p in paths:
        os.replace(p + ".tmp", p)
    return paths


# ----------------------------------------------------------------------------- selection
def select(pool: str, out_dir: str, cfg: dict, stage: int, model: Optional[str]) -> dict:
    """Run the ``mates`` stage over one pool through ``thresher.run``; the kept directory."""
    from thresher.pipelines.api import run
    st: dict[str, Any] = {"name": "mates", "ratio": cfg["ratio"], "temperature": cfg["temperature"],
                          "seed": cfg["seed"] * 1000 + stage}
    if model is None:
        st["random_baseline"] = True
    else:
        st.update({"model": model, **cfg["score"]})
    run({"input": {"path": pool, "text_column": "text", "id_column": "id"}, "output": {"path": out_dir,
         "overwrite": True}, "stages": [st], "pipeline_options": {"direct_num_workers": 1}}, progress=False)
    with open(os.path.join(out_dir, "_global", "mates.json")) as f:
        return json.load(f)


def kept_texts(select_dir: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(select_dir, "kept", "*.parquet")))
    return [t for f in files for t in pq.read_table(f, columns=["text"])["text"].to_pylist() if t]


# ----------------------------------------------------------------------------- training
class _Builtin:
    def __init__(self, cfg: dict, out: str, resume_from: Optional[str]):
        from thresher.scorers.training.pretrain import Pretrainer
        b = dict(cfg["trainer"]["builtin"] or {})
        tok_docs = int(b.pop("tokenizer_docs", 2000))
        b.setdefault("seed", cfg["seed"])
        b["total_steps"] = cfg["stages"] * cfg["steps_per_stage"]
        self.device = b.get("device", "cpu")
        if resume_from:
            self.trainer = Pretrainer.load(resume_from, device=self.device)
            return
        src = cfg["candidates"]["path"] if cfg["candidates"] else cfg["pools"][0]
        from thresher.pipelines.commands.preselect import sample_documents
        texts = sample_documents(src, "text" if not cfg["candidates"] else cfg["candidates"]["text_column"],
                                 "id" if not cfg["candidates"] else cfg["candidates"]["id_column"], tok_docs,
                                 cfg["seed"])["text"].to_pylist()
        self.trainer = Pretrainer.new(texts, **b)

    def train(self, stage: int, texts: list[str], steps: int, checkpoint: str) -> dict:
        info = self.trainer.train(texts, steps, stage=stage)
        self.trainer.save(checkpoint)
        return info


class _External:
    def __init__(self, cfg: dict):
        e = cfg["trainer"]["external"]
        self.pattern = e["checkpoint"]
        self.poll = float(e.get("poll_seconds", 10))
        self.timeout = float(e.get("timeout_seconds", 86400))

    def checkpoint(self, stage: int) -> str:
        return os.path.abspath(self.pattern.format(stage=stage))

    def train(self, stage: int, request: dict, stage_dir: str, log: Callable[[str], None]) -> dict:
        ck = request["checkpoint"]
        # a READY left by an earlier loop must not be taken for this request's checkpoint
        for marker in (READY, FAILED):
            if os.path.exists(os.path.join(ck, marker)):
                os.remove(os.path.join(ck, marker))
        path = os.path.join(stage_dir, "train_request.json")
        with open(path + ".tmp", "w") as f:            # atomic: a polling trainer never reads half a file
            json.dump(request, f, indent=2)
        os.replace(path + ".tmp", path)
        log(f"stage {stage}: waiting for the external trainer's checkpoint {ck} (file {READY} marks it complete)")
        t0 = time.time()
        while not os.path.exists(os.path.join(ck, READY)):
            if os.path.exists(os.path.join(ck, FAILED)):
                with open(os.path.join(ck, FAILED), errors="replace") as f:
                    why = f.read().strip().splitlines()[:1]
                raise UsageError(f"stage {stage}: the external trainer reported failure in {ck}/{FAILED}"
                                 + (f": {why[0]}" if why else ""))
            if time.time() - t0 > self.timeout:
                raise UsageError(f"stage {stage}: no {READY} in {ck} after {self.timeout:.0f} s "
                                 f"(trainer.external.timeout_seconds)")
            time.sleep(self.poll)
        st = {}
        p = os.path.join(ck, "thresher_trainer.json")
        if os.path.isfile(p):
            with open(p) as f:
                st = json.load(f)
        return {"tokens": st.get("tokens"), "step": st.get("step"), "waited_s": round(time.time() - t0, 1)}


def reference_loss(checkpoint: str, reference: str, device: str = "cpu") -> float:
    """Mean token loss of a checkpoint on a reference Parquet (the curve's y)."""
    from thresher.scorers.models.engine import Engine
    from thresher.scorers.models.loading import load_model
    from thresher.scorers.training import mates as MT
    lm = load_model(checkpoint, weights_dtype="fp32")
    ml = min(lm.max_positions or MT.DEFAULT_CONTEXT, MT.DEFAULT_CONTEXT)
    ref = MT.reference_set(pq.read_table(reference), lm.tokenizer, ml)
    eng = Engine(device=device, cast_weights=False)
    lm.model.to(eng.device)
    return MT.ReferenceEvaluator(lm.model, lm.tokenizer, ref, eng)()


# ----------------------------------------------------------------------------- loop
def run_loop(raw: dict, log: Callable[[str], None] = _log) -> dict:
    cfg = check_config(raw)
    out = os.path.abspath(cfg["output"])
    os.makedirs(out, exist_ok=True)
    fp = _fingerprint(cfg)
    summary_path = os.path.join(out, "loop.json")
    done: list[dict] = []
    resumed = os.path.isfile(summary_path)
    if resumed:
        with open(summary_path) as f:
            prev = json.load(f)
        if prev.get("fingerprint") != fp:
            raise UsageError(f"{out} holds a loop with another config or other input files (fingerprint "
                             f"{prev.get('fingerprint')}, this one {fp}); use another output directory or remove it")
        done = prev.get("stages", [])
    elif any(n.startswith("stage-") for n in os.listdir(out)):
        raise UsageError(f"{out} holds stage directories but no loop.json (an interrupted loop of unknown config); "
                         f"use another output directory or remove it")

    def write_summary() -> None:
        tmp = summary_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"fingerprint": fp, "config": cfg, "stages": done}, f, indent=2, default=str)
        os.replace(tmp, summary_path)

    write_summary()          # the identity first: an interrupted loop is recognised when rerun
    pools = split_pools(cfg, out, reuse=resumed) if cfg["candidates"] else list(cfg["pools"])
    builtin = "builtin" in cfg["trainer"]
    ext = None if builtin else _External(cfg)
    dev = (cfg["trainer"].get("builtin") or {}).get("device", "cpu") if builtin else cfg["probe"].get("device", "cpu")
    trainer = None
    if builtin:
        last_ck = done[-1]["checkpoint"] if done else None
        trainer = _Builtin(cfg, out, last_ck)
    t_loop = time.time()
    for i in range(len(done), cfg["stages"]):
        t0 = time.time()
        sd = os.path.join(out, f"stage-{i}")
        os.makedirs(sd, exist_ok=True)
        prev_ck = done[-1]["checkpoint"] if done else None
        rec: dict[str, Any] = {"stage": i}
        model = None
        if cfg["arm"] == "mates" and i > 0:
            pc = cfg["probe"]
            orc = os.path.join(sd, "oracle")
            card = probe(prev_ck, cfg["reference"], pools[i], orc, sample=int(pc.get("sample", 1000)),
                         seed=cfg["seed"] * 1000 + i, lr=pc.get("lr"), max_length=pc.get("max_length"),
                         device=pc.get("device", "auto"), dtype=pc.get("dtype", "fp32"),
                         max_tokens_per_batch=pc.get("max_tokens_per_batch"), overwrite=True, log=log)
            rec["probe"] = {k: card[k] for k in ("probes", "seconds_per_probe", "base_ref_loss", "optimizer")}
            infl = os.path.join(sd, "influence")
            fopts = {k: v for k, v in cfg["fit"].items() if k != "encoder"}
            fopts.setdefault("seed", cfg["seed"])
            fcard = fit(orc, pools[i], cfg["fit"]["encoder"], infl, overwrite=True, log=log, **fopts)
            rec["fit"] = {k: fcard.get(k) for k in ("best_spearman", "n_train", "n_heldout", "seconds")}
            model = infl
            sp = fcard.get("best_spearman")
            log(f"stage {i}: influence model held-out Spearman {'n/a' if sp is None else f'{sp:.3f}'}")
        sel = select(pools[i], os.path.join(sd, "select"), cfg, i, model)
        rec.update({"pool_docs": sel["docs"], "selected_docs": sel["selected_docs"],
                    "selected_chars": sel["selected_chars"]})
        texts = kept_texts(os.path.join(sd, "select"))
        if builtin:
            ck = os.path.join(sd, "checkpoint")
            info = trainer.train(i, texts, cfg["steps_per_stage"], ck)
            rec["train_tokens"] = info["tokens"]
            rec["train_loss"] = info["final_loss"]
        else:
            ck = ext.checkpoint(i)
            info = ext.train(i, {"stage": i, "selection": os.path.abspath(os.path.join(sd, "select", "kept")),
                                 "steps": cfg["steps_per_stage"], "previous_checkpoint": prev_ck, "checkpoint": ck},
                             sd, log)
            rec["train_tokens"] = info.get("tokens") or 0
        rec["checkpoint"] = os.path.abspath(ck)
        rec["reference_loss"] = reference_loss(ck, cfg["eval_reference"], dev)
        rec["seconds"] = round(time.time() - t0, 2)
        log(f"stage {i}: {rec['selected_docs']:,} of {rec['pool_docs']:,} selected; {rec['train_tokens']:,} "
            f"tokens trained; reference loss {rec['reference_loss']:.4f} ({rec['seconds']:.1f} s)")
        done.append(rec)
        write_summary()
    return {"fingerprint": fp, "config": cfg, "stages": done, "seconds": round(time.time() - t_loop, 2)}
