"""``thresher experiment CONFIG``: train small LMs on each arm's selection at equal tokens.

Every arm is a thresher pipeline over the same pool (or ``random``: the pool as is, or
``selection``: an existing kept output). Each arm's kept documents are ordered per seed by
xxh64(seed, id), tokenised with ONE tokenizer shared by the whole experiment, and cut to
exactly the same number of training tokens (``token_budget`` rounded down to whole steps
of ``batch_size × seq_len``; an arm with fewer tokens is cycled, which ``epochs`` records).
Under a seed every arm starts from the same initial weights and trains with the built-in
:class:`~thresher.scorers.training.pretrain.Pretrainer` (AdamW, warmup + cosine); the mean
token loss of every eval set (its first ``eval_tokens`` tokens) is measured at ``eval_points``
evenly spaced points (the last is the end of training). A ``selection`` arm's documents that fall
in the held-out slice of the pool are removed from it too.

A ``mates`` arm is MATES as the authors run it, inside the experiment: per seed the arm's
candidates (the pool, or what its ``stages`` kept) are split into ``stages`` disjoint pools by
xxh64(seed + 7919, id); stage 0 trains its share of the steps on a random selection of pool 0
(the ``mates`` stage's ``random_baseline``, Gumbel noise only); at every later stage boundary the
experiment's own model (same tokenizer, same initial weights, same optimizer and schedule as every
other arm) is saved with its AdamW state, probed on ``probe.sample`` candidates of pool k against
``reference`` (``thresher mates probe``), an influence model is fitted on the probes (``thresher
mates fit``), pool k is scored and Gumbel-top-k selected (the ``mates`` stage through
``thresher.run``) and the model trains the stage's steps on the selection. Every stage's selection
is packed to exactly the stage's tokens, so the arm sees the same ``train_tokens`` as every other.
``random_baseline: true`` is the same loop with every selection random (the authors' control).

Config (YAML)::

    output: exp-out/
    pool: {path: "pool/*.parquet", text_column: text, id_column: id}
    token_budget: 400000          # training tokens per arm and seed (rounded down to whole steps)
    seeds: [0, 1, 2]
    model: {hidden: 128, layers: 2, heads: 4, context: 256, seq_len: 128, batch_size: 16, lr: 3.0e-3,
            warmup_steps: 20, min_lr_ratio: 0.1, weight_decay: 0.1, vocab_size: 4096,
            tokenizer_docs: 3000, device: cpu, threads: null,
            precision: fp32}          # or bf16: autocast forward/loss, fp32 weights and AdamW state
    eval_points: 4
    eval_tokens: 65536            # at most this many tokens of each eval set (its first ones)
    eval:
      wiki_en: {path: eval/wiki_en.parquet, text_column: text}
      pool_heldout: {fraction: 0.05}   # xxh64(12345, id) slice of the pool, removed before any arm runs
    prepare:                      # thresher commands run once before the arms; skipped when `creates` exists
      - {args: ["preselect", "train", "cfg.yaml"], creates: "models/preselect/classifier.bin"}
    arms:
      random: random
      filters: {stages: [{name: gopher_quality}, {name: c4}, {name: fineweb}]}
      default: {stages: default}              # thresher's default pipeline
      given: {selection: "some/kept/*.parquet"}
      mates:                                  # stage-wise MATES with the experiment's own model
        mates: {stages: 2, ratio: 0.2, temperature: 0.5, reference: ref.parquet,
                probe: {sample: 200}, fit: {encoder: /path/to/encoder, max_doc_tokens: 128}}
      default_mates: {stages: default, mates: {...}}   # MATES over what the default pipeline kept

Prepare steps run after the pool is split, so they can read ``OUTPUT/pool/train.parquet`` (the
pool without the held-out slice). A stage whose ``model`` a prepare step creates (its path is a
step's ``creates`` or holds it) is checked once the prepare steps have run.

Outputs: ``OUTPUT/results.json``, ``OUTPUT/results.md``, ``OUTPUT/loss_vs_tokens.png``,
``OUTPUT/tokenizer/``, ``OUTPUT/pool/{train,heldout}.parquet``, ``OUTPUT/arms/<arm>/run/``.
A rerun of the same config reuses finished arm runs and finished (arm, seed) trainings; a
different config in the same output directory is refused.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
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

from thresher.schemas.config import ConfigError, check_top_keys, config_number, did_you_mean, load_command_config

_KEYS = {"output", "pool", "token_budget", "seeds", "model", "eval_points", "eval_tokens", "eval", "prepare",
         "arms"}
#: model keys: (type, lower bound); ``device`` and ``threads`` are operational (not in the identity)
_MODEL = {"hidden": (int, 8), "layers": (int, 1), "heads": (int, 1), "context": (int, 8), "seq_len": (int, 2),
          "batch_size": (int, 1), "lr": (float, 0.0), "warmup_steps": (int, 0), "min_lr_ratio": (float, 0.0),
          "weight_decay": (float, 0.0), "vocab_size": (int, 260), "tokenizer_docs": (int, 10),
          "device": (str, None), "threads": (int, 1), "precision": (str, None)}
_MODEL_DEFAULTS: dict[str, Any] = {"hidden": 128, "layers": 2, "heads": 4, "context": 256, "seq_len": 128,
                                   "batch_size": 16, "lr": 3e-3, "warmup_steps": 20, "min_lr_ratio": 0.1,
                                   "weight_decay": 0.1, "vocab_size": 4096, "tokenizer_docs": 3000,
                                   "device": "cpu", "threads": None, "precision": "fp32"}
_OPERATIONAL_MODEL = {"device", "threads"}
HELDOUT_SEED = 12345
TOKENIZER_SEED = 4242
RESULTS = "results.json"


def _log(msg: str) -> None:
    sys.stderr.write(f"[thresher experiment] {msg}\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------- config
def _mapping(key: str, v: Any, known: Optional[set] = None) -> dict:
    if not isinstance(v, dict):
        raise ConfigError(key, f"expected a mapping, got {v!r}")
    if known is not None:
        for k in v:
            if k not in known:
                raise ConfigError(f"{key}.{k}", f"unknown key{did_you_mean(k, known)}; known: "
                                                f"{', '.join(sorted(known))}")
    return v


def _parquet_input(key: str, path: Any, text_column: str, id_column: Optional[str]) -> list[str]:
    from thresher.pipelines import io
    if not isinstance(path, str) or not path:
        raise ConfigError(key, f"expected a Parquet path or glob, got {path!r}")
    files = io.discover(path)
    if not files:
        raise ConfigError(key, f"{path!r}: no Parquet files")
    try:
        names = pq.read_schema(files[0]).names
    except (pa.ArrowInvalid, OSError) as e:
        raise ConfigError(key, f"{files[0]} is not a Parquet file: {e}") from None
    for c in (text_column, id_column):
        if c is not None and c not in names:
            raise ConfigError(key, f"{files[0]} has no column {c!r} (columns: {', '.join(names)})")
    return files


def _pending_model(stage: Any, pending: Sequence[str]) -> bool:
    """Whether the stage's ``model`` is (or holds) a path a prepare step creates."""
    m = stage.get("model") if isinstance(stage, dict) else None
    if not isinstance(m, str) or not m or os.path.exists(m):
        return False
    m = os.path.abspath(m)
    return any(c == m or c.startswith(m.rstrip(os.sep) + os.sep) for c in pending)


