"""Exact top-k evaluation over the whole candidate set, and the classic baselines.

``FactorizedTopK`` re-embeds every candidate for every test batch and runs a
streaming top-k. Here the candidates are embedded once, and for each test
example we count the candidates that score strictly higher than the true one:
the example is a hit at k when fewer than k do (``tf.math.in_top_k``'s rule:
ties count in the positive's favour).

One deliberate difference: FactorizedTopK computes the positive's score as
``sum(q * c)`` but the candidates' scores with a matmul, and the two round
differently, so the true candidate often "beats itself" by one ulp and drops a
rank. We take the positive's score from the same matmul row, which makes the
count exact. The two agree closely at large k and differ mostly at top-1.

A score that is NaN or infinite never counts as a hit: a diverged model ranks
last, not first.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from towerkit.baselines import fit_baseline
from towerkit.embedding import embed, embed_candidates, progress_bar
from towerkit.errors import ConfigError, DataError

DEFAULT_KS = (1, 5, 10, 50, 100)
# Scores for rows [start, stop) of the test split: ``[stop - start, num_candidates]``.
ScoreRows = Callable[[int, int], Any]


@dataclass(frozen=True)
class TopK:
    """Exact top-k accuracy of one system on one split.

    Attributes:
        all: ``{"top_10": 0.05, ...}`` over all candidates.
        excluding_train: The same with each query's training items left out of
            its ranking, or None when that protocol was not run.

    Example:
        >>> result = towerkit.evaluate_topk(model, data, ks=[10], exclude_train=True)
        >>> result.all["top_10"], result.excluding_train["top_10"]
    """

    all: dict[str, float]
    excluding_train: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {"all": dict(self.all)}
        if self.excluding_train is not None:
            value["excluding_train"] = dict(self.excluding_train)
        return value

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "TopK":
        """Reads what :meth:`to_json` wrote; raises DataError for anything else."""
        try:
            excluding = value.get("excluding_train")
            return cls({k: float(v) for k, v in value["all"].items()},
                       None if excluding is None else {k: float(v) for k, v in excluding.items()})
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"a top-k result must be {{'all': {{'top_K': float}}, ...}}, got {value!r}.") from exc

    def format(self, excluding_train: bool = False) -> str:
        """One line such as ``top-1 0.0019  top-10 0.0248``."""
        values = self.excluding_train if excluding_train else self.all
        return "  ".join(f"{key.replace('_', '-')} {value:.4f}" for key, value in (values or {}).items())


def _hits(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    return {f"top_{k}": float(np.mean(ranks < k)) if len(ranks) else 0.0 for k in ks}


def count_ranks(score_rows: ScoreRows, positive_rows: np.ndarray, exclude: np.ndarray | None = None,
                positive_scores: Any = None, chunk: int = 4096) -> np.ndarray:
    """For each test example, how many candidates score strictly above its positive.

    Args:
        score_rows: Gives the ``[chunk, num_candidates]`` scores of test rows ``[start, stop)``.
        positive_rows: Each example's candidate row, or -1 where the positive is not a candidate.
        exclude: ``[examples, num_candidates]`` candidates to leave out of each ranking.
        positive_scores: Scores for positives that are not candidates (row -1); -inf if None.
        chunk: Examples scored at once.

    Returns:
        Ranks; an example whose positive score is not finite gets the worst rank.
    """
    total = len(positive_rows)
    ranks = []
    bar = progress_bar(-(-total // chunk), f"  ranking {total:,} test examples")
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        scores = tf.convert_to_tensor(score_rows(start, stop))
        rows = positive_rows[start:stop]
        fallback = -np.inf if positive_scores is None else positive_scores[start:stop]
        positives = tf.where(rows >= 0, tf.gather(scores, np.maximum(rows, 0), axis=1, batch_dims=1),
                             tf.cast(fallback, scores.dtype))
        # NaN never compares greater, so it is counted as "above" explicitly.
        above = tf.logical_or(scores > positives[:, None], tf.math.is_nan(scores))
        if exclude is not None:
            above = tf.logical_and(above, tf.logical_not(exclude[start:stop]))
        counts = tf.reduce_sum(tf.cast(above, tf.int32), axis=1).numpy()
        counts[~np.isfinite(positives.numpy())] = scores.shape[1]
        ranks.append(counts)
        if bar is not None:
            bar.update(start // chunk + 1)
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int32)


def candidate_rows(data: Any, ids: np.ndarray) -> np.ndarray:
    """Each id's first row in the candidate set, or -1."""
    first_row: dict[str, int] = {}
    for row, cid in enumerate(data.candidate_ids.tolist()):
        first_row.setdefault(cid, row)
    return np.array([first_row.get(cid, -1) for cid in ids.tolist()], dtype=np.int64)


