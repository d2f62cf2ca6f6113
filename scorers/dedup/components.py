"""Connected components of an edge list: vectorised union-find and large/small-star rounds.

Both label a node with its component's smallest node; the star maps and reduces are
the per-round pieces of the distributed driver in ``thresher.pipelines.dedup_beam``.
"""
from __future__ import annotations

import numpy as np


# ----------------------------------------------------------------------------------------
# Connected components
# ----------------------------------------------------------------------------------------
def union_find(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Connected-component labels ``int64[n]``: each node's label is the smallest node
    index of its component.

    Vectorised union-find: every round hooks the larger root of each still-split
    edge under the smaller one (``np.minimum.at``), then compresses all paths by
    pointer jumping (``parent = parent[parent]`` until fixed). Parents only ever
    decrease, so there are no cycles and the final root is the component minimum."""
    parent = np.arange(n, dtype=np.int64)
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    while len(u):
        pu, pv = parent[u], parent[v]
        split = pu != pv
        if not split.any():
            break
        u, v, pu, pv = u[split], v[split], pu[split], pv[split]
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))
        while True:
            pp = parent[parent]
            if np.array_equal(pp, parent):
                break
            parent = pp
    return parent


def _dedupe_edges(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(a) == 0:
        return a.astype(np.int64), b.astype(np.int64)
    p = np.unique(np.stack([a, b], axis=1).astype(np.int64), axis=0)
    return p[:, 0], p[:, 1]


def large_star_map(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map side of large-star: both orientations of each edge, keyed by the first."""
    return np.concatenate([u, v]), np.concatenate([v, u])


def _group_arcs(a: np.ndarray, b: np.ndarray):
    """Arcs ``a -> b`` sorted by (a, b), with the first arc of each ``a`` marked and
    every arc's group number (shared by the large- and small-star reduces)."""
    o = np.lexsort((b, a))
    a, b = a[o], b[o]
    first = np.concatenate([[True], a[1:] != a[:-1]])
    return a, b, first, np.cumsum(first) - 1


def large_star_reduce(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduce side of large-star over arcs ``a → b`` (all arcs of a node must be in
    the same call): with ``m(a) = min({a} ∪ N(a))``, emit ``(x, m(a))`` for every
    neighbour ``x > a``. Output is deduplicated."""
    if len(a) == 0:
        return a, b
    a, b, first, grp = _group_arcs(a, b)
    m = np.minimum(a[first], b[first])[grp]
    keep = b > a
    return _dedupe_edges(b[keep], m[keep])


def small_star_map(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map side of small-star: each edge oriented from its larger to its smaller end
    (self-loops dropped), keyed by the larger."""
    keep = u != v
    u, v = u[keep], v[keep]
    return np.maximum(u, v), np.minimum(u, v)


def small_star_reduce(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduce side of small-star over arcs ``a → b`` with ``b < a`` (all arcs of a node
    in the same call): with ``m = min(N(a))``, link ``a`` and every smaller
    neighbour to ``m``: emit ``(x, m)`` for ``x`` in ``N(a) ∪ {a}``, ``x != m``."""
    if len(a) == 0:
        return a, b
    a, b, first, grp = _group_arcs(a, b)
    m_node = b[first]                       # smallest neighbour of each node
    m = m_node[grp]
    keep = b != m
    x = np.concatenate([b[keep], a[first]])
    y = np.concatenate([m[keep], m_node])
    return _dedupe_edges(x, y)


def large_star(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One large-star round over an undirected edge list (local version)."""
    return large_star_reduce(*large_star_map(np.asarray(u, np.int64), np.asarray(v, np.int64)))


def small_star(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One small-star round over an undirected edge list (local version)."""
    return small_star_reduce(*small_star_map(np.asarray(u, np.int64), np.asarray(v, np.int64)))


def edges_checksum(u: np.ndarray, v: np.ndarray) -> tuple[int, int]:
    """Order-independent (count, hash-sum) fingerprint of an edge set; a distributed
    driver compares it between rounds to detect convergence (edges deduplicated)."""
    from thresher.scorers.dedup.lsh import GOLDEN, U64, fmix64
    h = fmix64(np.asarray(u, np.int64).astype(U64) * U64(GOLDEN) ^ np.asarray(v, np.int64).astype(U64))
    return len(u), int(h.sum(dtype=U64))


def star_components(n: int, u: np.ndarray, v: np.ndarray, max_rounds: int = 200,
                    return_rounds: bool = False):
    """Connected-component labels by alternating large-star / small-star rounds until
    the edge set stops changing (Kiveris et al., "Connected Components in MapReduce
    and Beyond", 2014). Labels are the component minimum, as in :func:`union_find`."""
    eu, ev = small_star(np.asarray(u, np.int64), np.asarray(v, np.int64))
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007 - the count is returned
        lu, lv = large_star(eu, ev)
        su, sv = small_star(lu, lv)
        if np.array_equal(su, eu) and np.array_equal(sv, ev):
            break
        eu, ev = su, sv
    else:
        raise RuntimeError("star_components did not converge")
    labels = np.arange(n, dtype=np.int64)
    # converged: every edge is (node, component minimum)
    labels[eu] = ev
    return (labels, rounds) if return_rounds else labels