def _check_stages(key: str, stages: Any, pending: Sequence[str] = ()) -> list[dict]:
    """The arm's stages, checked as ``thresher run`` would check them. A stage whose model a
    prepare step creates is not built yet (:func:`recheck_after_prepare` builds it)."""
    from thresher.pipelines.registry import build_stages, check_columns
    from thresher.schemas.config import parse_config
    if stages == "default":
        from thresher.scorers.registry import default_pipeline
        return default_pipeline()
    if not isinstance(stages, list) or not stages:
        raise ConfigError(key, f"expected a non-empty list of stages or 'default', got {stages!r}")
    if any(_pending_model(st, pending) for st in stages):
        return [dict(s) for s in stages]
    try:
        cfg = parse_config({"input": {"path": "-"}, "output": "-", "stages": stages})
        check_columns(build_stages(cfg.stages))
    except ConfigError as e:
        sub = e.key[len("stages"):] if e.key.startswith("stages") else (f".{e.key}" if e.key else "")
        raise ConfigError(f"{key}{sub}", e.message) from None
    return [dict(s) for s in stages]


def recheck_after_prepare(cfg: dict) -> None:
    """Build every arm's stages now that the prepare steps' outputs exist."""
    for name, arm in cfg["arms"].items():
        if arm.get("stages"):
            _check_stages(f"arms.{name}.stages", arm["stages"])


#: a mates arm's keys; probe / fit / score sub-mappings are the MATES loop's
_MATES_KEYS = {"stages", "ratio", "temperature", "reference", "probe", "fit", "score", "random_baseline"}
MATES_SPLIT_SEED = 7919


def _check_mates(key: str, spec: Any, steps: int) -> dict:
    from thresher.pipelines.commands.mates_loop import _FIT, _PROBE, _SCORE
    from thresher.schemas.config import config_mapping
    spec = _mapping(key, spec, _MATES_KEYS)
    n = config_number(f"{key}.stages", spec.get("stages", 2), int, 1)
    if n > steps:
        raise ConfigError(f"{key}.stages", f"{n} stages but only {steps} training steps")
    rb = spec.get("random_baseline", False)
    if not isinstance(rb, bool):
        raise ConfigError(f"{key}.random_baseline", f"expected true or false, got {rb!r}")
    ref = spec.get("reference")
    if not rb and n > 1:
        if not isinstance(ref, str) or not os.path.isfile(ref):
            raise ConfigError(f"{key}.reference", f"{ref!r} is not a Parquet file (the probes' reference set)")
        names = pq.read_schema(ref).names
        if "text" not in names and not {"prompt", "continuation"} <= set(names):
            raise ConfigError(f"{key}.reference", f"{ref} needs a 'text' column or 'prompt' and 'continuation'")
    fit_c = config_mapping(spec.get("fit"), f"{key}.fit", _FIT)
    if not rb and n > 1 and not os.path.isdir(str(fit_c.get("encoder", ""))):
        raise ConfigError(f"{key}.fit.encoder", f"{fit_c.get('encoder')!r} is not an encoder checkpoint directory")
    return {"stages": n, "ratio": config_number(f"{key}.ratio", spec.get("ratio", 0.2), float, 0.0, 1.0, True),
            "temperature": config_number(f"{key}.temperature", spec.get("temperature", 0.5), float, 0.0),
            "reference": ref, "random_baseline": rb,
            "probe": config_mapping(spec.get("probe"), f"{key}.probe", _PROBE), "fit": fit_c,
            "score": config_mapping(spec.get("score"), f"{key}.score", _SCORE)}