def _seen_matrix(data: Any) -> tuple[np.ndarray, dict[str, int]]:
    """A ``[num_queries, num_candidates]`` bool matrix of training interactions (and given histories)."""
    users, user_index = np.unique(data.interactions[data.query_id_key], return_inverse=True)
    if len(users) * len(data.candidate_ids) > 500_000_000:
        raise ConfigError(
            "excluding training items needs a queries x candidates matrix, which is too large "
            f"here ({len(users)} x {len(data.candidate_ids)}); set evaluate.exclude_train = false."
        )
    # An id may name several candidate rows (MovieLens has repeated titles): all count as seen.
    rows_of_id: dict[str, list[int]] = {}
    for row, cid in enumerate(data.candidate_ids.tolist()):
        rows_of_id.setdefault(str(cid), []).append(row)
    seen = np.zeros((len(users), len(data.candidate_ids)), dtype=bool)
    # A held-out cold-start query's given history (``history_rows``) is what it has seen.
    known_rows = np.concatenate([data.train_rows, getattr(data, "history_rows", np.zeros(0, dtype=np.int64))])
    train_candidates = data.column(data.candidate_id_key, known_rows)
    for user, cid in zip(user_index[known_rows], train_candidates.tolist()):
        seen[user, rows_of_id.get(str(cid), [])] = True
    return seen, {str(u): i for i, u in enumerate(users)}


SPLITS = ("test", "validation")


def split_rows(data: Any, split: str = "test") -> np.ndarray:
    """The interaction rows of ``"test"`` or ``"validation"`` (carved from train; empty if none)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    if split == "test":
        return data.test_rows
    rows = getattr(data, "validation_rows", None)
    if rows is None or not len(rows):
        raise ConfigError(f"dataset '{data.name}' has no validation rows; set its validation_fraction above 0.")
    return rows


def ranking_masks(data: Any, exclude_train: bool, split: str = "test") -> tuple[np.ndarray | None, np.ndarray | None]:
    """Candidates to leave out of each test example's ranking: (always, when excluding training items)."""
    always = None
    rows_of_split = split_rows(data, split)
    if getattr(data, "exclude_query_from_candidates", False):
        query_rows = candidate_rows(data, data.column(data.query_id_key, rows_of_split))
        always = np.zeros((len(query_rows), len(data.candidate_ids)), dtype=bool)
        valid = query_rows >= 0
        always[np.flatnonzero(valid), query_rows[valid]] = True
    if not exclude_train:
        return always, None
    seen, query_index = _seen_matrix(data)
    excluding = seen[[query_index[str(q)] for q in data.column(data.query_id_key, rows_of_split)]]
    return always, excluding if always is None else (excluding | always)


