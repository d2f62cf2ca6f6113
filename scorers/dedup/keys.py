"""Column names and the key-table layout of the ``minhash_dedup`` global stage
(shared by the stage and its distributed Beam driver, ``thresher.pipelines.dedup_beam``).

Output annotations (every row that ends up in a cluster of two or more documents,
the kept survivor included):

* ``cluster_id`` (string): the id of the cluster's surviving document. It is a
  content-derived, order-independent name, so the same corpus gives the same
  cluster ids on every run, whatever the shard layout.
* ``cluster_size`` (int32): number of documents in the cluster.

Rows that are not near-duplicates of anything carry nulls in both columns.

The key table that ``MinHashDedup.keys`` returns per batch (no text; see
``scorers/minhash.py`` for the exact layout) uses the ``KEY_*`` names below.
"""
from __future__ import annotations

import pyarrow as pa

STAGE = "minhash_dedup"

CLUSTER_ID = "cluster_id"
CLUSTER_SIZE = "cluster_size"


#: reason given to every removed near-duplicate: "<stage id>.near_duplicate"
RULE_NEAR_DUPLICATE = "near_duplicate"

# --- key-table columns (per row, produced by keys(), consumed by compute()) -------------
KEY_ID = "id"                  # string: the document id
KEY_ID_HASH = "id_hash"        # uint64: xxh64(id utf-8, seed 0), survivor tie-break
KEY_N_CHARS = "n_chars"        # int64: characters of the original text
KEY_N_SHINGLES = "n_shingles"  # int32: shingles of the normalised text (0 = never clustered)
KEY_BANDS = "band_keys"        # fixed_size_list<uint64>[bands]
KEY_SIGNATURE = "signature"    # fixed_size_list<uint32>[num_perm]
KEY_SHINGLES = "shingles"      # list<uint64>, sorted unique shingle hashes (verify=jaccard only)
KEY_SCORE = "survivor_score"   # float64, survivor=highest:<col> / lowest:<col> only


def key_schema(bands: int, num_perm: int, *, with_shingles: bool, with_score: bool) -> pa.Schema:
    """Schema of the table ``MinHashDedup.keys`` returns (before the engine adds
    ``__shard`` and ``__row``)."""
    fields = [
        pa.field(KEY_ID, pa.string()),
        pa.field(KEY_ID_HASH, pa.uint64()),
        pa.field(KEY_N_CHARS, pa.int64()),
        pa.field(KEY_N_SHINGLES, pa.int32()),
        pa.field(KEY_BANDS, pa.list_(pa.uint64(), bands)),
        pa.field(KEY_SIGNATURE, pa.list_(pa.uint32(), num_perm)),
    ]
    if with_score:
        fields.append(pa.field(KEY_SCORE, pa.float64()))
    if with_shingles:
        fields.append(pa.field(KEY_SHINGLES, pa.list_(pa.uint64())))
    return pa.schema(fields)