def check_config(raw: Any) -> dict:
    """The normalised config, or a :class:`ConfigError` naming the key at fault."""
    check_top_keys(raw, _KEYS, "experiment")
    out = raw.get("output")
    if not isinstance(out, str) or not out:
        raise ConfigError("output", "missing (the experiment's directory)")
    pool = raw.get("pool")
    if pool is None:
        raise ConfigError("pool", "missing (the candidate pool: {path: ..., text_column: text, id_column: id})")
    if isinstance(pool, str):
        pool = {"path": pool}
    pool = dict(_mapping("pool", pool, {"path", "text_column", "id_column"}))
    pool = {"text_column": "text", "id_column": "id", **pool}
    if not pool.get("path"):
        raise ConfigError("pool.path", "missing")
    _parquet_input("pool.path", pool["path"], pool["text_column"], pool["id_column"])

    model = dict(_MODEL_DEFAULTS)
    for k, v in _mapping("model", raw.get("model") or {}, set(_MODEL)).items():
        typ, lo = _MODEL[k]
        if typ is str:
            if not isinstance(v, str) or not v:
                raise ConfigError(f"model.{k}", f"expected a string, got {v!r}")
            model[k] = v
            if k == "precision":
                from thresher.scorers.training.pretrain import PRECISIONS  # imports torch: only when given
                if v not in PRECISIONS:
                    raise ConfigError("model.precision", f"{v!r} is not one of {', '.join(PRECISIONS)}")
        elif k == "threads" and v is None:
            model[k] = None
        else:
            model[k] = config_number(f"model.{k}", v, typ, lo, lo_open=(k == "lr"))
    if model["seq_len"] + 1 > model["context"]:
        raise ConfigError("model.seq_len", f"{model['seq_len']} + 1 exceeds the model's context ({model['context']})")
    if model["hidden"] % model["heads"]:
        raise ConfigError("model.heads", f"hidden ({model['hidden']}) is not a multiple of heads ({model['heads']})")

    step_tokens = model["batch_size"] * model["seq_len"]
    if "token_budget" not in raw:
        raise ConfigError("token_budget", "missing (training tokens per arm and seed)")
    budget = config_number("token_budget", raw["token_budget"], int, 1)
    if budget < step_tokens:
        raise ConfigError("token_budget", f"{budget} is smaller than one step (batch_size × seq_len = {step_tokens})")
    steps = budget // step_tokens
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError("seeds", f"expected a non-empty list of integers, got {seeds!r}")
    seeds = [config_number(f"seeds[{i}]", s, int, 0) for i, s in enumerate(seeds)]
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", f"repeated seeds in {seeds}")
    points = config_number("eval_points", raw.get("eval_points", 4), int, 1)
    if points > steps:
        raise ConfigError("eval_points", f"{points} eval points but only {steps} training steps")
    eval_tokens = config_number("eval_tokens", raw.get("eval_tokens", 65536), int, model["seq_len"])

    ev_raw = raw.get("eval")
    if not ev_raw:
        raise ConfigError("eval", "missing (at least one target set: {name: {path: ...}} or {name: {fraction: f}})")
    evals: dict[str, dict] = {}
    heldout = None
    for name, spec in _mapping("eval", ev_raw).items():
        key = f"eval.{name}"
        if isinstance(spec, str):
            spec = {"path": spec}
        spec = dict(_mapping(key, spec, {"path", "text_column", "fraction"}))
        if ("path" in spec) == ("fraction" in spec):
            raise ConfigError(key, "give either path (a Parquet target set) or fraction (a held-out slice of the pool)")
        if "fraction" in spec:
            if heldout is not None:
                raise ConfigError(key, f"only one held-out slice of the pool (already: eval.{heldout})")
            f = config_number(f"{key}.fraction", spec["fraction"], float, 0.0, lo_open=True)
            if f >= 0.5:
                raise ConfigError(f"{key}.fraction", f"must be below 0.5, got {f}")
            heldout = str(name)
            evals[str(name)] = {"fraction": f}
        else:
            tc = spec.get("text_column", "text")
            _parquet_input(f"{key}.path", spec["path"], tc, None)
            evals[str(name)] = {"path": spec["path"], "text_column": tc}

    prepare = []
    for i, p in enumerate(raw.get("prepare") or []):
        key = f"prepare[{i}]"
        p = _mapping(key, p, {"args", "creates"})
        args = p.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            raise ConfigError(f"{key}.args", f"expected a list of strings (a thresher command line), got {args!r}")
        cr = p.get("creates")
        if cr is not None and (not isinstance(cr, str) or not cr):
            raise ConfigError(f"{key}.creates", f"expected a path, got {cr!r}")
        prepare.append({"args": list(args), "creates": cr})

    pending = [os.path.abspath(p["creates"]) for p in prepare if p["creates"]]
    arms_raw = raw.get("arms")
    if not arms_raw:
        raise ConfigError("arms", "missing (at least one arm: random, {stages: [...]} or {selection: ...})")
    arms: dict[str, dict] = {}
    for name, spec in _mapping("arms", arms_raw).items():
        key = f"arms.{name}"
        name = str(name)
        if not name or "/" in name or name.startswith((".", "_")):
            raise ConfigError(key, f"{name!r} is not a usable arm name (a directory name)")
        if spec == "random":
            arms[name] = {"kind": "random"}
            continue
        if not isinstance(spec, dict):
            raise ConfigError(key, f"unknown arm kind {spec!r}: expected random, {{stages: [...]}}, "
                                   f"{{stages: default}} or {{selection: GLOB}}")
        if "mates" in spec:
            _mapping(key, spec, {"mates", "stages", "pipeline_options"})
            po = spec.get("pipeline_options") or {"direct_num_workers": 1}
            _mapping(f"{key}.pipeline_options", po)
            pre = _check_stages(f"{key}.stages", spec["stages"], pending) if "stages" in spec else None
            arms[name] = {"kind": "mates", "stages": pre, "pipeline_options": dict(po),
                          "mates": _check_mates(f"{key}.mates", spec["mates"], steps)}
            continue
        kinds = [k for k in ("stages", "selection") if k in spec]
        if len(kinds) != 1:
            raise ConfigError(key, f"unknown arm kind {sorted(spec)}: give exactly one of stages, selection or mates")
        _mapping(key, spec, {"stages", "selection", "pipeline_options"})
        if kinds[0] == "stages":
            po = spec.get("pipeline_options") or {"direct_num_workers": 1}
            _mapping(f"{key}.pipeline_options", po)
            arms[name] = {"kind": "stages", "stages": _check_stages(f"{key}.stages", spec["stages"], pending),
                          "pipeline_options": dict(po)}
        else:
            sel = spec["selection"]
            if not isinstance(sel, str) or not sel:
                raise ConfigError(f"{key}.selection", f"expected a Parquet path or glob, got {sel!r}")
            if not prepare:      # a prepare step may create it
                _parquet_input(f"{key}.selection", sel, "text", None)
            arms[name] = {"kind": "selection", "selection": sel}
    return {"output": out, "pool": pool, "token_budget": budget, "train_tokens": steps * step_tokens,
            "steps": steps, "seeds": seeds, "model": model, "eval_points": points, "eval_tokens": eval_tokens,
            "eval": evals, "heldout": heldout, "prepare": prepare, "arms": arms}