def topk_from_scores(data: Any, score_rows: ScoreRows, ks: Sequence[int], exclude_train: bool,
                     positive_scores: Any = None, split: str = "test") -> TopK:
    """Exact top-k on the test (or validation) split of any scorer, under both protocols."""
    rows = candidate_rows(data, data.column(data.candidate_id_key, split_rows(data, split)))
    always, excluding = ranking_masks(data, exclude_train, split)
    # About 64M scores per chunk: 4,096 examples at MovieLens size, fewer over a large catalogue (a
    # scorer may hand back float64, and the comparisons add as much again).
    chunk = int(max(64, min(4096, 2**26 // max(1, len(data.candidate_ids)))))
    results = _hits(count_ranks(score_rows, rows, always, positive_scores, chunk), ks)
    if not exclude_train:
        return TopK(results)
    return TopK(results, _hits(count_ranks(score_rows, rows, excluding, positive_scores, chunk), ks))


def evaluate_topk(model: Any, data: Any, ks: Sequence[int] = DEFAULT_KS, exclude_train: bool = False,
                  batch_size: int = 8192, split: str = "test") -> TopK:
    """Exact top-k accuracy of a two-tower model on the test split, over all candidates.

    Args:
        model: An assembled model with ``query_tower`` and ``candidate_tower``.
        data: The dataset it was trained on.
        ks: The k values to report.
        exclude_train: Also report accuracy with each query's training items
            removed from its ranking.
        batch_size: Examples embedded per batch.
        split: ``"test"``, or ``"validation"`` (for choices such as epochs; never tune on test).

    Example:
        >>> towerkit.evaluate_topk(model, data, ks=[10, 100], exclude_train=True).all["top_100"]
    """
    rows = split_rows(data, split)
    data.check_features([*model.query_tower.feature_keys, *model.candidate_tower.feature_keys], "the model")
    queries = embed(model.query_tower, {k: data.column(k, rows) for k in model.query_tower.feature_keys},
                    batch_size)
    positives = embed(model.candidate_tower, {k: data.column(k, rows) for k in model.candidate_tower.feature_keys},
                      batch_size)
    candidates = embed_candidates(model.candidate_tower, data, batch_size)
    # Used only where a test positive is not in the candidate set.
    positive_scores = tf.reduce_sum(queries * positives, axis=1)

    def score_rows(start: int, stop: int) -> tf.Tensor:
        return tf.linalg.matmul(queries[start:stop], candidates, transpose_b=True)

    return topk_from_scores(data, score_rows, ks, exclude_train, positive_scores, split)


def train_counts(data: Any) -> np.ndarray:
    """How often each candidate occurs in the training interactions, in candidate order."""
    unique, counts = np.unique(data.column(data.candidate_id_key, data.train_rows), return_counts=True)
    count_of = dict(zip(unique.tolist(), counts.tolist()))
    return np.array([count_of.get(c, 0) for c in data.candidate_ids.tolist()], dtype=np.float64)


def popularity_topk(data: Any, ks: Sequence[int] = DEFAULT_KS, exclude_train: bool = False) -> TopK:
    """Top-k accuracy of recommending the most-interacted candidates in training."""
    counts = train_counts(data)
    return topk_from_scores(data, lambda start, stop: np.tile(counts, (stop - start, 1)), ks, exclude_train)


def cooccurrence_topk(data: Any, ks: Sequence[int] = DEFAULT_KS, exclude_train: bool = False) -> TopK:
    """Top-k accuracy of recommending the candidates most often paired with the query in training.

    For item-to-item data: a candidate's score is how many training pairs join
    it to the query item, with popularity (scaled below 1) breaking ties.
    """
    num = len(data.candidate_ids)
    query_rows = candidate_rows(data, data.column(data.query_id_key, data.train_rows))
    paired_rows = candidate_rows(data, data.column(data.candidate_id_key, data.train_rows))
    valid = (query_rows >= 0) & (paired_rows >= 0)
    pairs = np.zeros((num, num), dtype=np.float64)
    np.add.at(pairs, (query_rows[valid], paired_rows[valid]), 1.0)
    counts = train_counts(data)
    tie_break = counts / (counts.max() + 1.0)
    test_queries = candidate_rows(data, data.column(data.query_id_key, data.test_rows))

    def score_rows(start: int, stop: int) -> np.ndarray:
        rows = test_queries[start:stop]
        scores = pairs[np.maximum(rows, 0)] + tie_break
        scores[rows < 0] = tie_break
        return scores

    return topk_from_scores(data, score_rows, ks, exclude_train)


BASELINES = {"popularity": popularity_topk, "cooccurrence": cooccurrence_topk}


def evaluate_all(model: Any, data: Any, ks: Sequence[int], exclude_train: bool, batch_size: int,
                 baselines: Sequence[Any] | None = None, split: str = "test") -> dict[str, TopK]:
    """The model and each baseline, by name (``"model"`` first).

    Baselines come from the ``baselines`` registry (see towerkit.baselines): names
    or ``{"name": ..., **options}``; None or empty runs the dataset's own (``data.baselines``).
    """
    results = {"model": evaluate_topk(model, data, ks, exclude_train, batch_size, split)}
    queries = data.column(data.query_id_key, split_rows(data, split))
    for spec in baselines or getattr(data, "baselines", ("popularity",)):
        label, scorer = fit_baseline(spec, data)
        results[label] = topk_from_scores(data, lambda start, stop: scorer(queries[start:stop]), ks, exclude_train,
                                          split=split)
    return results


def sample_test_queries(data: Any, max_queries: int, seed: int = 42) -> Any:
    """The dataset with its test split cut to ``max_queries`` test queries (all their test rows).

    For evaluation at size (``evaluate.max_queries``): the queries are drawn
    uniformly without replacement, seeded, and ``evaluation_sample`` records
    how many of how many were kept. Training, validation and the baselines'
    training data are unchanged. A streamed dataset reads the sample itself
    (its ``sample_test_queries`` method); any other is viewed, not copied.

    Args:
        data: A loaded dataset.
        max_queries: The most test queries to keep (positive).
        seed: Seeds the draw.
    """
    if isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 1:
        raise ConfigError(f"evaluate.max_queries must be a positive integer, got {max_queries!r}; "
                          "leave it out to evaluate every test query.")
    if callable(getattr(data, "sample_test_queries", None)) and not getattr(data, "sample_read", False):
        return data.sample_test_queries(max_queries, seed)
    queries = data.column(data.query_id_key, data.test_rows)
    distinct = np.unique(queries)
    chosen = distinct
    if max_queries < len(distinct):
        chosen = np.random.default_rng(seed).choice(distinct, size=max_queries, replace=False)
    view = copy.copy(data)
    view.test_rows = data.test_rows[np.isin(queries, chosen)]
    view.evaluation_sample = {"queries": int(len(chosen)), "test_queries": int(len(distinct)),
                              "max_queries": int(max_queries)}
    return view
