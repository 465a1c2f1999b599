"""Exact top-k: every candidate scored by dot product (TFRS BruteForce)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tensorflow_recommenders as tfrs

from towerkit.indexes.base import ValidatedIndex, check_k


class BruteForceIndex(ValidatedIndex, tfrs.layers.factorized_top_k.BruteForce):
    """TFRS BruteForce with validated k, dimensions and inputs.

    Args:
        query_model: Maps raw query features to embeddings; None to query with embeddings.
        k: Default number of results.
        name: Layer name.

    Example:
        >>> index = towerkit.create_index("brute-force", query_model=model.query_tower, k=10)
        >>> index.index(candidate_embeddings, identifiers=titles)
        >>> scores, titles = index(tf.constant(["42"]))
    """

    backend = "brute-force"

    def __init__(self, query_model: Any = None, k: int = 10, name: str | None = None):
        super().__init__(query_model=query_model, k=check_k(k, None, "brute-force"), name=name)

    def _is_empty(self) -> bool:
        return self._candidates is None

    def _search(self, queries, k):
        values, indices = tf.math.top_k(self._compute_score(queries, self._candidates), k=k)
        return values, tf.gather(self._identifiers, indices)