def _files_identity(pattern: str) -> list:
    from thresher.pipelines import io
    return [[os.path.abspath(f), os.path.getsize(f), int(os.path.getmtime(f))] for f in io.discover(pattern)]


def fingerprint(cfg: dict) -> str:
    """The experiment's identity: its settings (not output, device, threads) and the size and
    mtime of the pool's and eval sets' files."""
    ident = {k: v for k, v in cfg.items() if k != "output"}
    ident["model"] = {k: v for k, v in cfg["model"].items() if k not in _OPERATIONAL_MODEL}
    if ident["model"].get("precision") == "fp32":     # the default before the key existed: same identity
        del ident["model"]["precision"]
    ident["files"] = {"pool": _files_identity(cfg["pool"]["path"]),
                      **{n: _files_identity(e["path"]) for n, e in cfg["eval"].items() if "path" in e}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- data
def _xxh(ids: Sequence[str], seed: int) -> np.ndarray:
    import xxhash
    return np.fromiter((xxhash.xxh64_intdigest(s.encode(), seed) for s in ids), np.uint64, len(ids))


def split_pool(cfg: dict, out: str) -> dict:
    """``OUTPUT/pool/train.parquet`` (what the arms select from) and, with a held-out eval set,
    ``heldout.parquet``: the documents whose xxh64(12345, id) falls in the lowest ``fraction``."""
    from thresher.pipelines import io
    d = os.path.join(out, "pool")
    paths = {"train": os.path.join(d, "train.parquet"), "heldout": os.path.join(d, "heldout.parquet")}
    done = os.path.join(d, "_done.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    os.makedirs(d, exist_ok=True)
    p = cfg["pool"]
    frac = cfg["eval"][cfg["heldout"]]["fraction"] if cfg["heldout"] else 0.0
    cut = np.uint64(min(int(frac * 2.0 ** 64), 2 ** 64 - 1))
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    writers = {k: pq.ParquetWriter(v + ".tmp", schema, compression="zstd") for k, v in paths.items()}
    counts = {"train": 0, "heldout": 0}
    try:
        for f in io.discover(p["path"]):
            for b in io.iter_batches(f, 4096, columns=[p["id_column"], p["text_column"]]):
                ids = b.column(p["id_column"]).cast(pa.string())
                txt = b.column(p["text_column"]).cast(pa.string())
                held = _xxh(ids.to_pylist(), HELDOUT_SEED) < cut
                for k, mask in (("heldout", held), ("train", ~held)):
                    sel = pa.array(np.flatnonzero(mask))
                    if len(sel):
                        writers[k].write_table(pa.table({"id": ids.take(sel), "text": txt.take(sel)}, schema=schema),
                                               row_group_size=2000)
                        counts[k] += len(sel)
    finally:
        for w in writers.values():
            w.close()
    for v in paths.values():
        os.replace(v + ".tmp", v)
    if cfg["heldout"] and counts["heldout"] == 0:
        raise ConfigError(f"eval.{cfg['heldout']}.fraction", "the held-out slice of the pool is empty")
    info = {"paths": paths, "docs": counts}
    with open(done, "w") as f:
        json.dump(info, f)
    return info


def read_docs(files: Sequence[str], text_column: str = "text", id_column: Optional[str] = "id") -> tuple[list, list]:
    ids: list[str] = []
    texts: list[str] = []
    for f in files:
        names = pq.read_schema(f).names
        cols = [text_column] + ([id_column] if id_column and id_column in names else [])
        t = pq.read_table(f, columns=cols)
        tx = t.column(text_column).cast(pa.string()).to_pylist()
        ii = (t.column(id_column).cast(pa.string()).to_pylist() if len(cols) == 2
              else [f"{os.path.basename(f)}:{i}" for i in range(len(tx))])
        for i, s in zip(ii, tx):
            if isinstance(s, str) and s.strip():
                ids.append(i)
                texts.append(s)
    return ids, texts


def tokenize_docs(tok, texts: Sequence[str], chunk: int = 2048) -> list[np.ndarray]:
    """Per document its token ids plus EOS (as ``token_stream`` packs them)."""
    eos = tok.eos_token_id
    out = []
    for i in range(0, len(texts), chunk):
        enc = tok(list(texts[i: i + chunk]), add_special_tokens=False, verbose=False)["input_ids"]
        out += [np.asarray(list(e) + [eos], dtype=np.int64) for e in enc]
    return out


def pack(doc_tokens: Sequence[np.ndarray], ids: Sequence[str], seed: int, n_tokens: int) -> tuple[np.ndarray, dict]:
    """Exactly ``n_tokens`` tokens: documents in xxh64(seed, id) order, the last one cut, the
    whole ordered stream cycled when it holds fewer tokens."""
    order = np.argsort(_xxh(ids, seed), kind="stable")
    total = int(sum(len(doc_tokens[i]) for i in order))
    if total == 0:
        raise ValueError("the selection holds no tokens")
    parts, have = [], 0
    while have < n_tokens:
        for i in order:
            t = doc_tokens[i]
            take = min(len(t), n_tokens - have)
            parts.append(t[:take])
            have += take
            if have >= n_tokens:
                break
    stream = np.concatenate(parts)
    assert stream.shape[0] == n_tokens, (stream.shape, n_tokens)
    return stream, {"unique_tokens": min(total, n_tokens), "arm_tokens": total, "epochs": n_tokens / total}


# ----------------------------------------------------------------------------- arms
def prepare(cfg: dict, log: Callable[[str], None]) -> list[dict]:
    """Run each prepare step unless its ``creates`` exists; what each did (ran or skipped, seconds)."""
    from thresher.pipelines.cli import main as cli_main
    done = []
    for i, p in enumerate(cfg["prepare"]):
        if p["creates"] and os.path.exists(p["creates"]):
            log(f"prepare[{i}]: {p['creates']} exists, skipped")
            done.append({"args": p["args"], "ran": False})
            continue
        log(f"prepare[{i}]: thresher {' '.join(p['args'])}")
        t0 = time.time()
        rc = cli_main(list(p["args"]))
        if rc:
            raise RuntimeError(f"prepare[{i}] (thresher {' '.join(p['args'])}) exited with {rc}")
        if p["creates"] and not os.path.exists(p["creates"]):
            raise RuntimeError(f"prepare[{i}] finished but did not create {p['creates']}")
        done.append({"args": p["args"], "ran": True, "seconds": round(time.time() - t0, 2)})
    return done


def arm_documents(name: str, arm: dict, pool_train: str, out: str) -> tuple[list, list, dict]:
    """The arm's kept (ids, texts) and what its run did."""
    info: dict[str, Any] = {"kind": arm["kind"]}
    if arm["kind"] == "random" or (arm["kind"] == "mates" and not arm["stages"]):
        ids, texts = read_docs([pool_train])
    elif arm["kind"] == "selection":
        from thresher.pipelines import io
        files = io.discover(arm["selection"])
        if not files:
            raise ConfigError(f"arms.{name}.selection", f"{arm['selection']!r}: no Parquet files")
        ids, texts = read_docs(files)
        held = os.path.join(out, "pool", "heldout.parquet")
        if os.path.exists(held):        # the held-out target stays out of every arm's training text
            drop = set(pq.read_table(held, columns=["id"])["id"].to_pylist())
            keep = [i for i, d in enumerate(ids) if d not in drop]
            info["heldout_removed"] = len(ids) - len(keep)
            ids, texts = [ids[i] for i in keep], [texts[i] for i in keep]
    else:
        from thresher.pipelines.api import run
        run_dir = os.path.join(out, "arms", name, "run")
        t0 = time.time()
        stats = run({"input": {"path": pool_train, "text_column": "text", "id_column": "id"},
                     "output": {"path": run_dir}, "stages": arm["stages"],
                     "pipeline_options": arm["pipeline_options"]}, progress=False)
        info.update({"run": run_dir, "input_docs": stats["input_rows"], "run_seconds": round(time.time() - t0, 2),
                     "rejected": {st["id"]: st["rejected"] for st in stats["stages"]}})
        ids, texts = read_docs(sorted(glob.glob(os.path.join(run_dir, "kept", "*.parquet"))))
    if not texts:
        raise RuntimeError(f"arm {name} kept no documents")
    info.update({"kept_docs": len(texts), "kept_chars": int(sum(len(t) for t in texts))})
    return ids, texts, info


# ----------------------------------------------------------------------------- training
def _trainer_class():
    import torch

    from thresher.scorers.training.pretrain import Pretrainer

    class PackedPretrainer(Pretrainer):
        """The shared pretrainer, fed pre-packed token blocks (a tensor) instead of texts."""

        def blocks(self, texts):
            if isinstance(texts, torch.Tensor):
                return texts
            return super().blocks(texts)

    return PackedPretrainer


def shared_tokenizer(cfg: dict, out: str, pool_train: str):
    from transformers import AutoTokenizer

    from thresher.pipelines.commands.preselect import sample_documents
    from thresher.scorers.training.lm import train_tokenizer
    d = os.path.join(out, "tokenizer")
    if os.path.exists(os.path.join(d, "tokenizer.json")):
        return AutoTokenizer.from_pretrained(d, local_files_only=True, trust_remote_code=False)
    m = cfg["model"]
    texts = sample_documents(pool_train, "text", "id", m["tokenizer_docs"], TOKENIZER_SEED)["text"].to_pylist()
    tok = train_tokenizer(texts, vocab_size=m["vocab_size"], model_max_length=m["context"])
    tmp = d + ".tmp"
    tok.save_pretrained(tmp)
    os.replace(tmp, d)
    return tok


def train_arm_seed(cfg: dict, tok, stream: np.ndarray, seed: int, evals: dict) -> dict:
    import torch

    from thresher.scorers.training.lm import new_causal_lm
    m = cfg["model"]
    seq, bs, steps = m["seq_len"], m["batch_size"], cfg["steps"]
    assert stream.shape[0] == cfg["train_tokens"] == steps * bs * seq
    blocks = torch.from_numpy(stream.reshape(steps * bs, seq))
    model = new_causal_lm(tok, hidden=m["hidden"], layers=m["layers"], heads=m["heads"], context=m["context"],
                          seed=seed)
    tr = _trainer_class()(model, tok, total_steps=steps, lr=m["lr"], warmup_steps=m["warmup_steps"],
                          min_lr_ratio=m["min_lr_ratio"], weight_decay=m["weight_decay"], seq_len=seq,
                          batch_size=bs, seed=seed, device=m["device"],
                          precision=m["precision"])
    bounds = [round(k * steps / cfg["eval_points"]) for k in range(cfg["eval_points"] + 1)]
    curve = []
    for k in range(cfg["eval_points"]):
        lo, hi = bounds[k], bounds[k + 1]
        if hi > lo:      # each block of the chunk exactly once, shuffled by (seed, chunk)
            tr.train(blocks[lo * bs: hi * bs], hi - lo, stage=k)
        assert tr.tokens == hi * bs * seq
        curve.append([tr.tokens, {n: tr.eval_loss(b) for n, b in evals.items()}])
    assert tr.tokens == cfg["train_tokens"] and tr.step == steps
    return {"tokens": tr.tokens, "steps": tr.step, "curve": curve, "final": curve[-1][1],
            "params": int(sum(p.numel() for p in tr.model.parameters()))}


def _write_docs(path: str, ids: Sequence[str], texts: Sequence[str]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(list(ids), pa.string()), "text": pa.array(list(texts), pa.string())}),
                   path + ".tmp", compression="zstd", row_group_size=2000)
    os.replace(path + ".tmp", path)
    return path


