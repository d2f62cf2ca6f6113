"""Build the candidate pool and the eval sets of the curation-effect experiment (deterministic).

    python benchmarks/effect/build_pool.py [OUT_DIR]      # default: bench-out/effect/data

Writes ``OUT/pool/pool.parquet`` (id, text, source, noise), ``OUT/eval/{wiki_en,wiki_other}.parquet`` and
``OUT/target/dev.parquet``. A file whose bytes would not change is not rewritten (its mtime, part of an
experiment's identity, stays), so adding a file here never invalidates finished experiments.

Pool (ids keep their source prefix):
- real text from ``../shared/corpora``: English Wikipedia leads, French and Spanish Wikipedia leads, the
  web sample (unfiltered Common Crawl pages), the Debian handbook (English pages and some of other locales),
  LLM-written style paragraphs, fortunes (no offensive collections), tweets;
- real duplicates: exact copies (1–3 each) and near copies (a few words changed) of some English
  Wikipedia leads (``dup-exact-*``, ``dup-near-*``);
- the built-in sample corpus's noise (``thresher sample``): web pages wrapped in boilerplate, spam,
  offensive forum text, short and empty documents, and the planted exact/near duplicates with their
  originals (``sample-*``; ``noise`` says which, from its truth file).

Eval sets (no arm trains on them): English Wikipedia leads not in the pool (``wiki_en``) and French +
Spanish leads not in the pool (``wiki_other``).

Development target (``target/dev.parquet``; the model-based methods' target, never an eval set): 64 English
and 32 French/Spanish Wikipedia leads that are neither in the pool nor in an eval set. PreSelect's scoring
LMs are ranked by their loss on it and MATES probes its reference loss on it. Selection everywhere is by xxh64(seed, id), so the
same corpora always give byte-identical files.
"""
from __future__ import annotations

import os
import sys
import tempfile
from random import Random

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPORA = os.environ.get("THRESHER_CORPORA", os.path.join(os.path.dirname(ROOT), "shared", "corpora"))

SIZES = {"wiki_en_pool": 4000, "wiki_other_pool": 500, "wiki_en_eval": 300, "wiki_other_eval": 300,
         "wiki_en_dev": 64, "wiki_other_dev": 32,
         "handbook_other": 150, "style": 1000, "fortunes": 2000, "tweets": 1000, "sample_docs": 4000,
         "exact_dup_sources": 300, "near_dup_sources": 200}
SEED = 7


def _h(s: str, seed: int = SEED) -> int:
    return xxhash.xxh64_intdigest(s.encode(), seed)


def _rows(name: str, columns: list[str]) -> list[dict]:
    return pq.read_table(os.path.join(CORPORA, name), columns=columns).to_pylist()


def _by_hash(rows: list[dict], seed: int = SEED) -> list[dict]:
    return sorted(rows, key=lambda r: (_h(r["id"], seed), r["id"]))


