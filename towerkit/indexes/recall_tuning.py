"""Choosing ScaNN's search effort for a recall target, measured against exact search.

Recall@k is measured on a sample of real queries. The search effort has two knobs: how many
tree leaves a query searches (each leaf's candidates are scored approximately) and how many of
the best approximate candidates are rescored exactly. For each rescoring size, the fewest leaves
(any count, not a grid) reaching the target are found by galloping and bisection (recall grows
with leaves). Those settings are then timed, single queries in interleaved rounds, and the
fastest wins: which knob is cheaper depends on the data, the quantisation and the CPU, so it is
measured rather than modelled.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import tensorflow as tf

from towerkit.errors import ConfigError

# Exact rescoring sizes tried (each at least k); for each, every leaf count can be chosen.
# The large sizes matter where quantisation ranks a query's true neighbours far down (1.68M
# tutorial-style candidates missed recall 0.99 at 3,000 even searching every leaf); rescoring
# 10,000 vectors still costs well under a twentieth of an exact search over a million.
REORDER_GRID = (20, 50, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000)
# Standard errors below the sample's recall that must still reach the target (about 97.5% one-sided).
CONFIDENCE_Z = 2.0
# When no setting's bound reaches the target, settings whose bound is within this of the most
# thorough search's are as good as the sample can tell apart; the cheapest of them is kept.
PLATEAU_TOLERANCE = 0.002
# Rounds of single-query timings per candidate setting, interleaved.
LATENCY_ROUNDS = 5
# An approximate (asymmetric-hashing) score costs about this share of an exact rescoring, which
# reads a full-width vector from a random place in memory.
APPROXIMATE_COST = 0.125
EXACT_CHUNK = 32_768  # candidates per exact-search matmul, to bound memory


def sample_queries(queries: Any, query_model: Any, size: int, seed: int = 0) -> np.ndarray:
    """Up to ``size`` query embeddings, drawn at random: from raw features (through the query
    model) or from ``[n, dim]`` embeddings."""
    rng = np.random.default_rng(seed)
    if isinstance(queries, Mapping):
        if query_model is None:
            raise ConfigError("raw tuning queries need the index's query_model; pass query embeddings instead.")
        from towerkit.embedding import embed

        count = len(next(iter(queries.values())))
        rows = np.sort(rng.choice(count, size=min(size, count), replace=False))
        return embed(query_model, {key: np.asarray(values)[rows] for key, values in queries.items()}).numpy()
    embeddings = np.asarray(queries, dtype=np.float32)
    if embeddings.ndim != 2 or not len(embeddings):
        raise ConfigError(f"tuning queries must be a dict of query features or a non-empty [n, dim] matrix of "
                          f"embeddings, got shape {embeddings.shape}.")
    rows = np.sort(rng.choice(len(embeddings), size=min(size, len(embeddings)), replace=False))
    return embeddings[rows]


def exact_top_k(queries: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Indices of each query's exact top k by dot product, computed over chunks of candidates."""
    query_tensor = tf.constant(queries, tf.float32)
    best_scores, best_ids = None, None
    for start in range(0, len(candidates), EXACT_CHUNK):
        chunk = tf.constant(candidates[start:start + EXACT_CHUNK], tf.float32)
        scores, ids = tf.math.top_k(tf.matmul(query_tensor, chunk, transpose_b=True), k=min(k, len(chunk)))
        ids = ids + start
        if best_scores is not None:
            scores, ids = tf.concat([best_scores, scores], 1), tf.concat([best_ids, ids], 1)
            scores, positions = tf.math.top_k(scores, k=min(k, scores.shape[1]))
            ids = tf.gather(ids, positions, batch_dims=1)
        best_scores, best_ids = scores, ids
    return best_ids.numpy()


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top k that the approximate search found."""
    k = exact.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(e.tolist())) / k for f, e in zip(found, exact)]))


def search_cost(leaves: int, reorder: int, num_leaves: int, num_candidates: int) -> float:
    """Modelled work of one query, in exact rescorings: leaf centroids, approximate scores, rescoring.

    Used to rank settings only when no latency measurement is available."""
    approximate = leaves / num_leaves * num_candidates
    return (num_leaves + approximate) * APPROXIMATE_COST + reorder


def recall_lower_bound(found: np.ndarray, exact: np.ndarray, z: float = CONFIDENCE_Z) -> float:
    """A lower confidence bound on recall@k for queries like these: Wilson's score bound on the
    mean per-query recall, with the largest variance a [0, 1] value of that mean can have.

    The query is the unit: a query's k results are missed or found together (its neighbours lie
    in the same leaves), so the k hits of one query are not k independent samples. Near a
    recall of 1 a few badly served queries carry the whole shortfall; Wilson's bound stays
    honest there, where a normal approximation would claim certainty. A bound from the sample's
    own variance (Kish's design effect) was tried and is not safe: on the tutorial's 1.68M
    candidates a tuning half whose users happened to have no whole-query failures certified
    0.996 at 22 leaves, and the other half of the users got 0.983.
    """
    mean, count = recall_at_k(found, exact), len(exact)
    centre = mean + z * z / (2 * count)
    spread = z * (mean * (1 - mean) / count + z * z / (4 * count * count)) ** 0.5
    return float((centre - spread) / (1 + z * z / count))


def fewest_leaves(reaches: Callable[[int], bool], low: int, num_leaves: int) -> int | None:
    """The fewest leaves in ``[low, num_leaves]`` for which ``reaches`` holds (it grows with leaves), or None.

    Gallops up from ``low`` (1, 2, 4, ... times it) and then bisects, so that only the last step
    searches many leaves: a search's cost grows with its leaves.
    """
    if reaches(low):
        return low
    below, step = low, 1
    while True:  # invariant: reaches(below) is False
        above = min(num_leaves, low + step)
        if reaches(above):
            break
        if above == num_leaves:
            return None
        below, step = above, step * 2
    while above - below > 1:
        middle = (below + above) // 2
        if reaches(middle):
            above = middle
        else:
            below = middle
    return above


def reaching_settings(recall: Callable[[int, int], float], target: float, num_leaves: int,
                      reorder_options: list[int]) -> list[tuple[int, int]]:
    """Per rescoring size, the fewest leaves reaching ``target``: the (leaves, reorder) pairs worth timing.

    Rescoring sizes are tried from the largest down; a smaller one never needs fewer leaves, so
    each search starts where the previous one ended. Pairs that another beats on both knobs are dropped.
    """
    pairs: list[tuple[int, int]] = []
    low = 1
    for reorder in sorted(reorder_options, reverse=True):
        leaves = fewest_leaves(lambda leaves: recall(leaves, reorder) >= target, low, num_leaves)
        if leaves is None:
            break  # fewer rescored candidates cannot reach it either
        if pairs and pairs[-1][0] == leaves:
            pairs[-1] = (leaves, reorder)  # as few leaves with fewer rescorings: the larger one is beaten
        else:
            pairs.append((leaves, reorder))
        low = leaves
    return pairs


def choose_search(found: Callable[[int, int], np.ndarray], exact: np.ndarray, target: float, num_leaves: int,
                  num_candidates: int, k: int, latency: Callable[[int, int], float] | None = None
                  ) -> dict[str, Any]:
    """The fastest (leaves searched, candidates rescored) whose recall@k reaches ``target``.

    A setting reaches the target when the lower confidence bound of its recall on these queries
    (:func:`recall_lower_bound`) does, so that queries outside the sample reach it too.

    Args:
        found: Runs the approximate search with (leaves, reorder) and returns ``[queries, k]`` indices.
        exact: The exact top-k indices of the same queries.
        latency: Times a single-query search with (leaves, reorder), in seconds. The settings that
            reach the target (the fewest leaves for each rescoring size) are timed in interleaved
            rounds and the fastest by median wins; without it, the least modelled cost
            (:func:`search_cost`) wins.

    Returns:
        ``num_leaves_to_search``, ``num_reordering_candidates``, ``reached_recall`` (the sample's
        mean), ``recall_lower_bound`` and ``target_reached``. When even the most thorough search's bound
        falls short, ``target_reached`` is False and the fastest setting whose bound is within
        ``PLATEAU_TOLERANCE`` of that search's is chosen.
    """
    reorder_options = sorted({min(max(k, r), max(k, num_candidates)) for r in REORDER_GRID})
    measured: dict[tuple[int, int], tuple[float, float]] = {}

    def measure(leaves: int, reorder: int) -> tuple[float, float]:
        if (leaves, reorder) not in measured:
            ids = found(leaves, reorder)
            measured[leaves, reorder] = (recall_at_k(ids, exact), recall_lower_bound(ids, exact))
        return measured[leaves, reorder]

    def bound(leaves: int, reorder: int) -> float:
        return measure(leaves, reorder)[1]

    pairs = reaching_settings(bound, target, num_leaves, reorder_options)
    reached = bool(pairs)
    if not reached:
        # Unreachable on this sample: rather than search every leaf, keep the cheapest setting
        # that serves these queries as well as the most thorough search does.
        plateau = bound(num_leaves, reorder_options[-1]) - PLATEAU_TOLERANCE
        pairs = reaching_settings(bound, plateau, num_leaves, reorder_options) or [(num_leaves, reorder_options[-1])]
    if latency is None or len(pairs) == 1:
        leaves, reorder = min(pairs, key=lambda pair: search_cost(*pair, num_leaves, num_candidates))
        timed = {}
    else:
        timed = time_settings(latency, pairs)
        leaves, reorder = min(pairs, key=lambda pair: timed[pair])
    choice = {"num_leaves_to_search": leaves, "num_reordering_candidates": reorder,
              "reached_recall": round(measure(leaves, reorder)[0], 4),
              "recall_lower_bound": round(bound(leaves, reorder), 4), "target_reached": reached}
    if timed:
        choice["tuned_latency_ms"] = round(timed[leaves, reorder] * 1e3, 4)
    return choice


def fastest_choice(choices: Mapping[Any, Mapping[str, Any]], times: Mapping[Any, float]) -> Any:
    """The key of the fastest choice (as :func:`choose_search` returns them) that reaches its target.

    When none does, only the choices whose recall bound is within ``PLATEAU_TOLERANCE`` of the
    best bound compete on time: a faster search that serves the queries worse is not kept.
    """
    reached = [key for key, choice in choices.items() if choice["target_reached"]]
    if not reached:
        best = max(choice["recall_lower_bound"] for choice in choices.values())
        reached = [key for key, choice in choices.items() if choice["recall_lower_bound"] >= best - PLATEAU_TOLERANCE]
    return min(reached, key=lambda key: times[key])


def time_settings(latency: Callable[[int, int], float], pairs: list[tuple[int, int]],
                  rounds: int = LATENCY_ROUNDS) -> dict[tuple[int, int], float]:
    """Median over ``rounds`` interleaved rounds (order reversed every other round) of each pair's latency."""
    return median_times({pair: (lambda pair=pair: latency(*pair)) for pair in pairs}, rounds)


def median_times(calls: Mapping[Any, Callable[[], float]], rounds: int = LATENCY_ROUNDS) -> dict[Any, float]:
    """Median over ``rounds`` interleaved rounds (order reversed every other round) of the seconds each call returns."""
    keys = list(calls)
    times: dict[Any, list[float]] = {key: [] for key in keys}
    for round_number in range(rounds):
        for key in keys if round_number % 2 == 0 else reversed(keys):
            times[key].append(calls[key]())
    return {key: float(np.median(values)) for key, values in times.items()}
