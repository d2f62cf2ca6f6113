"""``thresher preselect train CONFIG``: labels from several LMs' losses, then a fastText scorer.

Config (YAML)::

    input: {path: "corpus/*.parquet", text_column: text, id_column: id}
    output: preselect-model/
    sample: {size: 20000, seed: 0}
    models:                      # causal LM checkpoints and their downstream scores (higher = better)
      - {path: ckpt/llama-small, score: 41.2}
      - {path: ckpt/llama-base, score: 47.9}
      - {path: ckpt/llama-large, score: 52.3}
    # or: each score measured here, as minus the model's bits per character on target text
    # models:
    #   - {path: ckpt/llama-small, score: {loss_on: target/dev.parquet}}
    #   - {path: ckpt/llama-base, score: {loss_on: target/dev.parquet, text_column: text, limit: 5000}}
    scoring: {device: auto, max_tokens_per_batch: 16384, max_length: 2048}
    validation_fraction: 0.1
    min_labels_per_class: 50     # refuse to train on fewer positives (or negatives) than this
    fasttext: {}                 # overrides of the method's hyper-parameters (epoch 3, lr 0.1, wordNgrams 2)

A measured score (``score: {loss_on: FILE.parquet}``, optional ``text_column``,
default ``text``, and ``limit``, the first N rows, default all) is
``-(total bits / total characters)`` of that model over the file's documents:
the summed token loss of every document divided by the summed characters, i.e.
character-weighted (a long document counts for its length), not the mean of the
documents' own ratios. It is computed by the same ``causal_lm_loss`` task, with
the same ``scoring:`` options, as the per-document bits per character of the
labels. All models give a number, or all measure on the same texts (same
``loss_on``, ``text_column`` and ``limit``): scores from two scales, or from
different texts, give no ranking, so a mix is refused. Every score is measured
before the corpus is sampled, each model loaded once for it; measured scores that
are all equal are refused like given ones. ``card.json`` records, per model, the
measured ``score`` and ``score_measured`` (the file, its column and limit, the
documents, characters, bits and bits per character).

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
from thresher.schemas.config import (
    ConfigError,
    check_top_keys,
    config_mapping,
    did_you_mean,
    load_command_config,
)
from thresher.schemas.documents import InputError

_KEYS = {"input", "output", "sample", "models", "scoring", "validation_fraction", "min_labels_per_class",
         "fasttext", "seed"}

#: the keys of a measured score, ``score: {loss_on: FILE.parquet, ...}``
_LOSS_ON_KEYS = {"loss_on": (str,), "text_column": (str,), "limit": (int, 1, False, True)}

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
    checked = []
    for i, m in enumerate(models):
        if not isinstance(m, dict) or set(m) - {"path", "score", "name"}:
            raise ConfigError(f"models[{i}]", "expected {path: ..., score: ...}")
        if "path" not in m:
            raise ConfigError(f"models[{i}].path", "missing")
        if "score" not in m:
            raise ConfigError(f"models[{i}].score", "missing: every model needs its downstream score "
                                                    "(the number of models and of scores must match)")
        measured = isinstance(m["score"], dict)
        if not measured and (not isinstance(m["score"], (int, float)) or isinstance(m["score"], bool)):
            raise ConfigError(f"models[{i}].score", f"expected a number, got {m['score']!r} "
                                                    f"(or {{loss_on: FILE.parquet}} to measure it)")
        if i and measured != isinstance(models[0]["score"], dict):
            forms = ("{loss_on: ...}", "a number") if measured else ("a number", "{loss_on: ...}")
            raise ConfigError(f"models[{i}].score", f"{forms[0]} here but {forms[1]} at models[0].score: give "
                                                    f"every model a number or every model {{loss_on: ...}} "
                                                    f"(scores on different scales give no ranking)")
        if not os.path.exists(m["path"]):
            raise ConfigError(f"models[{i}].path", f"model {m['path']!r} does not exist")
        if measured:
            m = {**m, "score": _check_loss_on(m["score"], f"models[{i}].score")}
            if i:
                _same_texts(checked[0]["score"], m["score"], i)
        checked.append(m)
    models = checked
    if not isinstance(models[0]["score"], dict) and len({m["score"] for m in models}) < 2:
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


def _check_loss_on(raw: dict, key: str) -> dict:
    """``score: {loss_on: FILE.parquet, text_column: text, limit: N}`` checked (keys, the file,
    its column) and completed with the defaults; a :class:`ConfigError` names ``key.<sub>``."""
    spec = config_mapping(raw, key, _LOSS_ON_KEYS)
    if "loss_on" not in spec:
        raise ConfigError(f"{key}.loss_on", f"missing: a measured score is {{loss_on: FILE.parquet}}; "
                                            f"known keys: {', '.join(sorted(_LOSS_ON_KEYS))}")
    spec = {"text_column": "text", "limit": None, **spec}
    path, col = spec["loss_on"], spec["text_column"]
    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "does not exist"
        raise ConfigError(f"{key}.loss_on", f"{path!r} {what} (expected one Parquet file of target texts)")
    try:
        pf = pq.ParquetFile(path)
        schema, n_rows = pf.schema_arrow, pf.metadata.num_rows
    except (pa.ArrowException, OSError) as e:
        raise ConfigError(f"{key}.loss_on", f"{path!r} is not a readable Parquet file: "
                                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if col not in schema.names:
        raise ConfigError(f"{key}.text_column", f"column {col!r} is not in {path!r}{did_you_mean(col, schema.names)}; "
                                                f"its columns: {', '.join(schema.names)}")
    typ = schema.field(col).type
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        raise ConfigError(f"{key}.text_column", f"column {col!r} of {path!r} is {typ}, expected text (string)")
    if n_rows == 0:
        raise ConfigError(f"{key}.loss_on", f"{path!r} has no rows: no text to measure the score on")
    return spec


def _same_texts(first: dict, spec: dict, i: int) -> None:
    """Every measured score is on the same texts as ``models[0]``'s (or a :class:`ConfigError`)."""
    for k in ("loss_on", "text_column", "limit"):
        a, b = first[k], spec[k]
        same = (os.path.realpath(a) == os.path.realpath(b)) if k == "loss_on" else a == b
        if not same:
            raise ConfigError(f"models[{i}].score.{k}", f"{b!r} here but {a!r} at models[0].score.{k}: every "
                                                        f"model's score must be measured on the same texts "
                                                        f"(bits per character on different texts give no ranking)")