def mates_select(pool: str, out_dir: str, mates: dict, seed: int, stage: int, model: Optional[str],
                 device: str) -> tuple[list, dict]:
    """The ``mates`` stage over one stage pool through ``thresher.run``: the kept ids and its
    ``_global/mates.json``. ``model`` None: the random baseline (Gumbel noise alone)."""
    from thresher.pipelines.api import run
    st: dict[str, Any] = {"name": "mates", "ratio": mates["ratio"], "temperature": mates["temperature"],
                          "seed": seed * 1000 + stage}
    if model is None:
        st["random_baseline"] = True
    else:
        st.update({"model": model, "device": device, **mates["score"]})
    run({"input": {"path": pool, "text_column": "text", "id_column": "id"},
         "output": {"path": out_dir, "overwrite": True}, "stages": [st],
         "pipeline_options": {"direct_num_workers": 1}}, progress=False)
    with open(os.path.join(out_dir, "_global", "mates.json")) as f:
        g = json.load(f)
    kept, _ = read_docs(sorted(glob.glob(os.path.join(out_dir, "kept", "*.parquet"))))
    return kept, g


def train_mates_seed(cfg: dict, tok, name: str, arm: dict, ids: Sequence[str], texts: Sequence[str],
                     doc_tokens: Sequence[np.ndarray], seed: int, evals: dict, out: str,
                     log: Callable[[str], None]) -> dict:
    """MATES stage by stage with the experiment's model (see the module docstring)."""
    import torch

    from thresher.pipelines.commands.mates import fit, probe
    from thresher.scorers.training.lm import new_causal_lm
    m, mc = cfg["model"], arm["mates"]
    seq, bs, steps, n_st = m["seq_len"], m["batch_size"], cfg["steps"], mc["stages"]
    sd = os.path.join(out, "arms", name, f"seed-{seed}")
    part = (_xxh(ids, seed + MATES_SPLIT_SEED) % np.uint64(n_st)).astype(np.int64)
    index = {d: i for i, d in enumerate(ids)}
    model = new_causal_lm(tok, hidden=m["hidden"], layers=m["layers"], heads=m["heads"], context=m["context"],
                          seed=seed)
    tr = _trainer_class()(model, tok, total_steps=steps, lr=m["lr"], warmup_steps=m["warmup_steps"],
                          min_lr_ratio=m["min_lr_ratio"], weight_decay=m["weight_decay"], seq_len=seq,
                          batch_size=bs, seed=seed, device=m["device"],
                          precision=m["precision"])
    s_bounds = [round(k * steps / n_st) for k in range(n_st + 1)]
    e_bounds = [round(k * steps / cfg["eval_points"]) for k in range(1, cfg["eval_points"] + 1)]
    curve, stages, selected_tokens = [], [], 0
    for k in range(n_st):
        t0 = time.time()
        lo, hi = s_bounds[k], s_bounds[k + 1]
        stage_dir = os.path.join(sd, f"stage-{k}")
        members = np.flatnonzero(part == k)
        pool = _write_docs(os.path.join(stage_dir, "pool.parquet"), [ids[i] for i in members],
                           [texts[i] for i in members])
        rec: dict[str, Any] = {"stage": k, "steps": [lo, hi], "pool_docs": int(members.size)}
        infl = None
        if k > 0 and not mc["random_baseline"]:
            ck = tr.save(os.path.join(stage_dir, "checkpoint"))
            pc = mc["probe"]
            card = probe(ck, mc["reference"], pool, os.path.join(stage_dir, "oracle"),
                         sample=int(pc.get("sample", 1000)), seed=seed * 1000 + k, lr=pc.get("lr"),
                         max_length=pc.get("max_length"), device=pc.get("device", m["device"]),
                         dtype=pc.get("dtype", "fp32"), max_tokens_per_batch=pc.get("max_tokens_per_batch"),
                         overwrite=True, log=log)
            rec["probe"] = {x: card.get(x) for x in ("probes", "seconds_per_probe", "base_ref_loss")}
            infl = os.path.join(stage_dir, "influence")
            fopts = {x: v for x, v in mc["fit"].items() if x != "encoder"}
            fopts.setdefault("seed", seed)
            fopts.setdefault("device", m["device"])
            fcard = fit(os.path.join(stage_dir, "oracle"), pool, mc["fit"]["encoder"], infl, overwrite=True,
                        log=log, **fopts)
            rec["fit"] = {x: fcard.get(x) for x in ("best_spearman", "n_train", "n_heldout", "seconds")}
        kept, g = mates_select(pool, os.path.join(stage_dir, "select"), mc, seed, k, infl,
                               mc["score"].get("device", m["device"]))
        if not kept:
            raise RuntimeError(f"arm {name} seed {seed} stage {k}: the selection is empty")
        stream, rep = pack([doc_tokens[index[d]] for d in kept], kept, seed * 1000 + k, (hi - lo) * bs * seq)
        selected_tokens += rep["arm_tokens"]
        rec.update({"selected_docs": len(kept), "selected_chars": int(g.get("selected_chars") or
                                                                          sum(len(texts[index[d]]) for d in kept)),
                    "selected_tokens": rep["arm_tokens"], "epochs": rep["epochs"], "selected_ids_file":
                    os.path.join(stage_dir, "select", "kept")})
        blocks = torch.from_numpy(stream.reshape(-1, seq))
        cuts = sorted({lo, hi} | {b for b in e_bounds if lo < b < hi})
        for a, b in zip(cuts, cuts[1:]):
            tr.train(blocks[(a - lo) * bs: (b - lo) * bs], b - a, stage=len(curve) + 100 * k)
            assert tr.tokens == b * bs * seq
            if b in e_bounds:
                curve.append([tr.tokens, {n: tr.eval_loss(x) for n, x in evals.items()}])
        rec["seconds"] = round(time.time() - t0, 2)
        sp = (rec.get("fit") or {}).get("best_spearman")
        log(f"arm {name} seed {seed} stage {k}: {len(kept):,} of {members.size:,} selected"
            + ("" if infl else " (random)") + ("" if sp is None else f", influence Spearman {sp:.3f}")
            + f" ({rec['seconds']:.0f}s)")
        stages.append(rec)
    assert tr.tokens == cfg["train_tokens"] and tr.step == steps and len(curve) == cfg["eval_points"]
    return {"tokens": tr.tokens, "steps": tr.step, "curve": curve, "final": curve[-1][1],
            "params": int(sum(p.numel() for p in tr.model.parameters())), "stages": stages,
            "selected_docs": sum(r["selected_docs"] for r in stages),
            "selected_chars": sum(r["selected_chars"] for r in stages),
            "unique_tokens": min(selected_tokens, tr.tokens), "arm_tokens": selected_tokens,
            "epochs": tr.tokens / selected_tokens}


