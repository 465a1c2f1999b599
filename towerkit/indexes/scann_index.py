"""Approximate top-k with ScaNN, through TFRS's ScaNN layer."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from towerkit.errors import ConfigError
from towerkit.indexes.base import ValidatedIndex, check_k
from towerkit.indexes.recall_tuning import REORDER_GRID
from towerkit.towers.base import check_positive_int

# Below this many candidates ScaNN's own guidance is to score them all exactly.
BRUTE_FORCE_BELOW = 20_000
# Tuning queries timed one at a time per candidate setting and round.
LATENCY_QUERIES = 100
# Block sizes that tuning to a target recall builds and times when dimensions_per_block is not given:
# ScaNN's usual 2 (cheaper approximate scores) and 1 (finer ones, so fewer exact rescorings). Which is
# faster at the target depends on the data: at recall 0.99 on the tutorial's 1.68M scaled copies blocks of 1
# won every run, at 0.95 on 1M gaussian vectors blocks of 2 did (block_size_latency_ms in
# benchmarks/results/index_bench.txt).
TUNED_BLOCK_SIZES = (2, 1)


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


def _check_target_recall(target: Any, requested: dict[str, Any]) -> float | None:
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ConfigError(f"target_recall must be a number in (0, 1], got {target!r}; e.g. target_recall = 0.95.")
    fixed = [key for key in ("num_leaves_to_search", "num_reordering_candidates") if requested[key] is not None]
    if fixed:
        raise ConfigError(f"target_recall chooses {' and '.join(fixed)} itself; set either target_recall or "
                          f"{', '.join(fixed)}, not both.")
    return float(target)


class _SerializeOnce:
    """A just-built searcher that TFRS serializes once; the built searcher is freed before the copy is made.

    ScaNN registers a built searcher under a shared name, where it would stay for the
    process's life beside the serialized copy that every later search recreates its
    searcher from: one more copy of the index (0.15 GB for 1M x 32 candidates). It is
    destroyed as soon as its tensors are taken, before they are copied into variables.
    """

    def __init__(self, searcher: Any):
        self._searcher = searcher

    def serialize_to_module(self) -> Any:
        from scann.scann_ops.py import scann_ops

        handle = self._searcher.searcher_handle
        self._searcher = None
        tensors = scann_ops.scann_to_tensors(handle)
        tf.raw_ops.DestroyResourceOp(resource=handle, ignore_lookup_error=False)
        return scann_ops.ScannState(tensors)


class _Built:
    """A searcher already serialized (by tuning), handed to TFRS's ``index`` as its build result."""

    def __init__(self, module: Any):
        self._module = module

    def serialize_to_module(self) -> Any:
        return self._module


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
        target_recall: Recall@k to reach (e.g. 0.95); search effort is tuned to it at build time.
            For each rescoring size the fewest ``num_leaves_to_search`` whose recall against exact
            search reaches it is found, on a sample of real queries (see :meth:`tune_with`); those
            settings are timed on single queries and the fastest is kept. The reached recall, the
            choice and its measured latency go into :meth:`parameters`.
        tuning_sample: How many queries the tuning measures recall on (default 1,000).
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
        target_recall: float | None = None,
        tuning_sample: int = 1000,
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
        self._target_recall = _check_target_recall(target_recall, self._requested)
        check_positive_int(tuning_sample, "tuning_sample")
        self._tuning_sample = tuning_sample
        self._tuning_queries: Any = None
        # Search-time overrides of the built searcher, set once tuning has chosen them.
        self._search_overrides: dict[str, int] = {}

    @property
    def wants_tuning_queries(self) -> bool:
        """True when a target recall is set: the build should pass real queries to :meth:`tune_with`."""
        return self._target_recall is not None

    def tune_with(self, queries: Any) -> None:
        """Gives the queries that tuning to ``target_recall`` measures recall on; call before ``index``.

        Args:
            queries: Raw query features (a dict of columns, as the query model takes them: e.g. the
                training queries) or ``[n, dim]`` query embeddings. At most ``tuning_sample`` of
                them are used, drawn at random. Without them, a sample of the candidates stands in.
        """
        from towerkit.indexes.recall_tuning import sample_queries

        # Embedded now, as a NumPy array: Keras would wrap a dict attribute for tracking.
        self._tuning_queries = sample_queries(queries, self.query_model, self._tuning_sample)

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

    def _make_searcher(self, candidates, dimensions_per_block: int | None = None):
        from scann.scann_ops.py import scann_ops

        chosen = dict(self._chosen)
        if dimensions_per_block is not None:
            chosen["dimensions_per_block"] = dimensions_per_block
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
        return _SerializeOnce(builder.build(shared_name=f"{self.name}/{uuid.uuid4()}"))

    def _prepare(self) -> None:
        self._chosen = self._choose(self.num_candidates)
        self._search_overrides = {}
        self._build_searcher = self._make_searcher
        if self._target_recall is not None and not self._chosen["brute_force"]:
            # Built with the most generous search; tuning then narrows it at search time.
            self._chosen["num_leaves_to_search"] = self._chosen["num_leaves"]
            self._chosen["num_reordering_candidates"] = max(REORDER_GRID[-1], self._k)
            self._build_searcher = self._build_tuned

    def index(self, candidates, identifiers=None):
        """Indexes the candidates; with a target recall, the search is tuned to reach it while building."""
        result = super().index(candidates, identifiers)
        if self._target_recall is not None and self._chosen["brute_force"]:
            self._chosen.update(target_recall=self._target_recall, reached_recall=1.0)
        return result

    def _build_tuned(self, candidates) -> "_Built":
        """Builds a searcher per block size tried, tunes each to the target and returns the one to keep.

        Only the kept searcher is handed to TFRS (which stores it as the layer's variables), so
        the others are freed once tuning returns.
        """
        from towerkit.indexes.recall_tuning import exact_top_k, fastest_choice, median_times, sample_queries

        candidates = tf.convert_to_tensor(candidates, tf.float32).numpy()
        queries = self._tuning_queries
        if queries is None:  # no real queries given: a sample of the candidates stands in
            queries = sample_queries(candidates, None, self._tuning_sample)
        self._tuning_queries = None
        exact = exact_top_k(queries, candidates, self._k)
        requested = self._requested["dimensions_per_block"]
        tuned = {}
        for size in (requested,) if requested is not None else TUNED_BLOCK_SIZES:
            module = self._make_searcher(candidates, size).serialize_to_module()
            tuned[size] = (module, *self._tune_searcher(module, queries, exact))
        times, record = {size: 0.0 for size in tuned}, {}
        if len(tuned) > 1:  # each size's choice timed in the same interleaved rounds
            times = median_times({size: (lambda timer=timer, choice=choice: timer(
                choice["num_leaves_to_search"], choice["num_reordering_candidates"]))
                for size, (_, choice, timer) in tuned.items()})
            record["block_size_latency_ms"] = {str(key): round(value * 1e3, 4) for key, value in times.items()}
        size = fastest_choice({size: choice for size, (_, choice, _) in tuned.items()}, times)
        module, choice, _ = tuned[size]
        self._search_overrides = {"leaves_to_search": choice["num_leaves_to_search"],
                                  "pre_reorder_num_neighbors": choice["num_reordering_candidates"]}
        self._chosen.update(choice, dimensions_per_block=size, target_recall=self._target_recall,
                            tuning_queries=len(queries), **record)
        return _Built(module)

    def _tune_searcher(self, module: Any, queries: np.ndarray, exact: np.ndarray) -> tuple[dict[str, Any], Any]:
        """(The cheapest search reaching the target for one built searcher, its single-query timer)."""
        from scann.scann_ops.py import scann_ops

        from towerkit.indexes.recall_tuning import choose_search

        searcher = scann_ops.searcher_from_module(module)
        query_tensor = tf.constant(queries)

        def found(leaves: int, reorder: int) -> np.ndarray:
            result = searcher.search_batched_parallel(query_tensor, final_num_neighbors=self._k,
                                                      pre_reorder_num_neighbors=reorder, leaves_to_search=leaves)
            return result.indices.numpy()

        timer = self._latency_timer(searcher, queries)
        choice = choose_search(found, exact, self._target_recall, self._chosen["num_leaves"], self.num_candidates,
                               self._k, latency=timer)
        return choice, timer

    def _latency_timer(self, searcher: Any, queries: np.ndarray):
        """Times single-query searches of a setting: the median over up to LATENCY_QUERIES tuning queries."""
        singles = [tf.constant(query) for query in queries[:LATENCY_QUERIES]]

        def latency(leaves: int, reorder: int) -> float:
            times = []
            for query in singles:
                start = time.perf_counter()
                searcher.search(query, final_num_neighbors=self._k, pre_reorder_num_neighbors=reorder,
                                leaves_to_search=leaves).index.numpy()
                times.append(time.perf_counter() - start)
            return float(np.median(times))

        return latency

    def _is_empty(self) -> bool:
        return self._serialized_searcher is None

    def _search(self, queries, k):
        from scann.scann_ops.py import scann_ops

        searcher = scann_ops.searcher_from_module(self._serialized_searcher)

        def one(query):
            result = searcher.search(query, final_num_neighbors=k, **self._search_overrides)
            return result.distance, result.index

        def many():
            result = searcher.search_batched_parallel(queries, final_num_neighbors=k, **self._search_overrides)
            return result.distances, result.indices

        def first_as_batch():
            distances, indices = one(queries[0])
            return distances[None, :], indices[None, :]

        if queries.shape.rank == 1:
            distances, indices = one(queries)
        elif queries.shape[0] == 1:
            distances, indices = first_as_batch()
        elif queries.shape[0] is None:
            # A batch of one is the common serving call; ScaNN's batched op cost about 0.2 ms more for
            # it than its single-query op (a one-off sweep on the tutorial candidates), so route it there.
            distances, indices = tf.cond(tf.equal(tf.shape(queries)[0], 1), first_as_batch, many)
        else:
            distances, indices = many()
        if self._identifiers is None:
            return distances, indices
        return distances, tf.gather(self._identifiers, indices)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), **self._chosen}
