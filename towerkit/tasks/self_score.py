"""A training loss term that keeps a history item from pointing at itself (EASE's zero diagonal, for two towers)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from towerkit.contracts import component_label
from towerkit.errors import ConfigError, FeatureError


def check_self_score_weight(weight: Any) -> float:
    """The penalty's weight as a float, or one clear error."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (weight >= 0 and math.isfinite(weight)):
        raise ConfigError(f"self_score_penalty must be a finite non-negative number (0 turns it off), got {weight!r}.")
    return float(weight)


class SelfScorePenalty:
    """``weight * sum((e_i . c_i)^2)`` over the items of a training batch's histories.

    With a query tower that pools its history's item embeddings ``e_i`` (the
    ``history`` tower), a query's score for candidate ``j`` is a sum of
    ``e_i . c_j`` over the items ``i`` it names: a factorised item-to-item
    matrix. Its diagonal ``e_j . c_j`` is how much an item recommends itself.
    EASE constrains its item-to-item matrix's diagonal to zero so that an item
    is scored only by the other items of a history; this penalty pushes the
    two-tower diagonal towards zero in the same spirit, on the items the batch's
    histories name. In the cold-start protocol the given history is never a
    target, and without it about an eighth of the tower's top-10 were the
    given movies themselves (docs/quality.md).

    With attention pooling an item's share of the query is ``w_i * e_i``, so
    ``e_i . c_i`` is still its self-score up to its weight; a GRU mixes the
    items, so it is refused. The term is summed over the items as the task's
    loss is over the batch; it ignores ``temperature`` and sample weights, and
    the logged training ``loss`` includes it (evaluation's does not).

    Args:
        weight: The penalty's weight (added to the summed in-batch loss).
        query_tower: A tower with ``history_ids(features)``, ``item_embeddings(ids)``
            and ``item_key`` (the ``history`` tower).
        candidate_tower: The candidate tower, run on each history item's row of the candidate table.
        candidate_features: The candidate table (column -> array), with the ``item_key`` column.

    Example:
        >>> model = towerkit.assemble(query={"name": "history"}, candidate="movie", data=data,
        ...                           self_score_penalty=1.0)
    """

    def __init__(self, weight: float, query_tower: Any, candidate_tower: Any,
                 candidate_features: Mapping[str, np.ndarray]):
        self.weight = check_self_score_weight(weight)
        if not all(callable(getattr(query_tower, name, None)) for name in ("history_ids", "item_embeddings")) \
                or not isinstance(getattr(query_tower, "item_key", None), str):
            raise ConfigError(
                f"self_score_penalty needs a query tower that pools an item history (such as 'history'), got "
                f"'{component_label(query_tower)}'; use such a tower or set model.self_score_penalty to 0.")
        if not getattr(query_tower, "pools_additively", False):
            raise ConfigError(
                f"self_score_penalty needs a history pooling that adds up item embeddings (mean or attention), but "
                f"query tower '{component_label(query_tower)}' pools with {getattr(query_tower, 'pooling', 'its own')!r}; "
                "choose pooling = \"mean\" or \"attention\", or set model.self_score_penalty to 0.")
        key = query_tower.item_key
        if key not in candidate_features:
            raise FeatureError(
                f"self_score_penalty looks history items up in the candidate column '{key}', which the candidate "
                f"table lacks (it has {', '.join(candidate_features)}); set the query tower's item_key to the "
                "column its history ids name.")
        self.query_tower, self.candidate_tower = query_tower, candidate_tower
        ids = _as_int64_ids(candidate_features[key], key)
        order = np.argsort(ids, kind="stable")
        # Eager constants, made once: a traced train step captures them by reference.
        self._sorted_ids = tf.constant(ids[order])
        self._rows = tf.constant(order.astype(np.int64))
        self._columns = {k: tf.constant(np.asarray(candidate_features[k])) for k in candidate_tower.feature_keys}

    def __call__(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """The penalty for one batch of training features (0 for histories naming no known candidate)."""
        ids = self.query_tower.history_ids(features).flat_values
        position = tf.minimum(tf.searchsorted(self._sorted_ids, ids, out_type=tf.int64),
                              tf.size(self._sorted_ids, tf.int64) - 1)
        known = tf.equal(tf.gather(self._sorted_ids, position), ids)
        ids, rows = tf.boolean_mask(ids, known), tf.boolean_mask(tf.gather(self._rows, position), known)
        candidates = self.candidate_tower({k: tf.gather(v, rows) for k, v in self._columns.items()})
        items = self.query_tower.item_embeddings(ids)
        # A candidate tower's extra bias column (item_bias) has no partner among the item's embedding dims.
        self_scores = tf.reduce_sum(items * candidates[:, : tf.shape(items)[1]], axis=1)
        return self.weight * tf.reduce_sum(tf.square(self_scores))


def _as_int64_ids(values: np.ndarray, key: str) -> np.ndarray:
    try:
        return np.asarray(values).astype(np.int64)
    except (TypeError, ValueError):
        raise FeatureError(f"self_score_penalty needs integer ids in the candidate column '{key}' (history ids are "
                           "integers); set the query tower's item_key to an integer id column.") from None
