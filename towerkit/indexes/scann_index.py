"""Approximate top-k with ScaNN, through TFRS's ScaNN layer."""

from __future__ import annotations

import math
import uuid
from typing import Any

import tensorflow as tf
import tensorflow_recommenders as tfrs

from towerkit.errors import ConfigError
from towerkit.indexes.base import ValidatedIndex, check_k
from towerkit.towers.base import check_positive_int

# Below this many candidates ScaNN's own guidance is to score them all exactly.
BRUTE_FORCE_BELOW = 20_000


def default_parameters(num_candidates: int) -> dict[str, Any]:
    """Rules of thumb for a candidate count: about sqrt(N) leaves, 5% searched, 500 rescored.

    500 exact rescorings (not ScaNN's usual 100) keep recall@10 above 0.99 on
    candidates with many near-duplicates, such as the efficient-serving tutorial's
    scaled copies, for about 0.03 ms more per query (benchmarks/index_bench.py).
    """
    if num_candidates < BRUTE_FORCE_BELOW:
        return {"brute_force": True}
    num_leaves = int(math.sqrt(num_candidates))
    return {
        "brute_force": False,
        "num_leaves": num_leaves,
        "num_leaves_to_search": max(1, num_leaves // 20),
        "num_reordering_candidates": 500,
        "dimensions_per_block": 2,
    }


class ScannIndex(ValidatedIndex, tfrs.layers.factorized_top_k.ScaNN):
    """ScaNN index whose unset parameters follow ScaNN's guidance for the candidate count.

    Args:
        query_model: Maps raw query features to embeddings; None to query with embeddings.
        k: Default number of results.
        num_leaves: Partitions of the tree; default about sqrt(N).
        num_leaves_to_search: Partitions searched per query; default num_leaves / 20.
        num_reordering_candidates: Candidates rescored exactly at the end; default 500.
        dimensions_per_block: Asymmetric-hashing block size; default 2.
        brute_force: Score every candidate (exactly, in ScaNN); default below 20k candidates.
        name: Layer name.

    Example:
        >>> index = towerkit.create_index("scann", query_model=model.query_tower, num_leaves=1000)
    """

    backend = "scann"

    def __init__(
        self,
        query_model: Any = None,
        k: int = 10,
        num_leaves: int | None = None,
        num_leaves_to_search: int | None = None,
        num_reordering_candidates: int | None = None,
        dimensions_per_block: int | None = None,
        brute_force: bool | None = None,
        name: str | None = None,
    ):
        check_k(k, None, "scann")
        super().__init__(query_model=query_model, k=k, name=name)
        self._requested = {
            "num_leaves": num_leaves,
            "num_leaves_to_search": num_leaves_to_search,
            "num_reordering_candidates": num_reordering_candidates,
            "dimensions_per_block": dimensions_per_block,
        }
        for key, value in self._requested.items():
            if value is not None:
                check_positive_int(value, key)
        if num_leaves and num_leaves_to_search and num_leaves_to_search > num_leaves:
            raise ConfigError(
                f"num_leaves_to_search ({num_leaves_to_search}) cannot exceed num_leaves ({num_leaves})."
            )
        self._brute_force = brute_force
        self._chosen: dict[str, Any] = {}

    def _choose(self, num_candidates: int) -> dict[str, Any]:
        chosen = default_parameters(num_candidates)
        if self._brute_force is not None:
            chosen["brute_force"] = self._brute_force
        if not chosen["brute_force"]:
            fallback = default_parameters(max(num_candidates, BRUTE_FORCE_BELOW))
            for key, value in self._requested.items():
                chosen[key] = value if value is not None else fallback[key]
            chosen["num_leaves"] = min(chosen["num_leaves"], num_candidates)
            chosen["num_leaves_to_search"] = min(chosen["num_leaves_to_search"], chosen["num_leaves"])
        return chosen

    def _make_searcher(self, candidates):
        from scann.scann_ops.py import scann_ops

        chosen = self._chosen
        builder = scann_ops.builder(db=candidates, num_neighbors=self._k, distance_measure="dot_product")
        if chosen["brute_force"]:
            builder = builder.score_brute_force()
        else:
            builder = builder.tree(
                num_leaves=chosen["num_leaves"],
                num_leaves_to_search=chosen["num_leaves_to_search"],
                training_iterations=self._training_iterations,
            ).score_ah(chosen["dimensions_per_block"], anisotropic_quantization_threshold=0.2)
            if chosen["num_reordering_candidates"]:
                builder = builder.reorder(chosen["num_reordering_candidates"])
        return builder.build(shared_name=f"{self.name}/{uuid.uuid4()}")

    def _prepare(self) -> None:
        self._chosen = self._choose(self.num_candidates)
        self._build_searcher = self._make_searcher

    def _is_empty(self) -> bool:
        return self._serialized_searcher is None

    def _search(self, queries, k):
        from scann.scann_ops.py import scann_ops

        searcher = scann_ops.searcher_from_module(self._serialized_searcher)
        if queries.shape.rank == 1:
            result = searcher.search(queries, final_num_neighbors=k)
            indices, distances = result.index, result.distance
        else:
            result = searcher.search_batched_parallel(queries, final_num_neighbors=k)
            indices, distances = result.indices, result.distances
        if self._identifiers is None:
            return distances, indices
        return distances, tf.gather(self._identifiers, indices)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), **self._chosen}