# ----------------------------------------------------------------------------- outputs
def _stats(vals: list[float]) -> tuple[float, float]:
    a = np.asarray(vals, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def summary_rows(results: dict) -> list[dict]:
    names = list(results["config"]["eval"])
    base = results["arms"].get("random")
    rows = []
    for arm, r in results["arms"].items():
        seeds = r.get("seeds", {})
        row = {"arm": arm, "kept_docs": r.get("kept_docs"), "kept_chars": r.get("kept_chars"),
               "epochs": float(np.mean([s["epochs"] for s in seeds.values()])) if seeds else math.nan}
        for n in names:
            vals = [s["final"][n] for s in seeds.values()]
            row[n] = _stats(vals) if vals else (math.nan, math.nan)
            if base and base.get("seeds") and arm != "random":
                common = [sd for sd in seeds if sd in base["seeds"]]
                d = [seeds[sd]["final"][n] - base["seeds"][sd]["final"][n] for sd in common]
                row[f"{n}_delta"] = _stats(d) if d else (math.nan, math.nan)
        rows.append(row)
    return rows


def markdown_table(results: dict) -> str:
    names = list(results["config"]["eval"])
    cfg = results["config"]
    head = ["arm", "kept docs", "kept chars", "epochs"] + [f"{n} loss" for n in names] + \
        [f"Δ {n} vs random" for n in names]
    lines = [f"Final mean token loss (nats) after {cfg['train_tokens']:,} training tokens per arm and seed "
             f"(mean ± std over seeds {cfg['seeds']}); Δ: the arm's loss minus random's under the same seed "
             f"(negative = better than random).", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in summary_rows(results):
        cells = [r["arm"], f"{r['kept_docs']:,}", f"{r['kept_chars']:,}", f"{r['epochs']:.2f}"]
        cells += [f"{r[n][0]:.4f} ± {r[n][1]:.4f}" for n in names]
        cells += [(f"{r[n + '_delta'][0]:+.4f} ± {r[n + '_delta'][1]:.4f}" if n + "_delta" in r else "—")
                  for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str, log: Callable[[str], None]) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no loss_vs_tokens.png (pip install matplotlib); JSON and Markdown written")
        return False
    names = list(results["config"]["eval"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, n in zip(axes[0], names):
        for arm, r in results["arms"].items():
            curves = [s["curve"] for s in r.get("seeds", {}).values()]
            if not curves:
                continue
            x = [p[0] for p in curves[0]]
            y = np.mean([[p[1][n] for p in c] for c in curves], axis=0)
            ax.plot(x, y, marker="o", label=arm)
        ax.set_title(n)
        ax.set_xlabel("training tokens seen")
        ax.set_ylabel("mean token loss (nats)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"thresher experiment: loss vs tokens (mean over seeds {results['config']['seeds']})")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return True


def _write_json(path: str, obj: Any) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------- main
def run_experiment(raw: dict, log: Callable[[str], None] = _log) -> dict:
    t_start = time.time()
    cfg = check_config(raw)
    out = cfg["output"]
    os.makedirs(out, exist_ok=True)
    fp = fingerprint(cfg)
    res_path = os.path.join(out, RESULTS)
    results: dict[str, Any] = {}
    if os.path.exists(res_path):
        with open(res_path) as f:
            results = json.load(f)
        if results.get("fingerprint") != fp:
            raise ConfigError("output", f"{out} holds another experiment (a different config or input); "
                                        f"use another output directory or remove it")
    elif os.listdir(out):
        stray = [n for n in os.listdir(out) if n not in ("pool", "tokenizer", "arms")]
        if stray:
            raise ConfigError("output", f"{out} is not empty and holds no experiment ({', '.join(sorted(stray)[:3])})")
    results = {"fingerprint": fp, "config": {k: v for k, v in cfg.items()}, "arms": results.get("arms", {}),
               "tokenizer": os.path.join(out, "tokenizer"), "prepare": results.get("prepare", [])}
    _write_json(res_path, results)

    threads = cfg["model"]["threads"]
    if threads:
        import torch
        old_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        pool = split_pool(cfg, out)
        log(f"pool: {pool['docs']['train']:,} documents to select from, {pool['docs']['heldout']:,} held out")
        ran = prepare(cfg, log)
        earlier = results.get("prepare") or []     # keep what an earlier run of a step measured
        results["prepare"] = [earlier[i] if not r["ran"] and i < len(earlier) and earlier[i].get("ran") else r
                              for i, r in enumerate(ran)]
        recheck_after_prepare(cfg)
        tok = shared_tokenizer(cfg, out, pool["paths"]["train"])
        import torch
        evals = {}
        for n, e in cfg["eval"].items():
            files = [pool["paths"]["heldout"]] if "fraction" in e else None
            if files is None:
                from thresher.pipelines import io
                files = io.discover(e["path"])
            _, texts = read_docs(files, e.get("text_column", "text"), "id")
            stream = np.concatenate(tokenize_docs(tok, texts))[: cfg["eval_tokens"]]
            nb = len(stream) // cfg["model"]["seq_len"]
            if nb == 0:
                raise ConfigError(f"eval.{n}", f"holds {len(stream)} tokens, fewer than one block of "
                                               f"{cfg['model']['seq_len']}")
            evals[n] = torch.from_numpy(stream[: nb * cfg["model"]["seq_len"]].reshape(nb, -1))
        results["eval_tokens"] = {n: int(b.numel()) for n, b in evals.items()}

        for name, arm in cfg["arms"].items():
            r = results["arms"].get(name) or {}
            todo = [s for s in cfg["seeds"] if str(s) not in r.get("seeds", {})]
            if not todo:
                log(f"arm {name}: finished earlier, reused")
                continue
            log(f"arm {name}: selecting ({arm['kind']})")
            ids, texts, info = arm_documents(name, arm, pool["paths"]["train"], out)
            r = {**info, "seeds": r.get("seeds", {})}
            doc_tokens = tokenize_docs(tok, texts)
            if arm["kind"] == "mates":
                r["candidate_docs"], r["candidate_chars"] = r["kept_docs"], r["kept_chars"]
            else:
                del texts
            for seed in todo:
                t0 = time.time()
                if arm["kind"] == "mates":
                    rec = train_mates_seed(cfg, tok, name, arm, ids, texts, doc_tokens, seed, evals, out, log)
                else:
                    stream, rep = pack(doc_tokens, ids, seed, cfg["train_tokens"])
                    rec = train_arm_seed(cfg, tok, stream, seed, evals)
                    rec.update(rep)
                rec["seconds"] = round(time.time() - t0, 2)
                r["seeds"][str(seed)] = rec
                if arm["kind"] == "mates":      # what the arm trained on: the stage selections, mean over seeds
                    r["kept_docs"] = round(float(np.mean([x["selected_docs"] for x in r["seeds"].values()])))
                    r["kept_chars"] = round(float(np.mean([x["selected_chars"] for x in r["seeds"].values()])))
                results["arms"][name] = r
                _write_json(res_path, results)
                log(f"arm {name} seed {seed}: {rec['tokens']:,} tokens ({rec['epochs']:.2f} epochs), "
                    + ", ".join(f"{k} {v:.4f}" for k, v in rec["final"].items()) + f" ({rec['seconds']:.0f}s)")
    finally:
        if threads:
            torch.set_num_threads(old_threads)

    # every arm and seed saw exactly the same number of training tokens
    seen = {(a, s): rec["tokens"] for a, r in results["arms"].items() for s, rec in r["seeds"].items()}
    assert set(seen.values()) == {cfg["train_tokens"]}, seen
    results["arms"] = {a: results["arms"][a] for a in cfg["arms"]}
    results["wall_seconds"] = round(time.time() - t_start, 1)
    _write_json(res_path, results)
    table = markdown_table(results)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    results["plot"] = plot(results, os.path.join(out, "loss_vs_tokens.png"), log)
    results["table"] = table
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="thresher experiment",
                                 description="Train small LMs on each arm's selection at equal tokens and compare "
                                             "their held-out losses (results.json, results.md, loss_vs_tokens.png).")
    ap.add_argument("config", help="experiment config (YAML)")
    ap.add_argument("--output", help="override the config's output directory")
    a = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    t0 = time.time()
    try:
        raw = load_command_config(a.config, a.output)
        res = run_experiment(raw)
    except ConfigError as e:
        sys.stderr.write(f"thresher: error: {e}\n")
        return 2
    except (ValueError, RuntimeError, OSError) as e:    # InputError, a failed prepare step, an empty arm
        sys.stderr.write(f"thresher: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}\n")
        return 2
    sys.stdout.write("\n" + res["table"] + "\n")
    sys.stdout.write(f"wrote {os.path.join(res['config']['output'], 'results.json')}, results.md"
                     + (", loss_vs_tokens.png" if res["plot"] else "") + f"; wall time {time.time() - t0:.1f}s\n")
    return 0


__all__ = ["main", "run_experiment", "check_config", "pack", "markdown_table"]
