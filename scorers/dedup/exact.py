"""``exact_dedup``: exact duplicates of normalised text, one deterministic survivor per group."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.schemas import columns as C
from thresher.scorers.base import (
    Column,
    Decisions,
    GlobalStage,
    Param,
    one_of,
)
from thresher.scorers.registry import register
from thresher.scorers.text.hashing import normalize_text, stable_id_hash, xxh128_hex

EXACT_HASH = "exact_hash"


def _positive_or_none(v):
    return None if v is None or v >= 1 else f"must be >= 1, got {v}"


@register
class ExactDedup(GlobalStage):
    """Exact duplicates of normalised text; one survivor per group.

    The survivor is the member with the smallest stable hash of its id (ties: the
    id string), so the choice does not depend on input order, shard count or
    worker count. ``survivor: longest`` keeps the longest original text instead
    (ties again by id hash).

    The global step gathers the key rows (about 60 B per document) on one worker, or, with
    ``global_step: distributed`` (``auto``: above 250k input rows or 256 shards), partitions
    them by text hash so that every group of equal texts is decided on one worker; both
    give the same decisions.
    """

    name = "exact_dedup"
    doc = "Exact duplicates after NFKC / case fold / whitespace collapse (each switchable)."
    params = {
        "nfkc": Param(bool, True, "Unicode NFKC normalisation"),
        "casefold": Param(bool, True, "case-insensitive comparison"),
        "collapse_whitespace": Param(bool, True, "runs of whitespace count as one space; strip ends"),
        "survivor": Param(str, "min_id_hash", "which member survives", one_of("min_id_hash", "longest")),
        "global_step": Param(str, "auto", "auto (distributed above 250k input rows or 256 shards) | gather (one "
                             "worker) | distributed (Beam: keys partitioned by text hash; identical decisions)",
                             one_of("auto", "gather", "distributed")),
        "partitions": Param(int, None, "distributed: shuffle partitions (null: one per 100k input rows, at "
                            "least 16)", _positive_or_none, nullable=True),
    }
    hash_column = EXACT_HASH
    reasons = {"duplicate": "same normalised text as the survivor named in `duplicate_of`"}
    default_order = 20
    cpu_ns_per_byte = 15  # benchmarks/results (filters.txt, langid.txt, dedup_100k.json)
    columns = (Column(EXACT_HASH, pa.string(), "xxh3-128 (hex) of the normalised text"),)

    def keys(self, text: pa.Array, batch: pa.Table, ids: pa.Array) -> pa.Table:
        norm = normalize_text(text, nfkc=self.config["nfkc"], casefold=self.config["casefold"],
                              collapse_whitespace=self.config["collapse_whitespace"])
        return pa.table({
            EXACT_HASH: xxh128_hex(norm),
            "_id": ids,
            "_chars": pc.utf8_length(text).cast(pa.int64()),
        })

    def distributed_step(self) -> Optional[str]:
        # auto is resolved by the builder, which knows the corpus size (below it: the gather step)
        return None if self.config["global_step"] == "gather" else "thresher.pipelines.dedup_beam:build_exact"

    def compute(self, keys: pa.Table) -> Decisions:
        n = keys.num_rows
        empty = pa.table({C.SHARD: pa.array([], pa.int32()), C.ROW: pa.array([], pa.int64()),
                          C.REASON: pa.array([], pa.string()), C.DUPLICATE_OF: pa.array([], pa.string())})
        if n == 0:
            return Decisions(empty, {"documents": 0, "duplicates": 0})
        hashes = keys[EXACT_HASH].combine_chunks()
        # group ids by hash (dictionary-encode: codes are positions of first occurrence order,
        # which depends on input order, so only use them as group labels)
        codes = pc.dictionary_encode(hashes).indices.to_numpy(zero_copy_only=False).astype(np.int64)
        idh = stable_id_hash(keys["_id"].combine_chunks())          # uint64
        ids = keys["_id"].combine_chunks().to_numpy(zero_copy_only=False).astype(object)
        if self.config["survivor"] == "longest":
            primary = -keys["_chars"].combine_chunks().to_numpy(zero_copy_only=False)
        else:
            primary = np.zeros(n, dtype=np.int64)
        # order within group: primary, then id hash, then id string (total order, input independent)
        order = np.lexsort((ids, idh, primary, codes))
        sc = codes[order]
        starts = np.r_[True, sc[1:] != sc[:-1]]
        first_pos = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
        survivor_idx = order[first_pos]
        dup = ~starts
        rows = order[dup]
        stats = {"documents": n, "duplicates": int(rows.size), "groups": int(starts.sum())}
        if rows.size == 0:
            return Decisions(empty, stats)
        return Decisions(pa.table({
            C.SHARD: keys[C.SHARD].take(pa.array(rows)).combine_chunks(),
            C.ROW: keys[C.ROW].take(pa.array(rows)).combine_chunks(),
            C.REASON: pa.array([self.reason("duplicate")] * rows.size, pa.string()),
            C.DUPLICATE_OF: pa.array(ids[survivor_idx[dup]], pa.string()),
        }), stats)