def _read_texts(path: str, column: str, limit: Optional[int]) -> pa.Array:
    """The ``column`` of the first ``limit`` rows (all when None) of one Parquet file."""
    parts, n = [], 0
    for b in pq.ParquetFile(path).iter_batches(batch_size=4096, columns=[column]):
        if limit is not None and n + b.num_rows > limit:
            b = b.slice(0, limit - n)
        parts.append(b.column(0))
        n += b.num_rows
        if limit is not None and n >= limit:
            break
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


def _loss_task(path: str, scoring: dict):
    """The ``causal_lm_loss`` task of one model under the config's ``scoring:`` options: the one
    loss code for both the labels' bits per character and a measured score."""
    from thresher.scorers.models.tasks import build_task
    return build_task("causal_lm_loss", path, **scoring)


def measure_score(path: str, spec: dict, scoring: dict) -> dict:
    """Score of the model at ``path`` on the target texts of ``spec`` (a checked ``{loss_on, text_column,
    limit}``): ``-bits / characters`` summed over the documents, i.e. character-weighted bits per
    character, not a mean of per-document ratios. Null texts are not documents; a document whose
    loss is not finite is left out and counted in ``skipped``. Returns ``score`` and its parts."""
    texts = _read_texts(spec["loss_on"], spec["text_column"], spec["limit"])
    task = _loss_task(path, scoring)
    t0 = time.time()
    cols = task(texts)
    p = task.column_prefix
    nats = cols[p + "lm_loss_sum"].to_numpy(zero_copy_only=False).astype(np.float64)
    chars = cols[p + "lm_chars"].to_numpy(zero_copy_only=False).astype(np.float64)
    del task
    present = ~np.isnan(chars)                      # null texts give null outputs
    ok = present & np.isfinite(nats)
    bits = float(nats[ok].sum() / np.log(2.0))
    n_chars = int(chars[ok].sum())
    bpc = bits / n_chars if n_chars > 0 else float("nan")
    return {"score": -bpc, "loss_on": spec["loss_on"], "text_column": spec["text_column"],
            "limit": spec["limit"], "rows": len(texts), "documents": int(ok.sum()),
            "skipped": int((present & ~ok).sum()), "characters": n_chars, "bits": bits, "bpc": bpc,
            "seconds": round(time.time() - t0, 3)}


def _measure_scores(cfg: dict, log) -> tuple[list[float], list[Optional[dict]]]:
    """The models' scores: given ones as they are, ``{loss_on: ...}`` ones measured (one log line
    per model); refuses a score that cannot be measured and measured scores that are all equal."""
    models = cfg["models"]
    if not isinstance(models[0]["score"], dict):
        return [float(m["score"]) for m in models], [None] * len(models)
    measured = []
    for j, m in enumerate(models):
        r = measure_score(m["path"], m["score"], cfg["scoring"])
        if not r["characters"]:
            raise ConfigError(f"models[{j}].score.loss_on",
                              f"no text to measure: column {r['text_column']!r} of {r['loss_on']!r} has no scored "
                              f"characters in its {r['rows']:,} rows read ({r['skipped']:,} documents without a "
                              f"finite loss)")
        skipped = f", {r['skipped']:,} skipped without a finite loss" if r["skipped"] else ""
        log(f"preselect: model {j} {m['path']}: score {r['score']:.6f} = -({r['bits']:,.1f} bits / "
            f"{r['characters']:,} characters) on {r['loss_on']} ({r['documents']:,} documents{skipped})")
        measured.append(r)
    if len({r["score"] for r in measured}) < 2:
        raise ConfigError("models", "all models have the same score: there is no ranking to agree with "
                                    f"(measured: {measured[0]['score']:.6f} for all, on {measured[0]['loss_on']})")
    return [r["score"] for r in measured], measured


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
    task = _loss_task(path, scoring)
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
    scores, measured = _measure_scores(cfg, log)
    docs = sample_documents(inp["path"], inp["text_column"], inp.get("id_column"), cfg["sample"]["size"],
                            cfg["sample"]["seed"])
    log(f"preselect: sampled {docs.num_rows:,} documents")
    texts = docs["text"].combine_chunks()
    losses = np.full((docs.num_rows, len(cfg["models"])), np.nan)
    model_info = []
    for j, m in enumerate(cfg["models"]):
        losses[:, j], info = model_bpc(m["path"], texts, cfg["scoring"])
        model_info.append({"path": m["path"], "name": m.get("name", os.path.basename(m["path"].rstrip("/"))),
                           "score": m["score"] if measured[j] is None else scores[j],
                           **({} if measured[j] is None else {"score_measured": measured[j]}),
                           "mean_bpc": float(np.nanmean(losses[:, j])), **info})
        log(f"preselect: model {j} {m['path']}: mean bpc {model_info[-1]['mean_bpc']:.4f}")
    strength, conc, pairs = predictive_strength(losses, scores)
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
