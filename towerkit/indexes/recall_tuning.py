"""Choosing ScaNN's search effort for a recall target, measured against exact search.

Recall@k is measured on a sample of real queries. The search effort has two knobs: how many
tree leaves a query searches (each leaf's candidates are scored approximately) and how many of
the best approximate candidates are rescored exactly. For each rescoring size, the fewest leaves
reaching the target are found by bisection (recall grows with leaves), and the pair of least
modelled cost wins.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import tensorflow as tf

from towerkit.errors import ConfigError

# Exact rescoring sizes tried (each at least k).
REORDER_GRID = (50, 100, 200, 500, 1000, 2000)
# Shares of the leaves tried per query.
LEAF_FRACTIONS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
# An approximate (asymmetric-hashing) score costs about this share of an exact rescoring, which
# reads a full-width vector from a random place in memory.
APPROXIMATE_COST = 0.125
EXACT_CHUNK = 32_768  # candidates per exact-search matmul, to bound memory


def sample_queries(queries: Any, query_model: Any, size: int, seed: int = 0) -> np.ndarray:
    """Up to ``size`` query embeddings, drawn at random: from raw features (through the query
    model) or from ``[n, dim]`` embeddings."""
    rng = np.random.default_rng(seed)
    if isinstance(queries, Mapping):
        if query_model is None:
            raise ConfigError("raw tuning queries need the index's query_model; pass query embeddings instead.")
        from towerkit.embedding import embed

        count = len(next(iter(queries.values())))
        rows = np.sort(rng.choice(count, size=min(size, count), replace=False))
        return embed(query_model, {key: np.asarray(values)[rows] for key, values in queries.items()}).numpy()
    embeddings = np.asarray(queries, dtype=np.float32)
    if embeddings.ndim != 2 or not len(embeddings):
        raise ConfigError(f"tuning queries must be a dict of query features or a non-empty [n, dim] matrix of "
                          f"embeddings, got shape {embeddings.shape}.")
    rows = np.sort(rng.choice(len(embeddings), size=min(size, len(embeddings)), replace=False))
    return embeddings[rows]


def exact_top_k(queries: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Indices of each query's exact top k by dot product, computed over chunks of candidates."""
    query_tensor = tf.constant(queries, tf.float32)
    best_scores, best_ids = None, None
    for start in range(0, len(candidates), EXACT_CHUNK):
        chunk = tf.constant(candidates[start:start + EXACT_CHUNK], tf.float32)
        scores, ids = tf.math.top_k(tf.matmul(query_tensor, chunk, transpose_b=True), k=min(k, len(chunk)))
        ids = ids + start
        if best_scores is not None:
            scores, ids = tf.concat([best_scores, scores], 1), tf.concat([best_ids, ids], 1)
            scores, positions = tf.math.top_k(scores, k=min(k, scores.shape[1]))
            ids = tf.gather(ids, positions, batch_dims=1)
        best_scores, best_ids = scores, ids
    return best_ids.numpy()


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top k that the approximate search found."""
    k = exact.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(e.tolist())) / k for f, e in zip(found, exact)]))


def search_cost(leaves: int, reorder: int, num_leaves: int, num_candidates: int) -> float:
    """Modelled work of one query, in exact rescorings: leaf centroids, approximate scores, rescoring."""
    approximate = leaves / num_leaves * num_candidates
    return (num_leaves + approximate) * APPROXIMATE_COST + reorder


def aimed_recall(target: float, queries: int, k: int) -> float:
    """The recall tuning aims for: two standard errors of the sample's estimate above the target,
    so that queries outside the sample reach the target too (capped at 1)."""
    error = (target * (1 - target) / max(1, queries * k)) ** 0.5
    return min(1.0, target + 2 * error)


def choose_search(found: Callable[[int, int], np.ndarray], exact: np.ndarray, target: float, num_leaves: int,
                  num_candidates: int, k: int) -> dict[str, Any]:
    """The cheapest (leaves searched, candidates rescored) whose recall@k reaches ``target``.

    Args:
        found: Runs the approximate search with (leaves, reorder) and returns ``[queries, k]`` indices.
        exact: The exact top-k indices of the same queries.

    Returns:
        ``num_leaves_to_search``, ``num_reordering_candidates``, ``reached_recall`` and
        ``target_reached`` (False when even the most thorough search falls short; then that is chosen).
    """
    leaf_options = sorted({max(1, min(num_leaves, round(num_leaves * f))) for f in LEAF_FRACTIONS})
    reorder_options = sorted({max(k, r) for r in REORDER_GRID})
    measured: dict[tuple[int, int], float] = {}

    def recall(leaves: int, reorder: int) -> float:
        if (leaves, reorder) not in measured:
            measured[leaves, reorder] = recall_at_k(found(leaves, reorder), exact)
        return measured[leaves, reorder]

    best = None
    high = len(leaf_options) - 1
    for reorder in reorder_options:
        if recall(leaf_options[high], reorder) < target:
            continue
        low = 0
        while low < high:  # the fewest leaves reaching the target, for this rescoring size
            middle = (low + high) // 2
            if recall(leaf_options[middle], reorder) >= target:
                high = middle
            else:
                low = middle + 1
        leaves = leaf_options[high]
        cost = search_cost(leaves, reorder, num_leaves, num_candidates)
        if best is None or cost < best[0]:
            best = (cost, leaves, reorder)
    if best is None:
        leaves, reorder = leaf_options[-1], reorder_options[-1]
        return {"num_leaves_to_search": leaves, "num_reordering_candidates": reorder,
                "reached_recall": round(recall(leaves, reorder), 4), "target_reached": False}
    _, leaves, reorder = best
    return {"num_leaves_to_search": leaves, "num_reordering_candidates": reorder,
            "reached_recall": round(recall(leaves, reorder), 4), "target_reached": True}
