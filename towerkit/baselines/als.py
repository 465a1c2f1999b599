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


def fold_in(model, histories, threadpool_limits) -> np.ndarray:
    """User factors for queries not trained on, solved from their histories with the items fixed.

    This is implicit's ``recalculate_user``: the same least-squares step a
    training sweep takes for a user, so a new user is served without
    refitting. An empty history gives zero factors (popularity then ranks).
    """
    if not histories.shape[0]:
        return np.zeros((0, model.factors))
    with threadpool_limits(1, "blas"):
        factors = model.recalculate_user(np.arange(histories.shape[0]), histories.astype(np.float32).tocsr())
    return np.asarray(factors, dtype=np.float64)


class ALS:
    """Matrix factorisation by implicit-feedback ALS (Hu, Koren and Volinsky, 2008), via ``implicit``.

    Scores are ``user_factors @ item_factors.T``. A query held out of training
    gets its factors folded in from its given history (the dataset's
    ``history_rows``) by implicit's ``recalculate_user``, without refitting; a
    query with neither gets popularity.

    Args:
        factors: Width of the user and item factors.
        regularization: The L2 penalty on the factors.
        alpha: Confidence of an observed interaction (implicit scales the binary matrix by it).
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
            factors = user_factors[np.maximum(rows, 0)]
            factors[rows < 0] = fold_in(model, trained.query_items(query_ids[rows < 0]), threadpool_limits)
            return trained.to_candidates(factors @ item_factors.T + tie_break)

        return scorer
