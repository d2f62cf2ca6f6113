"""Near-duplicate benchmark corpus built from real text, with exact ground truth.

    python benchmarks/neardup_data.py --docs 100000 --out bench-out/neardup

What it builds (all from /work/shared/corpora: wiki_summaries, handbook,
web_sample, fortunes):

* **background**: real documents as they are (natural duplicates included:
  fortunes repeat quotes across files; untranslated handbook pages equal or
  nearly equal their English page);
* **planted families**: a source document (>= 40 words; half of them shown as a
  web page inside a site header/footer template) plus 1..n edited copies
  (heavy-tailed family sizes; 30% of copies are made from an earlier copy, so
  families contain chains). Each copy gets one to three realistic edits:
  the same site template re-rendered (a re-crawl: other dates, menu items,
  counters) or another site's template, word substitutions /
  insertions / deletions at a rate drawn log-uniformly from 1-20%, a swap of two
  paragraphs (or sentences), truncation to 80-99% of the words;
* **hard negatives**: groups of different documents inside one identical site
  template (header + footer), and "spliced" pairs that share a long prefix but
  continue with different text.

Ground truth is not "the planted families": an edited copy with 15% of its words
changed shares only ~45% of its 5-word shingles with its source, so it is *not*
a near-duplicate at threshold 0.8, while two untouched background fortunes can
be. Truth is therefore computed from the definition: two documents are
duplicates iff the exact Jaccard similarity of their word-n-gram shingle sets
(thresher's normalisation: NFKC, case fold, whitespace split; n = 5) is >=
threshold, and truth clusters are the connected components of that graph. The
exact Jaccard is computed for (a) every pair inside each planted family or
negative group and (b) every candidate pair of a *generous* LSH (256
permutations with an independent seed, 64 bands x 4 rows: it returns a pair of
Jaccard 0.5 with probability 0.98 and one of Jaccard 0.8 with probability
1 - 1e-14), so no pair at or above the threshold is missed in practice and the
truth does not share the evaluated system's hash functions.

Output: ``<out>/corpus/part-NNNNN.parquet`` (id, text, source, origin_id, family,
kind, edits; 5,000-row row groups), ``<out>/truth.parquet`` (id, truth_cluster,
truth_size) and ``<out>/meta.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thresher.scorers.dedup import lsh as LSH
from thresher.scorers.dedup import minhash as M  # noqa: E402

CORPORA = Path(os.environ.get("THRESHER_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "corpora"))
SOURCES = ("wiki_summaries", "handbook", "web_sample", "fortunes")
MIN_WORDS = 40

# --- site templates (boilerplate) ------------------------------------------------------
_SITES = ["dailyreader.example", "the-archive.example", "northwind-news.example",
          "quotes-and-more.example", "linuxtips.example", "wikimirror.example",
          "blog.sunrise.example", "knowledge-hub.example", "forum.opentalk.example",
          "readlater.example", "edu-notes.example", "mirror24.example"]
_NAV = ["Home", "News", "About", "Contact", "Archive", "Topics", "Search", "Login",
        "Register", "Blog", "Forum", "Help", "Privacy", "Terms", "Shop", "Events"]
_HEADER_LINES = [
    "Skip to main content",
    "Menu {nav}",
    "You are here: {nav} > {nav} > Article",
    "Posted on {date} by {author} | {n} comments",
    "Last updated {date}. Reading time: {n} minutes.",
    "Advertisement",
    "This page was archived from the original on {date}.",
]
_FOOTER_LINES = [
    "Share this: Facebook Twitter Email Print",
    "Related articles: {nav} | {nav} | {nav}",
    "Subscribe to our newsletter and never miss an update from {site}.",
    "We use cookies to improve your experience. By continuing to browse you agree to our use of cookies. Accept Decline",
    "Copyright {year} {site}. All rights reserved.",
    "Tags: {nav}, {nav}, {nav}",
    "Leave a comment. Your email address will not be published. Required fields are marked *",
    "Back to top",
    "Powered by {site} CMS {n}.{n}",
]
_AUTHORS = ["admin", "J. Smith", "editor", "M. Rossi", "guest", "A. Müller", "webmaster", "L. Chen"]


def _fill(rng: np.random.Generator, line: str, site: str) -> str:
    out = line
    while "{nav}" in out:
        out = out.replace("{nav}", _NAV[rng.integers(len(_NAV))], 1)
    return (out.replace("{site}", site)
            .replace("{date}", f"{rng.integers(2009, 2025)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}")
            .replace("{author}", _AUTHORS[rng.integers(len(_AUTHORS))])
            .replace("{year}", str(rng.integers(2009, 2025)))
            .replace("{n}", str(rng.integers(1, 60))))


def make_template(rng: np.random.Generator) -> tuple[str, list[int], list[int]]:
    """A site template: (site, header line indices, footer line indices)."""
    site = _SITES[rng.integers(len(_SITES))]
    hl = sorted(rng.choice(len(_HEADER_LINES), size=rng.integers(1, 4), replace=False).tolist())
    fl = sorted(rng.choice(len(_FOOTER_LINES), size=rng.integers(2, 5), replace=False).tolist())
    return site, hl, fl


def render_template(rng: np.random.Generator, tpl) -> tuple[str, str]:
    """(header, footer) text of a template; dates, names and menu items are drawn
    afresh on every call, as on two crawls of the same site."""
    site, hl, fl = tpl
    header = "\n".join(_fill(rng, _HEADER_LINES[i], site) for i in hl)
    footer = "\n".join(_fill(rng, _FOOTER_LINES[i], site) for i in fl)
    return header, footer


# --- edits ------------------------------------------------------------------------------
def _paras(text: str) -> list[list[str]]:
    return [p.split() for p in text.split("\n") if p.split()]


def _join(paras: list[list[str]]) -> str:
    return "\n".join(" ".join(p) for p in paras if p)


def edit_words(rng: np.random.Generator, text: str, rate: float, pool: np.ndarray) -> str:
    """Substitute, insert or delete about ``rate`` of the words (equal shares)."""
    out = []
    for para in _paras(text):
        n = len(para)
        ops = rng.random(n)
        kind = rng.integers(0, 3, n)
        new = []
        for w, o, k in zip(para, ops, kind):
            if o >= rate:
                new.append(w)
            elif k == 0:                      # substitution
                new.append(str(pool[rng.integers(len(pool))]))
            elif k == 1:                      # insertion after the word
                new.append(w)
                new.append(str(pool[rng.integers(len(pool))]))
            # k == 2: deletion
        out.append(new)
    return _join(out)


def swap_paragraphs(rng: np.random.Generator, text: str) -> str:
    paras = _paras(text)
    if len(paras) < 2:
        # one paragraph: swap two sentences instead
        import re
        sents = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
        if len(sents) < 2:
            return text
        i, j = rng.choice(len(sents), 2, replace=False)
        sents[i], sents[j] = sents[j], sents[i]
        return " ".join(sents)
    i, j = rng.choice(len(paras), 2, replace=False)
    paras[i], paras[j] = paras[j], paras[i]
    return _join(paras)


def truncate(rng: np.random.Generator, text: str) -> str:
    paras = _paras(text)
    total = sum(len(p) for p in paras)
    keep = int(round(total * rng.uniform(0.80, 0.99)))
    out, n = [], 0
    for p in paras:
        if n >= keep:
            break
        out.append(p[: keep - n])
        n += len(out[-1])
    return _join(out)


def edit(rng: np.random.Generator, body: str, tpl, hf, pool: np.ndarray):
    """One to three random edits of a page: ``body`` shown in template ``tpl`` as
    rendered header/footer ``hf`` (both None = no boilerplate). Boilerplate edits:
    the same site re-rendered (``recrawl``: dates, menus, counters differ) or
    another site's template (``rewrap``). Returns (page text, description, body,
    tpl, hf) so that a copy can itself be copied."""
    names = []
    n_ops = int(rng.choice([1, 2, 3], p=[0.7, 0.25, 0.05]))
    ops = rng.choice(["boiler", "words", "swap", "truncate"], size=n_ops, replace=False,
                     p=[0.3, 0.4, 0.15, 0.15])
    for op in ops:
        if op == "boiler":
            if tpl is not None and rng.random() < 0.6:
                names.append("recrawl")
            else:
                tpl = make_template(rng)
                names.append("rewrap")
            hf = render_template(rng, tpl)
        elif op == "words":
            rate = float(math.exp(rng.uniform(math.log(0.01), math.log(0.20))))
            body = edit_words(rng, body, rate, pool)
            names.append(f"words{rate:.3f}")
        elif op == "swap":
            body = swap_paragraphs(rng, body)
            names.append("swap")
        else:
            body = truncate(rng, body)
            names.append("truncate")
    return page(body, hf), "+".join(names), body, tpl, hf


def page(body: str, hf) -> str:
    return body if hf is None else f"{hf[0]}\n{body}\n{hf[1]}"


# --- corpus ----------------------------------------------------------------------------
def load_sources(corpora: Path = CORPORA) -> pa.Table:
    parts = []
    for name in SOURCES:
        t = pq.read_table(corpora / f"{name}.parquet", columns=["id", "text"])
        parts.append(t.append_column("source", pa.array([name] * t.num_rows, pa.string())))
    t = pa.concat_tables(parts).combine_chunks()
    nwords = pc.list_value_length(pc.utf8_split_whitespace(t["text"]))
    return t.append_column("n_words", pc.cast(nwords, pa.int32()))


def _family_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Copies per planted family: mostly 1-3, heavy tail (a few viral documents)."""
    k = 1 + rng.geometric(0.55, n) - 1
    viral = rng.random(n) < 0.01
    k[viral] = rng.integers(10, 40, viral.sum())
    return np.minimum(k, 60)


