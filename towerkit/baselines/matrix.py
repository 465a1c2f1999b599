"""The training interactions as a query x item matrix, shared by the baselines."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

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
        given: ``[num_given_queries, num_items]`` CSR of the histories given to queries held
            out of training (the dataset's ``history_rows``; no rows when it has none).
        given_index: Held-out query id -> ``given`` row.
    """

    matrix: sp.csr_matrix
    query_index: dict[str, int]
    item_of_candidate: np.ndarray
    counts: np.ndarray
    given: sp.csr_matrix
    given_index: dict[str, int]

    def query_rows(self, query_ids: np.ndarray) -> np.ndarray:
        """Each id's matrix row, or -1 for a query with no training interactions."""
        return np.array([self.query_index.get(str(q), -1) for q in query_ids.tolist()], dtype=np.int64)

    def given_rows(self, query_ids: np.ndarray) -> np.ndarray:
        """Each id's ``given`` row, or -1 for a query with no given history."""
        return np.array([self.given_index.get(str(q), -1) for q in query_ids.tolist()], dtype=np.int64)

    def query_items(self, query_ids: np.ndarray) -> sp.csr_matrix:
        """``[len(ids), num_items]``: each query's training items, or its given history if it has no training rows.

        A query with neither gets an empty row.
        """
        trained, given = self.query_rows(query_ids), self.given_rows(query_ids)
        pick = np.where(trained >= 0, trained,
                        np.where(given >= 0, self.matrix.shape[0] + given, self._every_row.shape[0] - 1))
        return self._every_row[pick]

    @cached_property
    def _every_row(self) -> sp.csr_matrix:
        """The training rows, then the given rows, then one empty row."""
        return sp.vstack([self.matrix, self.given, sp.csr_matrix((1, self.matrix.shape[1]))]).tocsr()

    def to_candidates(self, item_scores: np.ndarray) -> np.ndarray:
        """Item-column scores -> candidate-row scores."""
        return item_scores[:, self.item_of_candidate]

    def popularity_tie_break(self, scale: float = 1e-6) -> np.ndarray:
        """Popularity in ``[0, scale)``: breaks ties (e.g. a query with no history) without reordering real scores."""
        return scale * self.counts / (self.counts.max() + 1.0)


def _binary_matrix(data: object, rows: np.ndarray, item_ids: np.ndarray) -> tuple[sp.csr_matrix, dict[str, int]]:
    """The queries of ``rows`` x ``item_ids``, counting each interaction (items outside ``item_ids`` dropped)."""
    queries = data.column(data.query_id_key, rows).astype(str)
    candidates = data.column(data.candidate_id_key, rows).astype(str)
    items = np.minimum(np.searchsorted(item_ids, candidates), len(item_ids) - 1)
    known = item_ids[items] == candidates
    query_ids, query_rows = np.unique(queries, return_inverse=True)
    matrix = sp.csr_matrix((np.ones(int(known.sum())), (query_rows[known], items[known])),
                           shape=(len(query_ids), len(item_ids)))
    return matrix, {q: i for i, q in enumerate(query_ids.tolist())}


def train_matrix(data: object, rows: np.ndarray | None = None) -> TrainMatrix:
    """Builds the matrix from ``data.train_rows`` (or the given rows) only.

    Items are the distinct candidate ids; training candidates outside the
    candidate set are dropped, since they can never be recommended. The
    dataset's ``history_rows`` (if any: a cold-start split's given histories)
    go into ``given`` only, never into the matrix a baseline fits on.
    """
    rows = data.train_rows if rows is None else rows
    item_ids, item_of_candidate = np.unique(data.candidate_ids.astype(str), return_inverse=True)
    matrix, query_index = _binary_matrix(data, rows, item_ids)
    counts = np.asarray(matrix.sum(axis=0)).ravel()  # before binarising: every interaction counts
    matrix.data[:] = 1.0
    given, given_index = _binary_matrix(data, getattr(data, "history_rows", np.zeros(0, dtype=np.int64)), item_ids)
    given.data[:] = 1.0
    return TrainMatrix(matrix, query_index, item_of_candidate, counts, given, given_index)
