"""Alternating least squares through the ``implicit`` library (an optional extra)."""

from __future__ import annotations

import numpy as np

from towerkit.baselines.matrix import train_matrix
from towerkit.errors import ConfigError


def import_implicit_als():
    """implicit's CPU ALS class; raises ConfigError naming the extra when implicit is missing."""
    try:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        raise ConfigError("the 'als' baseline needs the implicit library, which is not installed; "
                          "run `pip install 'towerkit[baselines]'` or drop 'als' from evaluate.baselines.") from exc
    return AlternatingLeastSquares, threadpool_limits


class ALS:
    """Matrix factorisation by implicit-feedback ALS (Hu, Koren and Volinsky, 2008), via ``implicit``.

    Scores are ``user_factors @ item_factors.T``; a query with no training
    interactions gets popularity.

    Args:
        factors: Width of the user and item factors.
        regularization: The L2 penalty on the factors.
        alpha: Confidence weight of an observed interaction (``1 + alpha``).
        iterations: ALS sweeps.
        seed: Seeds the factors' initialisation.
        num_threads: CPU threads implicit uses (0: all cores).
    """

    def __init__(self, factors: int = 64, regularization: float = 0.05, alpha: float = 1.0,
                 iterations: int = 15, seed: int = 42, num_threads: int = 1):
        self.options = {"factors": factors, "regularization": regularization, "alpha": alpha,
                        "iterations": iterations, "random_state": seed, "num_threads": num_threads}

    def fit(self, data: object):
        """Factorises the training matrix; returns the scorer."""
        als_class, threadpool_limits = import_implicit_als()
        trained = train_matrix(data)
        with threadpool_limits(1, "blas"):  # implicit parallelises itself; BLAS threads only contend
            model = als_class(**self.options, calculate_training_loss=False)
            model.fit(trained.matrix.astype(np.float32).tocsr(), show_progress=False)
        user_factors = np.asarray(model.user_factors, dtype=np.float64)
        item_factors = np.asarray(model.item_factors, dtype=np.float64)
        tie_break = trained.popularity_tie_break()

        def scorer(query_ids: np.ndarray) -> np.ndarray:
            rows = trained.query_rows(query_ids)
            scores = user_factors[np.maximum(rows, 0)] @ item_factors.T
            scores[rows < 0] = 0.0
            return trained.to_candidates(scores + tie_break)

        return scorer
