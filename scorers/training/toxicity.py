"""Training the ``toxicity`` classifier (fastText or linear) with held-out metrics and a card."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.scorers.classifiers import fasttext_util as ftu
from thresher.scorers.filters.toxicity import (
    PREPROCESS,
    LinearModel,
    ToxicityClassifier,
    normalize_for_classifier,
)

# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------

DEFAULT_POSITIVE = ("true", "1", "toxic")
FASTTEXT_DEFAULTS = dict(epoch=25, lr=0.5, dim=32, wordNgrams=2, minn=2, maxn=5,
                         bucket=200_000, minCount=1, loss="softmax", thread=1)


def _read_labelled(path: str, text_column: str, label_column: str) -> tuple[list[str], list[Any]]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"training data {path!r} does not exist")
    low = path.lower()
    if low.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        import pyarrow.csv as pacsv
        opts = pacsv.ParseOptions(delimiter="\t" if ".tsv" in low else ",",
                                  newlines_in_values=True)
        table = pacsv.read_csv(path, parse_options=opts)
    else:
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path, columns=[text_column, label_column])
        except (pa.ArrowInvalid, KeyError) as e:
            raise ValueError(f"cannot read columns {text_column!r}, {label_column!r} "
                             f"from Parquet {path!r}: {e}") from e
    for c in (text_column, label_column):
        if c not in table.column_names:
            raise ValueError(f"column {c!r} not in {path!r}; columns: {table.column_names}")
    table = table.select([text_column, label_column])
    keep = pc.and_(pc.is_valid(table[text_column]), pc.is_valid(table[label_column]))
    table = table.filter(keep)
    return table[text_column].to_pylist(), table[label_column].to_pylist()


def _label_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip().lower()


def binarize_labels(labels: Sequence[Any], positive: Optional[Sequence[str]] = None) -> np.ndarray:
    pos = {p.strip().lower() for p in (positive or DEFAULT_POSITIVE)}
    y = np.array([_label_str(v) in pos for v in labels], dtype=bool)
    if len(y) and (y.all() or not y.any()):
        seen = sorted({_label_str(v) for v in labels})[:20]
        raise ValueError(f"labels give a single class with positive={sorted(pos)}; "
                         f"label values seen: {seen} (use --positive)")
    return y


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in (False, True):
        idx = np.flatnonzero(y == cls)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(len(idx) * test_fraction))
        if test_fraction > 0 and len(idx) > 1:
            k = min(max(k, 1), len(idx) - 1)
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def roc_auc(y: np.ndarray, s: np.ndarray) -> Optional[float]:
    """Area under the ROC curve (ties count one half)."""
    y = np.asarray(y, bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ss = np.asarray(s, np.float64)[order]
    ranks = np.empty(len(ss))
    i = 0
    while i < len(ss):          # average ranks over ties
        j = i
        while j + 1 < len(ss) and ss[j + 1] == ss[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(ss))
    r[order] = ranks
    return float((r[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> dict:
    y = np.asarray(y, bool)
    pred = np.asarray(score) >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    auc = roc_auc(y, score)
    return {"threshold": threshold, "n": int(len(y)), "positives": int(y.sum()),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4),
            "accuracy": round((tp + tn) / len(y), 4) if len(y) else 0.0,
            "auc": None if auc is None else round(auc, 4)}


def train_toxicity_classifier(input_path: str, text_column: str = "text", label_column: str = "label",
                              output_dir: str = "toxicity_model", kind: str = "fasttext", seed: int = 0,
                              test_fraction: float = 0.2, positive: Optional[Sequence[str]] = None,
                              max_rows: Optional[int] = None, threshold: float = 0.5,
                              fasttext_params: Optional[dict] = None, quantize: bool = False,
                              linear_params: Optional[dict] = None) -> dict:
    """Fit a toxicity classifier on labelled data and write it with ``card.json``.

    ``input_path``: Parquet (file or directory) or CSV/TSV with a text and a
    label column. Labels may be bool, int or string; a row is positive when its
    label, as lower-case text, is in ``positive`` (default: true, 1, toxic; for
    several classes pass e.g. ``["hate", "offensive"]``). A stratified
    ``test_fraction`` is held out (seeded) and scored for the card.

    ``kind='fasttext'`` writes ``toxicity.bin`` (``.ftz`` with ``quantize``);
    ``kind='linear'`` writes ``linear.json`` + ``linear.npz`` (tf-idf +
    logistic regression, fitted with scikit-learn, saved without pickle).
    Returns the card.
    """
    if kind not in ("fasttext", "linear"):
        raise ValueError(f"kind must be 'fasttext' or 'linear', got {kind!r}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    texts, raw_labels = _read_labelled(input_path, text_column, label_column)
    y_all = binarize_labels(raw_labels, positive)
    idx = np.arange(len(texts))
    if max_rows and max_rows < len(idx):
        rng = np.random.default_rng(seed + 1)
        idx = np.sort(rng.choice(len(idx), max_rows, replace=False))
        y_all = y_all[idx]
        texts = [texts[i] for i in idx]
    tr, te = stratified_split(y_all, test_fraction, seed)
    norm = normalize_for_classifier(pa.array(texts, pa.string())).to_pylist()
    os.makedirs(output_dir, exist_ok=True)
    card: dict[str, Any] = {
        "kind": kind,
        "task": "toxicity",
        "input": os.path.abspath(input_path),
        "text_column": text_column,
        "label_column": label_column,
        "positive_values": sorted({p.strip().lower() for p in (positive or DEFAULT_POSITIVE)}),
        "positive_label": "toxic",
        "preprocess": PREPROCESS,
        "seed": seed,
        "test_fraction": test_fraction,
        "counts": {"rows": int(len(texts)), "positive": int(y_all.sum()),
                   "negative": int((~y_all).sum()), "train": int(len(tr)), "test": int(len(te)),
                   "train_positive": int(y_all[tr].sum()), "test_positive": int(y_all[te].sum())},
    }
    if kind == "fasttext":
        params = dict(FASTTEXT_DEFAULTS)
        params.update(fasttext_params or {})
        params["seed"] = seed
        rng = np.random.default_rng(seed)
        order = tr[rng.permutation(len(tr))]
        with tempfile.TemporaryDirectory(prefix="thresher-tox-") as tmp:
            train_file = os.path.join(tmp, "train.txt")
            with open(train_file, "w", encoding="utf-8") as fh:
                for i in order:
                    lab = "toxic" if y_all[i] else "clean"
                    fh.write(f"__label__{lab} {norm[i]}\n")
            model_path = os.path.join(output_dir, "toxicity.bin")
            info = ftu.train_supervised(train_file, model_path, **params)
            if quantize:
                model = ftu.load_model(model_path)
                model.quantize(input=train_file, retrain=True, qnorm=True, cutoff=100_000, thread=1)
                qpath = os.path.join(output_dir, "toxicity.ftz")
                model.save_model(qpath)
                os.remove(model_path)
                model_path = qpath
        card["model_file"] = os.path.basename(model_path)
        card["hyperparameters"] = {k: (str(v) if not isinstance(v, (int, float, str)) else v)
                                   for k, v in info["params"].items() if k != "verbose"}
        card["quantized"] = bool(quantize)
        with open(os.path.join(output_dir, "card.json"), "w", encoding="utf-8") as fh:
            json.dump(card, fh, indent=2)          # the classifier reads positive_label from it
        clf = ToxicityClassifier(model_path)
    else:
        from scipy.sparse import csr_matrix
        from sklearn.linear_model import LogisticRegression

        lp = {"ngram_max": 2, "min_df": 2, "max_features": 200_000, "C": 4.0, "max_iter": 2000}
        lp.update(linear_params or {})
        docs = [s.split(" ") if s else [] for s in norm]
        vocab, idf = LinearModel.fit_vocabulary([docs[i] for i in tr], lp["ngram_max"],
                                                lp["min_df"], lp["max_features"])
        index = {t: i for i, t in enumerate(vocab)}
        data, indices, indptr = LinearModel.featurize([docs[i] for i in tr], index, idf, lp["ngram_max"])
        X = csr_matrix((data, indices, indptr), shape=(len(tr), len(vocab)))
        lr = LogisticRegression(C=lp["C"], max_iter=lp["max_iter"], solver="liblinear",
                                random_state=seed)
        lr.fit(X, y_all[tr])
        lin = LinearModel(vocab, idf, lr.coef_[0], float(lr.intercept_[0]), lp["ngram_max"])
        lin.save(output_dir)
        card["model_file"] = "linear.json"
        card["hyperparameters"] = dict(lp, solver="liblinear")
        card["vocabulary_size"] = len(vocab)
        clf = ToxicityClassifier(output_dir)
    if len(te):
        s = clf.predict(pa.array([texts[i] for i in te], pa.string()))
        card["heldout"] = binary_metrics(y_all[te], s, threshold)
    with open(os.path.join(output_dir, "card.json"), "w", encoding="utf-8") as fh:
        json.dump(card, fh, indent=2)
    return card
