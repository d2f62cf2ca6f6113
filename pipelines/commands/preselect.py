"""``thresher preselect train CONFIG``: labels from several LMs' losses, then a fastText scorer.

Config (YAML)::

    input: {path: "corpus/*.parquet", text_column: text, id_column: id}
    output: preselect-model/
    sample: {size: 20000, seed: 0}
    models:                      # causal LM checkpoints and their downstream scores (higher = better)
      - {path: ckpt/llama-small, score: 41.2}
      - {path: ckpt/llama-base, score: 47.9}
      - {path: ckpt/llama-large, score: 52.3}
    scoring: {device: auto, max_tokens_per_batch: 16384, max_length: 2048}
    validation_fraction: 0.1
    min_labels_per_class: 50     # refuse to train on fewer positives (or negatives) than this
    fasttext: {}                 # overrides of the method's hyper-parameters (epoch 3, lr 0.1, wordNgrams 2)

Training refuses degenerate data before fastText is trained (a config error
naming the counts and the options to change, nothing written): fewer than
``min_labels_per_class`` positives or negatives (an empty class included), or,
with ``validation_fraction > 0``, fewer than ``MIN_SPLIT_PER_CLASS`` documents
of either class in the validation or the training split. A validation accuracy
not significantly better than always answering the larger class is reported
(``card.json`` ``validation``, and a warning), not refused: on the small
validation sets of small samples it is too noisy to stop a run on.

Writes ``labels.parquet`` (every sampled document: id, text, strength, concordant
pairs, bits per character under each model, label), ``classifier.bin`` and
``card.json`` (models, scores, counts, hyper-parameters, validation accuracy).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher.pipelines import io
from thresher.schemas.config import ConfigError, check_top_keys, load_command_config
from thresher.schemas.documents import InputError

_KEYS = {"input", "output", "sample", "models", "scoring", "validation_fraction", "min_labels_per_class",
         "fasttext", "seed"}

#: default ``min_labels_per_class``: fewer positives (or negatives) than this and training is refused
MIN_LABELS_PER_CLASS = 50
#: with ``validation_fraction > 0``, each split needs at least this many documents of each class
MIN_SPLIT_PER_CLASS = 5


def _check(raw: Any) -> dict:
    check_top_keys(raw, _KEYS, "preselect")
    inp = raw.get("input")
    if isinstance(inp, str):
        inp = {"path": inp}
    if not isinstance(inp, dict) or not inp.get("path"):
        raise ConfigError("input.path", "missing")
    out = raw.get("output")
    if not isinstance(out, str) or not out:
        raise ConfigError("output", "missing (a directory for classifier.bin, card.json, labels.parquet)")
    models = raw.get("models")
    if not isinstance(models, list) or len(models) < 2:
        raise ConfigError("models", "give at least two models as a list of {path, score}")
    for i, m in enumerate(models):
        if not isinstance(m, dict) or set(m) - {"path", "score", "name"}:
            raise ConfigError(f"models[{i}]", "expected {path: ..., score: ...}")
        if "path" not in m:
            raise ConfigError(f"models[{i}].path", "missing")
        if "score" not in m:
            raise ConfigError(f"models[{i}].score", "missing: every model needs its downstream score "
                                                    "(the number of models and of scores must match)")
        if not isinstance(m["score"], (int, float)) or isinstance(m["score"], bool):
            raise ConfigError(f"models[{i}].score", f"expected a number, got {m['score']!r}")
        if not os.path.exists(m["path"]):
            raise ConfigError(f"models[{i}].path", f"model {m['path']!r} does not exist")
    if len({m["score"] for m in models}) < 2:
        raise ConfigError("models", "all models have the same score: there is no ranking to agree with")
    sample = raw.get("sample", {}) or {}
    if not isinstance(sample, dict):
        raise ConfigError("sample", "expected {size: N, seed: S}")
    size = sample.get("size", 20000)
    if not isinstance(size, int) or size < 2:
        raise ConfigError("sample.size", f"expected an integer >= 2, got {size!r}")
    vf = raw.get("validation_fraction", 0.1)
    if not isinstance(vf, (int, float)) or isinstance(vf, bool) or not 0 <= vf < 1:
        raise ConfigError("validation_fraction", f"expected a number in [0, 1), got {vf!r}")
    min_labels = raw.get("min_labels_per_class", MIN_LABELS_PER_CLASS)
    if not isinstance(min_labels, int) or isinstance(min_labels, bool) or min_labels < 1:
        raise ConfigError("min_labels_per_class", f"expected an integer >= 1, got {min_labels!r}")
    if size < 2 * min_labels:  # positives and as many negatives: at most size / 2 of each
        raise ConfigError("sample.size", f"a sample of {size:,} documents gives at most {size // 2:,} labels per "
                                         f"class, fewer than min_labels_per_class ({min_labels:,}); raise "
                                         f"sample.size to at least {2 * min_labels:,} or lower min_labels_per_class")
    return {"input": {"text_column": "text", "id_column": None, **inp}, "output": out, "models": models,
            "sample": {"size": size, "seed": int(sample.get("seed", 0))},
            "scoring": dict(raw.get("scoring", {}) or {}), "validation_fraction": float(vf),
            "min_labels_per_class": min_labels, "fasttext": dict(raw.get("fasttext", {}) or {})}


def _refuse_degenerate(cfg: dict, n_docs: int, strength: np.ndarray, linfo: dict,
                       split: Optional[dict] = None) -> None:
    """Raise a :class:`ConfigError` (one line: the counts and what to change) when the labels
    are too few to train on; ``split`` (per-split class counts) is checked when given."""
    n_pos, n_neg = linfo["positives"], linfo["negatives"]
    skipped = int(np.isnan(strength).sum())
    with_loss = n_docs - skipped
    size, min_labels = cfg["sample"]["size"], cfg["min_labels_per_class"]
    counts = (f"{n_pos:,} positives, {n_neg:,} negatives from {n_docs:,} sampled documents "
              f"({with_loss:,} with every model's loss, {skipped:,} skipped)")
    small = f"; the input holds only {n_docs:,} non-empty documents" if n_docs < size else ""
    if split is None:
        if with_loss == 0:
            raise ConfigError("models", f"no label to train on: {counts}; no document has a loss from every "
                                        f"model (check the models and the scoring options)")
        avail = int(linfo["positives_available"])
        top = linfo["positive_strength"]
        if avail == with_loss:  # a single strength value: every document is a positive candidate
            hint = ("every document's losses follow the models' ranking: use models closer in strength"
                    if top >= 1.0 else "the losses do not separate documents: are two models the same checkpoint?")
            raise ConfigError("models", f"cannot train on one class: {counts}; all {with_loss:,} documents have "
                                        f"the same predictive strength {top:.3g}, so there is no negative ({hint}); "
                                        f"change the models or raise sample.size (now {size:,})")
        if min(n_pos, n_neg) < min_labels:
            raise ConfigError("sample.size", f"too few labels to train on: {counts}; {avail:,} documents have the "
                                             f"top strength {top:.3g} and {with_loss - avail:,} a lower one, and "
                                             f"each class needs min_labels_per_class ({min_labels:,}); raise "
                                             f"sample.size (now {size:,}{small}) or lower min_labels_per_class")
        return
    vf = cfg["validation_fraction"]
    for name, (p, n) in split.items():
        if min(p, n) < MIN_SPLIT_PER_CLASS:
            fix = ("raise validation_fraction" if name == "validation" else "lower validation_fraction")
            raise ConfigError("validation_fraction",
                              f"the {name} split would hold {p:,} positives and {n:,} negatives, fewer than "
                              f"{MIN_SPLIT_PER_CLASS} of a class ({counts}; validation_fraction {vf:g}); "
                              f"{fix}, raise sample.size (now {size:,}), or set validation_fraction: 0 to "
                              f"train without validation")


def sample_documents(path: str, text_column: str, id_column: Optional[str], size: int, seed: int) -> pa.Table:
    """A deterministic sample: the ``size`` documents with the smallest xxh64(seed, id).

    Independent of shard order and count; streams the corpus keeping at most
    2 × size candidates in memory."""
    import xxhash

    if id_column is None and io.first_schema_has(path, "id"):
        id_column = "id"
    shards = io.describe_shards(path, text_column, id_column)
    keep_h = np.zeros(0, np.uint64)
    keep_ids: list[str] = []
    keep_text: list[str] = []
    for s in shards:
        row0 = 0
        cols = [text_column] + ([id_column] if id_column else [])
        for b in io.iter_batches(s.path, 4096, columns=cols):
            texts = b.column(text_column).to_pylist()
            ids = (b.column(id_column).cast(pa.string()).to_pylist() if id_column
                   else [f"{s.rel}:{row0 + i}" for i in range(b.num_rows)])
            row0 += b.num_rows
            ok = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
            h = np.fromiter((xxhash.xxh64_intdigest(ids[i].encode(), seed) for i in ok), np.uint64, len(ok))
            keep_h = np.concatenate([keep_h, h])
            keep_ids += [ids[i] for i in ok]
            keep_text += [texts[i] for i in ok]
            if keep_h.size > 2 * size:
                sel = np.argsort(keep_h, kind="stable")[:size]
                keep_h = keep_h[sel]
                keep_ids = [keep_ids[i] for i in sel]
                keep_text = [keep_text[i] for i in sel]
    sel = np.argsort(keep_h, kind="stable")[:size]
    return pa.table({"id": [keep_ids[i] for i in sel], "text": [keep_text[i] for i in sel]})


def model_bpc(path: str, texts: pa.Array, scoring: dict) -> tuple[np.ndarray, dict]:
    from thresher.scorers.models.tasks import build_task
    task = build_task("causal_lm_loss", path, **scoring)
    t0 = time.time()
    cols = task(texts)
    bpc = cols["lm_bpc"].to_numpy(zero_copy_only=False).astype(np.float64)
    info = {"seconds": round(time.time() - t0, 3)}
    st = getattr(task, "stats", None)
    if st is not None and hasattr(st, "as_dict"):
        info.update(st.as_dict())
    del task
    return np.where(np.isfinite(bpc), bpc, np.nan), info


def train(raw: dict, log=print) -> dict:
    """Run PreSelect training from a config mapping; returns the card."""
    from thresher.scorers.classifiers import fasttext_util as ftu
    from thresher.scorers.text.hashing import stable_id_hash
    from thresher.scorers.training.preselect import (
        FASTTEXT_PARAMS,
        accuracy_vs_chance,
        fasttext_line,
        predictive_strength,
        select_labels,
        write_card,
    )

    cfg = _check(raw)
    ftu.require_fasttext(training=True)
    out = cfg["output"]
    inp = cfg["input"]
    t0 = time.time()
    docs = sample_documents(inp["path"], inp["text_column"], inp.get("id_column"), cfg["sample"]["size"],
                            cfg["sample"]["seed"])
    log(f"preselect: sampled {docs.num_rows:,} documents")
    texts = docs["text"].combine_chunks()
    losses = np.full((docs.num_rows, len(cfg["models"])), np.nan)
    model_info = []
    for j, m in enumerate(cfg["models"]):
        losses[:, j], info = model_bpc(m["path"], texts, cfg["scoring"])
        model_info.append({"path": m["path"], "name": m.get("name", os.path.basename(m["path"].rstrip("/"))),
                           "score": m["score"], "mean_bpc": float(np.nanmean(losses[:, j])), **info})
        log(f"preselect: model {j} {m['path']}: mean bpc {model_info[-1]['mean_bpc']:.4f}")
    strength, conc, pairs = predictive_strength(losses, [m["score"] for m in cfg["models"]])
    ids = docs["id"].to_pylist()
    pos, neg, linfo = select_labels(strength, ids)
    _refuse_degenerate(cfg, docs.num_rows, strength, linfo)

    # train / validation split by a stable hash of the id
    chosen = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    h = stable_id_hash(pa.array([ids[i] for i in chosen], pa.string()))
    vf = cfg["validation_fraction"]
    is_val = (h % np.uint64(1000)) < np.uint64(int(round(vf * 1000)))
    if vf > 0:
        _refuse_degenerate(cfg, docs.num_rows, strength, linfo, split={
            "validation": (int((is_val & is_pos).sum()), int((is_val & ~is_pos).sum())),
            "training": (int((~is_val & is_pos).sum()), int((~is_val & ~is_pos).sum()))})
    log(f"preselect: labels {pos.size:,} positive, {neg.size:,} negative; "
        f"{int((~is_val).sum()):,} to train on, {int(is_val.sum()):,} to validate")

    os.makedirs(out, exist_ok=True)
    label = np.full(docs.num_rows, -1, np.int8)
    label[pos] = 1
    label[neg] = 0
    cols = {"id": docs["id"], "text": docs["text"], "strength": pa.array(strength),
            "concordant_pairs": pa.array(conc.astype(np.int32)), "label": pa.array(label)}
    for j in range(losses.shape[1]):
        cols[f"bpc_{j}"] = pa.array(losses[:, j])
    labels_tbl = pa.table(cols)
    tmp = os.path.join(out, ".tmp-labels.parquet")
    pq.write_table(labels_tbl, tmp, compression="zstd")
    os.replace(tmp, os.path.join(out, "labels.parquet"))

    params = {**FASTTEXT_PARAMS, **cfg["fasttext"]}
    with tempfile.TemporaryDirectory() as td:
        train_file = os.path.join(td, "train.txt")
        with open(train_file, "w", encoding="utf-8") as f:
            for i, v in zip(chosen, is_val):
                if not v:
                    f.write(f"__label__{label[i]} {fasttext_line(docs['text'][int(i)].as_py())}\n")
        bin_path = os.path.join(out, "classifier.bin")
        tinfo = ftu.train_supervised(train_file, bin_path + ".tmp", **params)
        os.replace(bin_path + ".tmp", bin_path)
    model = ftu.load_model(bin_path)
    val_idx = chosen[is_val]
    acc = None
    validation = {"docs": int(val_idx.size), "positives": int((label[val_idx] == 1).sum()),
                  "negatives": int((label[val_idx] == 0).sum())}
    if val_idx.size:
        p = ftu.predict_label_prob(model, pa.array([docs["text"][int(i)].as_py() for i in val_idx]), "1")
        correct = int(((p >= 0.5).astype(np.int8) == label[val_idx]).sum())
        acc = correct / int(val_idx.size)
        # chance = always answering the larger class of the validation split
        chance = max(validation["positives"], validation["negatives"]) / int(val_idx.size)
        pval = accuracy_vs_chance(correct, int(val_idx.size), chance)
        validation.update({"correct": correct, "accuracy": acc, "chance_accuracy": chance,
                           "p_value_vs_chance": pval, "better_than_chance": bool(pval < 0.05)})
        if pval >= 0.05:
            log(f"preselect: warning: validation accuracy {acc:.3f} on {val_idx.size:,} documents is not "
                f"significantly better than chance ({chance:.3f}; one-sided binomial p = {pval:.2g})")
    card = {
        "method": "PreSelect (predictive strength labels + fastText)",
        "input": inp["path"], "sample": cfg["sample"], "sampled_docs": int(docs.num_rows),
        "skipped_missing_loss": int(np.isnan(strength).sum()),
        "models": model_info, "ordered_model_pairs": pairs,
        "labels": linfo, "min_labels_per_class": cfg["min_labels_per_class"],
        "train_docs": int((~is_val).sum()), "validation_docs": int(is_val.sum()),
        "validation_accuracy": acc, "validation": validation,
        "fasttext": {**params, **{k: v for k, v in tinfo.items() if k != "params"}},
        "preprocessing": "newlines replaced by spaces",
        "strength_histogram": {str(k): int(v) for k, v in zip(*np.unique(conc[conc >= 0], return_counts=True))},
        "seconds": round(time.time() - t0, 2),
    }
    write_card(os.path.join(out, "card.json"), card)
    return card


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="thresher preselect train",
                                 description="Train a PreSelect fastText classifier from several LMs' losses.")
    ap.add_argument("config")
    ap.add_argument("--output", help="override the config's output directory")
    a = ap.parse_args(argv)
    try:
        raw = load_command_config(a.config, a.output)
        card = train(raw, log=lambda s: print(s, file=sys.stderr))
    except (ConfigError, InputError, ValueError, ImportError) as e:
        sys.stderr.write(f"thresher: error: {e}\n")
        return 2
    print(f"labels: {card['labels']['positives']} positive, {card['labels']['negatives']} negative; "
          f"validation accuracy {card['validation_accuracy']}; wrote {raw['output']}/classifier.bin, "
          f"card.json, labels.parquet")
    return 0
