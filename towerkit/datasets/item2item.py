"""Item-to-item pairs from MovieLens-100K: (a movie a user rated, a movie they rated next)."""

from __future__ import annotations

import os

import numpy as np

from towerkit.datasets.base import RetrievalDataset
from towerkit.datasets.movielens import MovieLens100K
from towerkit.towers.base import check_positive_int

CARRIED = ("movie_title", "movie_genres", "movie_id")


def consecutive_pairs(users: np.ndarray, timestamps: np.ndarray, rows: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(query row, candidate row) pairs: within each user's rows in time order, each
    row paired with the next ``window`` rows."""
    order = rows[np.lexsort((rows, timestamps[rows], users[rows]))]
    sorted_users = users[order]
    queries, candidates = [], []
    for step in range(1, window + 1):
        same_user = sorted_users[:-step] == sorted_users[step:]
        queries.append(order[:-step][same_user])
        candidates.append(order[step:][same_user])
    return np.concatenate(queries), np.concatenate(candidates)


class MovieLensItemToItem(RetrievalDataset):
    """(query movie, candidate movie) pairs for "more like this" retrieval.

    Each user's ratings are put in time order and each movie is paired with the
    movie(s) rated next. The tutorial's 80/20 split is applied to the ratings
    first; train pairs come only from training ratings and test pairs only from
    test ratings, so no pair crosses the split.

    Query features are the candidate features prefixed with ``query_``
    (``query_movie_title``, ``query_movie_genres``, ``query_movie_id``).

    Args:
        window: Pair each rating with the next ``window`` ratings of the same user.
        data_dir: towerkit's data dir (see ``movielens-100k``).
        source: Where MovieLens comes from (see ``movielens-100k``).
        split_seed: The seed of the tutorial's shuffle.
        train_fraction: Share of ratings used for training.

    Example:
        >>> pairs = towerkit.load_dataset("movielens-100k-item2item", window=2)
    """

    name = "movielens-100k-item2item"
    query_id_key = "query_movie_title"
    candidate_id_key = "movie_title"
    baselines = ("popularity", "cooccurrence")
    exclude_query_from_candidates = True

    def __init__(
        self,
        window: int = 1,
        data_dir: str | os.PathLike | None = None,
        source: str = "auto",
        split_seed: int = 42,
        train_fraction: float = 0.8,
    ):
        check_positive_int(window, "window")
        ratings = MovieLens100K(data_dir=data_dir, source=source, split_seed=split_seed, train_fraction=train_fraction)
        columns = ratings.interactions
        users, timestamps = columns["user_id"], columns["timestamp"]
        parts = [consecutive_pairs(users, timestamps, rows, window) for rows in (ratings.train_rows, ratings.test_rows)]
        query_rows = np.concatenate([parts[0][0], parts[1][0]])
        candidate_rows = np.concatenate([parts[0][1], parts[1][1]])
        interactions = {"user_id": users[query_rows]}
        for key in CARRIED:
            interactions[f"query_{key}"] = columns[key][query_rows]
            interactions[key] = columns[key][candidate_rows]
        num_train = len(parts[0][0])
        self.window = window
        self.source = ratings.source
        super().__init__(
            interactions,
            ratings.candidate_features,
            np.arange(num_train),
            np.arange(num_train, len(query_rows)),
        )