def _near_copy(text: str, rng: Random) -> str:
    words = text.split(" ")
    for _ in range(max(1, len(words) // 30)):
        i = rng.randrange(len(words))
        words[i] = rng.choice(["the", "a", "its", "this", "that", "an", "one", "some"])
    return " ".join(words)


def _write(table: pa.Table, path: str) -> bool:
    """Write ``table`` to ``path`` unless the file already holds exactly these bytes; True if written."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    pq.write_table(table, tmp, compression="zstd", row_group_size=2000)
    if os.path.exists(path):
        with open(path, "rb") as a, open(tmp, "rb") as b:
            if a.read() == b.read():
                os.remove(tmp)
                return False
    os.replace(tmp, path)
    return True


def build(out: str) -> dict:
    rng = Random(SEED)
    pool: list[dict] = []

    def add(rows, source, noise=""):
        pool.extend({"id": r["id"], "text": r["text"], "source": source, "noise": noise} for r in rows)

    wiki = _rows("wiki_summaries.parquet", ["id", "lang", "text"])
    en = _by_hash([r for r in wiki if r["lang"] == "en"])
    other = _by_hash([r for r in wiki if r["lang"] != "en"])
    n_ev, n_po = SIZES["wiki_en_eval"], SIZES["wiki_en_pool"]
    eval_en, pool_en = en[:n_ev], en[n_ev: n_ev + n_po]
    n_ev, n_po = SIZES["wiki_other_eval"], SIZES["wiki_other_pool"]
    eval_other, pool_other = other[:n_ev], other[n_ev: n_ev + n_po]
    # the development target: after the eval and pool slices of both lists (disjoint from both)
    lo = SIZES["wiki_en_eval"] + SIZES["wiki_en_pool"]
    dev = en[lo: lo + SIZES["wiki_en_dev"]]
    lo = SIZES["wiki_other_eval"] + SIZES["wiki_other_pool"]
    dev += other[lo: lo + SIZES["wiki_other_dev"]]
    add(pool_en, "wiki_en")
    add(pool_other, "wiki_other")
    add(_rows("web_sample.parquet", ["id", "text"]), "web")
    hb = _rows("handbook.parquet", ["id", "lang", "text"])
    add([r for r in hb if r["id"].startswith("handbook-en-")], "handbook_en")
    add(_by_hash([r for r in hb if not r["id"].startswith("handbook-en-")])[: SIZES["handbook_other"]],
        "handbook_other")
    add(_by_hash(_rows("style_paragraphs.parquet", ["id", "text"]))[: SIZES["style"]], "style")
    fo = _rows("fortunes.parquet", ["id", "offensive", "text"])
    add(_by_hash([r for r in fo if not r["offensive"]])[: SIZES["fortunes"]], "fortunes")
    add(_by_hash(_rows("toxicity_labelled.parquet", ["id", "text"]))[: SIZES["tweets"]], "tweets")

    # real duplicates of Wikipedia leads
    srcs = pool_en[: SIZES["exact_dup_sources"] + SIZES["near_dup_sources"]]
    k = 0
    for r in srcs[: SIZES["exact_dup_sources"]]:
        for _ in range(rng.randint(1, 3)):
            pool.append({"id": f"dup-exact-{k:05d}", "text": r["text"], "source": "wiki_en", "noise": "exact_dup"})
            k += 1
    for j, r in enumerate(srcs[SIZES["exact_dup_sources"]:]):
        pool.append({"id": f"dup-near-{j:05d}", "text": _near_copy(r["text"], rng), "source": "wiki_en",
                     "noise": "near_dup"})

    # the sample corpus's noise (and its planted duplicates with their originals)
    from thresher.pipelines.sample import write_sample
    with tempfile.TemporaryDirectory() as tmp:
        info = write_sample(tmp, n_docs=SIZES["sample_docs"], seed=SEED, n_shards=1)
        docs = pq.read_table(info["paths"][0], columns=["id", "text"]).to_pylist()
        truth = {r["id"]: r for r in pq.read_table(info["truth"]).to_pylist()}
    noisy = {"web", "spam", "offensive", "short", "empty"}
    keep = {i for i, t in truth.items() if t["kind"] in noisy or t["dup_type"] is not None}
    keep |= {truth[i]["source_id"] for i in list(keep) if truth[i]["source_id"]}
    for d in docs:
        t = truth[d["id"]]
        if d["id"] in keep and t["kind"] != "long" and d["text"]:
            flag = t["expected_flags"] or "clean"
            if t["dup_type"]:
                flag = f"{flag},{t['dup_type']}_dup"
            pool.append({"id": d["id"], "text": d["text"], "source": "sample", "noise": flag})

    pool.sort(key=lambda r: (_h(r["id"], SEED + 1), r["id"]))
    written = []
    if _write(pa.Table.from_pylist(pool), os.path.join(out, "pool", "pool.parquet")):
        written.append("pool/pool.parquet")
    for name, rows in (("eval/wiki_en", eval_en), ("eval/wiki_other", eval_other), ("target/dev", dev)):
        if _write(pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]}),
                  os.path.join(out, f"{name}.parquet")):
            written.append(f"{name}.parquet")
    by_source: dict[str, list[int]] = {}
    for r in pool:
        c = by_source.setdefault(r["source"], [0, 0])
        c[0] += 1
        c[1] += len(r["text"])
    return {"pool_docs": len(pool), "pool_chars": sum(v[1] for v in by_source.values()), "by_source": by_source,
            "eval": {"wiki_en": len(eval_en), "wiki_other": len(eval_other)}, "dev": len(dev), "written": written}


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "bench-out", "effect", "data")
    s = build(target)
    print(f"pool: {s['pool_docs']:,} documents, {s['pool_chars']:,} characters → {target}/pool/pool.parquet")
    for src, (n, c) in sorted(s["by_source"].items()):
        print(f"  {src:<16} {n:>6,} docs {c:>11,} chars")
    print(f"eval: {s['eval']}; target/dev: {s['dev']} docs")
    print("written: " + (", ".join(s["written"]) or "nothing (every file already held these bytes)"))
