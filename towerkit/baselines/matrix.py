"""The training interactions as a query x item matrix, shared by the baselines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class TrainMatrix:
    """Binary training interactions of queries with items, and the maps in and out of it.

    Attributes:
        matrix: ``[num_queries, num_items]`` CSR, 1.0 where a query met an item in training.
        query_index: Query id -> matrix row.
        item_of_candidate: For each candidate row, its item column (repeated ids share one).
        counts: Training interactions per item column.
    """

    matrix: sp.csr_matrix
    query_index: dict[str, int]
    item_of_candidate: np.ndarray
    counts: np.ndarray

    def query_rows(self, query_ids: np.ndarray) -> np.ndarray:
        """Each id's matrix row, or -1 for a query with no training interactions."""
        return np.array([self.query_index.get(str(q), -1) for q in query_ids.tolist()], dtype=np.int64)

    def to_candidates(self, item_scores: np.ndarray) -> np.ndarray:
        """Item-column scores -> candidate-row scores."""
        return item_scores[:, self.item_of_candidate]

    def popularity_tie_break(self, scale: float = 1e-6) -> np.ndarray:
        """Popularity in ``[0, scale)``: breaks ties (e.g. a query with no history) without reordering real scores."""
        return scale * self.counts / (self.counts.max() + 1.0)


def train_matrix(data: object, rows: np.ndarray | None = None) -> TrainMatrix:
    """Builds the matrix from ``data.train_rows`` (or the given rows) only.

    Items are the distinct candidate ids; training candidates outside the
    candidate set are dropped, since they can never be recommended.
    """
    rows = data.train_rows if rows is None else rows
    item_ids, item_of_candidate = np.unique(data.candidate_ids.astype(str), return_inverse=True)
    queries = data.interactions[data.query_id_key][rows].astype(str)
    items = np.searchsorted(item_ids, data.interactions[data.candidate_id_key][rows].astype(str))
    items = np.minimum(items, len(item_ids) - 1)
    known = item_ids[items] == data.interactions[data.candidate_id_key][rows].astype(str)
    query_ids, query_rows = np.unique(queries, return_inverse=True)
    matrix = sp.csr_matrix((np.ones(int(known.sum())), (query_rows[known], items[known])),
                           shape=(len(query_ids), len(item_ids)))
    counts = np.asarray(matrix.sum(axis=0)).ravel()  # before binarising: every interaction counts
    matrix.data[:] = 1.0
    return TrainMatrix(matrix, {q: i for i, q in enumerate(query_ids.tolist())}, item_of_candidate, counts)