def build(n_docs: int = 100_000, seed: int = 0, corpora: Path = CORPORA,
          planted_share: float = 0.15, negative_share: float = 0.03) -> pa.Table:
    """The benchmark corpus (rows shuffled, ids ``nd-NNNNNNN``)."""
    rng = np.random.default_rng(seed)
    src = load_sources(corpora)
    texts = src["text"].to_pylist()
    origin = src["id"].to_pylist()
    source = src["source"].to_pylist()
    eligible = np.flatnonzero(src["n_words"].to_numpy() >= MIN_WORDS)
    # word pools for substitutions, per source corpus
    pools = {}
    for name in SOURCES:
        idx = [i for i in rng.choice(len(texts), 3000, replace=False) if source[i] == name][:400]
        words = [w for i in idx for w in texts[i].split()]
        if not words:
            words = [w for i in range(len(texts)) if source[i] == name for w in texts[i].split()][:20000]
        pools[name] = np.array(words[:200000] or ["lorem"], dtype=object)

    rows: list[tuple] = []   # (text, source, origin_id, family, kind, edits)
    used: set[int] = set()

    # planted families
    target_planted = int(n_docs * planted_share)
    order = rng.permutation(eligible)
    fam = 0
    pos = 0
    n_planted = 0
    while n_planted < target_planted and pos < len(order):
        i = int(order[pos])
        pos += 1
        used.add(i)
        k = int(_family_sizes(rng, 1)[0])
        # half of the sources are web pages: the body inside a site template
        tpl = make_template(rng) if rng.random() < 0.5 else None
        hf = render_template(rng, tpl) if tpl is not None else None
        members = [(texts[i], tpl, hf)]
        rows.append((page(texts[i], hf), source[i], origin[i], f"f{fam}", "source", ""))
        for _ in range(k):
            parent = members[int(rng.integers(len(members)))] if rng.random() < 0.3 else members[0]
            t, desc, *member = edit(rng, *parent, pools[source[i]])
            if not t.strip():
                continue
            members.append(tuple(member))
            rows.append((t, source[i], origin[i], f"f{fam}", "copy", desc))
            n_planted += 1
        fam += 1

    # hard negatives: shared template, different content; spliced prefixes
    target_neg = int(n_docs * negative_share)
    n_neg = 0
    grp = 0
    while n_neg < target_neg and pos + 8 < len(order):
        if rng.random() < 0.7:
            header, footer = render_template(rng, make_template(rng))
            g = int(rng.integers(2, 7))
            for _ in range(g):
                i = int(order[pos])
                pos += 1
                used.add(i)
                rows.append((f"{header}\n{texts[i]}\n{footer}", source[i], origin[i], f"n{grp}",
                             "negative_template", ""))
                n_neg += 1
        else:
            i, j = int(order[pos]), int(order[pos + 1])
            pos += 2
            used.update((i, j))
            wi, wj = texts[i].split(), texts[j].split()
            cut = int(len(wi) * rng.uniform(0.3, 0.6))
            rows.append((texts[i], source[i], origin[i], f"n{grp}", "negative_splice_base", ""))
            rows.append((" ".join(wi[:cut] + wj[cut:]), source[i], origin[i], f"n{grp}",
                         "negative_splice", f"prefix{cut}"))
            n_neg += 2
        grp += 1

    # background: untouched real documents
    rest = np.array([i for i in rng.permutation(len(texts)) if i not in used])
    need = max(0, n_docs - len(rows))
    for i in rest[:need]:
        i = int(i)
        rows.append((texts[i], source[i], origin[i], None, "background", ""))
    if len(rows) > n_docs:
        rows = rows[:n_docs]

    perm = rng.permutation(len(rows))
    rows = [rows[p] for p in perm]
    cols = list(zip(*rows))
    return pa.table({
        "id": pa.array([f"nd-{k:07d}" for k in range(len(rows))], pa.string()),
        "text": pa.array(cols[0], pa.string()),
        "source": pa.array(cols[1], pa.string()),
        "origin_id": pa.array(cols[2], pa.string()),
        "family": pa.array(cols[3], pa.string()),
        "kind": pa.array(cols[4], pa.string()),
        "edits": pa.array(cols[5], pa.string()),
    })


