"""Checks shared by every index backend."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from towerkit.errors import ConfigError


def check_k(k: Any, num_candidates: int | None, name: str) -> int:
    """Validates a requested k against the number of indexed candidates."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ConfigError(f"k must be a positive integer, got {k!r}; ask for e.g. k=10.")
    if num_candidates is not None and k > num_candidates:
        raise ConfigError(
            f"k={k} is more than the {num_candidates} candidates in index '{name}'; "
            f"ask for at most k={num_candidates}."
        )
    return k


def check_dims(queries: tf.Tensor, dim: int | None, name: str) -> None:
    """Raises when query embeddings are not as wide as the indexed candidates."""
    width = queries.shape[-1] if queries.shape.rank else None
    if dim is not None and width is not None and width != dim:
        raise ConfigError(
            f"queries have dimension {width} but index '{name}' holds {dim}-dimensional "
            "candidates; use the query tower trained with these candidates."
        )


def candidates_and_ids(candidates: Any, identifiers: Any) -> tuple[tf.Tensor, tf.Tensor | None]:
    candidates = tf.convert_to_tensor(candidates, dtype=tf.float32)
    if candidates.shape.rank != 2 or candidates.shape[0] == 0:
        raise ConfigError(
            f"candidates must be a non-empty [num_candidates, dim] matrix, got shape {candidates.shape}."
        )
    if identifiers is not None:
        identifiers = tf.convert_to_tensor(identifiers)
        if identifiers.shape[0] != candidates.shape[0]:
            raise ConfigError(
                f"got {candidates.shape[0]} candidate embeddings but {identifiers.shape[0]} "
                "identifiers; pass one identifier per candidate."
            )
    return candidates, identifiers


class ValidatedIndex:
    """Mixin for TFRS TopK layers: validated ``index``/``call``, exclusions, and recorded parameters.

    A backend subclasses this and a TFRS ``TopK`` layer, and implements
    ``_search`` (top ``k`` for query embeddings) and ``_is_empty``; it may
    override ``_prepare`` to choose parameters once the candidates are known.

    Attributes:
        k: The default number of results.
        num_candidates: How many candidates are indexed (None before ``index``).
        dim: Their embedding width (None before ``index``).
    """

    backend = "index"
    num_candidates: int | None = None
    dim: int | None = None

    @property
    def k(self) -> int:
        return self._k

    def _record(self, candidates: tf.Tensor) -> None:
        self.num_candidates, self.dim = int(candidates.shape[0]), int(candidates.shape[1])
        check_k(self._k, self.num_candidates, self.name)

    def _prepare(self) -> None:
        """Called after the candidates are recorded and before the TFRS layer indexes them."""

    def _is_empty(self) -> bool:
        raise NotImplementedError("an index backend must say whether it holds candidates")

    def index(self, candidates, identifiers=None):
        """Indexes ``[num_candidates, dim]`` embeddings under optional identifiers."""
        candidates, identifiers = candidates_and_ids(candidates, identifiers)
        self._record(candidates)
        self._prepare()
        return super().index(candidates, identifiers)

    def call(self, queries, k=None):
        """Top ``k`` (default: the index's k) for raw query features, or embeddings without a query model."""
        if self._is_empty():
            raise ConfigError(f"index '{self.backend}' is empty; call index() with candidates before querying.")
        k = check_k(self._k if k is None else k, self.num_candidates, self.name)
        return self._search(self._embed_queries(queries), k)

    def _embed_queries(self, queries: Any) -> tf.Tensor:
        if self.query_model is not None:
            queries = self.query_model(queries)
        queries = tf.convert_to_tensor(queries)
        check_dims(queries, self.dim, self.name)
        return queries

    def _search(self, queries: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Top ``k`` (a scalar tensor) for query embeddings: (scores, identifiers)."""
        raise NotImplementedError("an index backend must implement _search")

    def search_excluding(self, queries: Any, exclusions: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        """Graph-friendly top-k that skips ``exclusions`` ([batch, n] identifiers, any n).

        It asks the backend for k + n results and masks the excluded ones, so
        it is exact for exact backends. Where fewer than k candidates remain,
        the missing slots have score -inf and an empty identifier.
        """
        embedded = self._embed_queries(queries)
        exclusions = tf.convert_to_tensor(exclusions)
        wanted = tf.minimum(k + tf.shape(exclusions)[1], self.num_candidates)
        scores, ids = self._search(embedded, wanted)
        # ScaNN pads with NaN when it finds fewer neighbours than asked for.
        scores = tf.where(tf.math.is_nan(scores), tf.constant(float("-inf"), scores.dtype), scores)
        excluded = tf.reduce_any(tf.equal(ids[:, :, None], tf.cast(exclusions, ids.dtype)[:, None, :]), axis=2)
        scores = tf.where(excluded, tf.constant(float("-inf"), scores.dtype), scores)
        top_scores, positions = tf.math.top_k(scores, k=tf.minimum(k, tf.shape(scores)[1]))
        top_ids = tf.gather(ids, positions, batch_dims=1)
        empty = tf.zeros_like(top_ids) if top_ids.dtype != tf.string else tf.fill(tf.shape(top_ids), "")
        return top_scores, tf.where(tf.math.is_inf(top_scores), empty, top_ids)

    def query_with_exclusions(self, queries: Any, exclusions: Any, k: int | None = None):
        """Top-k that skips the given identifiers per query (e.g. items a user has seen).

        Args:
            queries: Raw query features (or embeddings without a query model).
            exclusions: ``[batch, num_excluded]`` identifiers to leave out.
            k: Results per query; defaults to the index's k.
        """
        k = check_k(self._k if k is None else k, self.num_candidates, self.name)
        return self.search_excluding(queries, exclusions, k)

    def parameters(self) -> dict[str, Any]:
        """The backend's parameters, as recorded in an export's towerkit.json."""
        return {"backend": self.backend, "k": self._k, "num_candidates": self.num_candidates, "dim": self.dim}
