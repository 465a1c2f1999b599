"""EASE (Steck, 2019): a closed-form item-item linear model for implicit feedback."""

from __future__ import annotations

import numpy as np

from towerkit.baselines.matrix import train_matrix
from towerkit.errors import ConfigError


def ease_weights(matrix: np.ndarray, l2: float) -> np.ndarray:
    """The EASE item-item weights ``B`` for a binary ``[queries, items]`` matrix ``X``.

    ``B`` minimises ``|X - XB|^2 + l2 |B|^2`` with ``diag(B) = 0``; with
    ``P = (X^T X + l2 I)^-1`` it is ``B = I - P diag(1 / diag(P))``.
    """
    gram = matrix.T @ matrix
    gram = np.asarray(gram.todense() if hasattr(gram, "todense") else gram, dtype=np.float64)
    gram[np.diag_indices_from(gram)] += l2
    precision = np.linalg.inv(gram)
    weights = -precision / np.diag(precision)[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


class EASE:
    """EASE: each query's score for an item is a learned weighted sum over the items it met.

    A query held out of training is scored from its given history (the
    dataset's ``history_rows``) with the same weights, without refitting; a
    query with neither gets popularity.

    Args:
        l2: The L2 penalty (λ); larger values shrink towards popularity. Tune it on validation.
        max_items: Refuse item sets larger than this (EASE inverts an items x items matrix).
    """

    def __init__(self, l2: float = 500.0, max_items: int = 20_000):
        if not isinstance(l2, (int, float)) or isinstance(l2, bool) or not l2 > 0:
            raise ConfigError(f"ease's l2 must be a positive number, got {l2!r}.")
        self.l2 = float(l2)
        self.max_items = max_items

    def fit(self, data: object):
        """Solves for the weights on the training rows; returns the scorer."""
        trained = train_matrix(data)
        num_items = trained.matrix.shape[1]
        if num_items > self.max_items:
            raise ConfigError(f"ease inverts an items x items matrix, and this dataset has {num_items:,} items "
                              f"(max_items={self.max_items:,}); drop ease from evaluate.baselines or raise max_items.")
        weights = ease_weights(trained.matrix, self.l2)
        tie_break = trained.popularity_tie_break()

        def scorer(query_ids: np.ndarray) -> np.ndarray:
            history = trained.query_items(query_ids).toarray()  # training items, or a cold query's given ones
            return trained.to_candidates(history @ weights + tie_break)

        return scorer