# --- ground truth -----------------------------------------------------------------------
def ground_truth(table: pa.Table, threshold: float = 0.8, ngram: int = 5,
                 seed: int = 987654321) -> tuple[np.ndarray, dict]:
    """Truth cluster label (component-minimum row) of every row, and statistics."""
    t0 = time.time()
    sh, so = LSH.shingles(table["text"], ngram=ngram)
    sv, soff = M.unique_shingle_sets(sh, so)
    n = table.num_rows
    # (a) all pairs inside each planted family / negative group
    fam = table["family"].to_pylist()
    groups: dict[str, list[int]] = {}
    for r, f in enumerate(fam):
        if f is not None:
            groups.setdefault(f, []).append(r)
    pu, pv = [], []
    for members in groups.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                pu.append(members[x])
                pv.append(members[y])
    planted = (np.array(pu, np.int64), np.array(pv, np.int64))
    # (b) generous LSH candidates, independent hash functions
    a, b = M.permutations(256, seed)
    sig = M.signatures_from_shingles(sh, so, a, b)
    bk = M.band_keys(sig, 64, 4)
    cu, cv = LSH.candidate_pairs(bk, valid=np.diff(so) > 0, all_pairs_max=10 ** 9)
    u, v = LSH._unique_pairs(np.concatenate([planted[0], cu]), np.concatenate([planted[1], cv]))
    jac = LSH.exact_jaccard(sv, soff, u, v)
    keep = jac >= threshold
    labels = M.union_find(n, u[keep], v[keep])
    stats = {
        "pairs_checked": int(len(u)),
        "planted_pairs": int(len(planted[0])),
        "lsh_candidates": int(len(cu)),
        "true_edges": int(keep.sum()),
        "truth_clusters_ge2": int((np.bincount(labels, minlength=n) >= 2).sum()),
        "truth_docs_in_clusters": int((np.bincount(labels, minlength=n)[labels] >= 2).sum()),
        "truth_removable": int(n - len(np.unique(labels))),
        "seconds": round(time.time() - t0, 2),
    }
    # how many planted pairs are actually below the threshold (the reason truth != families)
    pj = LSH.exact_jaccard(sv, soff, *planted) if len(planted[0]) else np.zeros(0)
    stats["planted_pairs_ge_threshold"] = int((pj >= threshold).sum())
    return labels, stats


