"""Popularity and co-occurrence: the baselines every dataset can run."""

from __future__ import annotations

import numpy as np

from towerkit.baselines.matrix import train_matrix


class Popularity:
    """Recommends the candidates met most often in training, to every query alike."""

    def fit(self, data: object):
        """Counts training interactions per candidate; returns the scorer."""
        trained = train_matrix(data)
        scores = trained.counts[trained.item_of_candidate].astype(np.float64)

        def scorer(query_ids: np.ndarray) -> np.ndarray:
            return np.tile(scores, (len(query_ids), 1))

        return scorer


class Cooccurrence:
    """For item-to-item data: the candidates most often paired with the query item in training.

    A candidate's score is how many training pairs join it to the query item,
    with popularity (scaled below 1) breaking ties; a query item never seen in
    training gets popularity alone.
    """

    def fit(self, data: object):
        """Counts (query item, candidate) training pairs; returns the scorer."""
        item_ids, item_of_candidate = np.unique(data.candidate_ids.astype(str), return_inverse=True)
        column = {item: i for i, item in enumerate(item_ids.tolist())}
        rows = data.train_rows
        queries = [column.get(str(q), -1) for q in data.column(data.query_id_key, rows).tolist()]
        paired = [column.get(str(c), -1) for c in data.column(data.candidate_id_key, rows).tolist()]
        queries, paired = np.array(queries, dtype=np.int64), np.array(paired, dtype=np.int64)
        valid = (queries >= 0) & (paired >= 0)
        pairs = np.zeros((len(item_ids), len(item_ids)), dtype=np.float64)
        np.add.at(pairs, (queries[valid], paired[valid]), 1.0)
        counts = np.bincount(paired[paired >= 0], minlength=len(item_ids)).astype(np.float64)
        tie_break = counts / (counts.max() + 1.0)

        def scorer(query_ids: np.ndarray) -> np.ndarray:
            rows = np.array([column.get(str(q), -1) for q in query_ids.tolist()], dtype=np.int64)
            scores = pairs[np.maximum(rows, 0)] + tie_break
            scores[rows < 0] = tie_break
            return scores[:, item_of_candidate]

        return scorer