def pairwise_prf(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Pairwise precision/recall/F1 of a clustering against the truth clustering.

    Over all unordered pairs of documents (i, j): predicted positive iff i and j are
    in the same predicted cluster, actually positive iff in the same truth cluster.
    Counted from the contingency table, never by enumerating pairs."""
    pred = np.unique(np.asarray(pred), return_inverse=True)[1]
    truth = np.unique(np.asarray(truth), return_inverse=True)[1]

    def pairs(counts):
        counts = counts.astype(np.int64)
        return int((counts * (counts - 1) // 2).sum())

    pp = pairs(np.bincount(pred))
    tp_all = pairs(np.bincount(truth))
    joint = pred.astype(np.int64) * (int(truth.max()) + 1) + truth
    tp = pairs(np.unique(joint, return_counts=True)[1])
    prec = tp / pp if pp else 1.0
    rec = tp / tp_all if tp_all else 1.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1, "tp": tp, "pred_pairs": pp,
            "true_pairs": tp_all}


def truth_labels_from_table(truth: pa.Table, ids: pa.Array) -> np.ndarray:
    """Align a truth table (id, truth_cluster) to ``ids``: integer labels."""
    m = dict(zip(truth["id"].to_pylist(), truth["truth_cluster"].to_pylist()))
    lab = [m[i] for i in ids.to_pylist()]
    return np.unique(np.array(lab, dtype=object), return_inverse=True)[1]


def write(table: pa.Table, labels: np.ndarray, out: Path, shards: int = 8, meta: dict | None = None):
    out = Path(out)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    for old in (out / "corpus").glob("part-*.parquet"):
        old.unlink()
    n = table.num_rows
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for s in range(shards):
        part = table.slice(bounds[s], bounds[s + 1] - bounds[s])
        tmp = out / "corpus" / f".part-{s:05d}.parquet.tmp"
        pq.write_table(part, tmp, row_group_size=5000, compression="zstd")
        os.replace(tmp, out / "corpus" / f"part-{s:05d}.parquet")
    ids = table["id"]
    cl = ids.take(pa.array(labels))
    sizes = np.bincount(labels, minlength=n)[labels]
    pq.write_table(pa.table({"id": ids, "truth_cluster": cl,
                             "truth_size": pa.array(sizes.astype(np.int32))}),
                   out / "truth.parquet", compression="zstd")
    if meta is not None:
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--out", default="bench-out/neardup")
    args = ap.parse_args(argv)
    t0 = time.time()
    table = build(args.docs, args.seed)
    t1 = time.time()
    labels, stats = ground_truth(table, args.threshold, args.ngram)
    kinds = dict(zip(*np.unique(table["kind"].to_numpy(zero_copy_only=False), return_counts=True)))
    meta = {"docs": table.num_rows, "seed": args.seed, "threshold": args.threshold,
            "ngram": args.ngram, "kinds": {k: int(v) for k, v in kinds.items()},
            "chars": int(pc.sum(pc.utf8_length(table["text"])).as_py()),
            "build_seconds": round(t1 - t0, 2), "truth": stats}
    write(table, labels, Path(args.out), args.shards, meta)
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
