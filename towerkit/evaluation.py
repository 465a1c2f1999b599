"""Exact top-k evaluation over the whole candidate set, and a popularity baseline.

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
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from towerkit.datasets.base import to_tf_dataset
from towerkit.errors import ConfigError

DEFAULT_KS = (1, 5, 10, 50, 100)
# Set by the CLI: long embedding and ranking passes show a Keras progress bar.
_SHOW_PROGRESS = False


def show_progress(enabled: bool) -> None:
    """Turns progress bars for long embedding and evaluation passes on or off."""
    global _SHOW_PROGRESS
    _SHOW_PROGRESS = bool(enabled)


def _progress_bar(steps: int, label: str) -> Any:
    """A progress bar for more than a few steps when enabled, else None."""
    if not _SHOW_PROGRESS or steps <= 10:
        return None
    print(label, flush=True)
    return tf.keras.utils.Progbar(steps)


def embed(tower: Any, columns: Mapping[str, np.ndarray], batch_size: int = 8192) -> tf.Tensor:
    """Runs a tower over column arrays in batches and returns ``[n, dim]``."""
    dataset = to_tf_dataset(columns).batch(batch_size)
    call = tf.function(tower, reduce_retracing=True)
    rows = len(next(iter(columns.values())))
    bar = _progress_bar(-(-rows // batch_size), f"  embedding {rows:,} rows with {tower.name}")
    outputs = []
    for step, batch in enumerate(dataset, start=1):
        outputs.append(call(batch))
        if bar is not None:
            bar.update(step)
    return tf.concat(outputs, axis=0)


def _seen_matrix(data: Any) -> tuple[np.ndarray, dict[str, int]]:
    """A ``[num_queries, num_candidates]`` bool matrix of training interactions."""
    query_ids = data.interactions[data.query_id_key]
    users, user_index = np.unique(query_ids, return_inverse=True)
    if len(users) * len(data.candidate_ids) > 500_000_000:
        raise ConfigError(
            "excluding training items needs a queries x candidates matrix, which is too large "
            f"here ({len(users)} x {len(data.candidate_ids)}); evaluate without exclusion."
        )
    candidate_rows: dict[str, list[int]] = {}
    for row, cid in enumerate(data.candidate_ids):
        candidate_rows.setdefault(str(cid), []).append(row)
    seen = np.zeros((len(users), len(data.candidate_ids)), dtype=bool)
    train_candidates = data.interactions[data.candidate_id_key][data.train_rows]
    for user, cid in zip(user_index[data.train_rows], train_candidates):
        seen[user, candidate_rows.get(str(cid), [])] = True
    return seen, {str(u): i for i, u in enumerate(users)}


def _count_above(scores: tf.Tensor, positives: tf.Tensor, exclude: np.ndarray | None) -> np.ndarray:
    above = scores > positives[:, None]
    if exclude is not None:
        above = tf.logical_and(above, tf.logical_not(exclude))
    return tf.reduce_sum(tf.cast(above, tf.int32), axis=1).numpy()


def ranks_from_scores(
    query_embeddings: tf.Tensor,
    positive_scores: tf.Tensor,
    candidate_embeddings: tf.Tensor,
    exclude: np.ndarray | None = None,
    chunk: int = 4096,
    positive_rows: np.ndarray | None = None,
) -> np.ndarray:
    """For each query, how many candidates score strictly above its positive.

    Where ``positive_rows`` gives the positive's row in the candidate matrix
    (-1 where it has none), the positive's score is read from the same matmul
    as the others, so rounding cannot rank the positive below itself.
    """
    ranks = []
    total = int(query_embeddings.shape[0])
    bar = _progress_bar(-(-total // chunk), f"  ranking {total:,} test examples against {int(candidate_embeddings.shape[0]):,} candidates")
    for start in range(0, total, chunk):
        stop = start + chunk
        if bar is not None:
            bar.update(start // chunk + 1)
        scores = tf.linalg.matmul(query_embeddings[start:stop], candidate_embeddings, transpose_b=True)
        positives = positive_scores[start:stop]
        if positive_rows is not None:
            rows = positive_rows[start:stop]
            from_matmul = tf.gather(scores, np.maximum(rows, 0), axis=1, batch_dims=1)
            positives = tf.where(rows >= 0, from_matmul, positives)
        ranks.append(_count_above(scores, positives, None if exclude is None else exclude[start:stop]))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int32)


def topk_from_ranks(ranks: np.ndarray, ks: Sequence[int], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}top_{k}": float(np.mean(ranks < k)) if len(ranks) else 0.0 for k in ks}


def _candidate_rows(data: Any, ids: np.ndarray) -> np.ndarray:
    """Each id's first row in the candidate set, or -1."""
    first_row: dict[str, int] = {}
    for row, cid in enumerate(data.candidate_ids.tolist()):
        first_row.setdefault(cid, row)
    return np.array([first_row.get(cid, -1) for cid in ids.tolist()], dtype=np.int64)


def positive_candidate_rows(data: Any) -> np.ndarray:
    """Each test example's candidate row (the first with its id), or -1 if it has none."""
    return _candidate_rows(data, data.interactions[data.candidate_id_key][data.test_rows])


def _exclusion_mask(data: Any) -> np.ndarray:
    seen, query_index = _seen_matrix(data)
    test_queries = data.interactions[data.query_id_key][data.test_rows]
    return seen[[query_index[str(q)] for q in test_queries]]


def ranking_masks(data: Any, exclude_train: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Candidates to leave out of each test example's ranking: (always, when excluding training items)."""
    always = None
    if getattr(data, "exclude_query_from_candidates", False):
        query_rows = _candidate_rows(data, data.interactions[data.query_id_key][data.test_rows])
        always = np.zeros((len(query_rows), len(data.candidate_ids)), dtype=bool)
        valid = query_rows >= 0
        always[np.flatnonzero(valid), query_rows[valid]] = True
    if not exclude_train:
        return always, None
    seen = _exclusion_mask(data)
    return always, seen if always is None else (seen | always)


def evaluate_topk(
    model: Any,
    data: Any,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_train: bool = False,
    batch_size: int = 8192,
) -> dict[str, float]:
    """Exact top-k accuracy of a two-tower model on the test split, over all candidates.

    Args:
        model: An assembled model with ``query_tower`` and ``candidate_tower``.
        data: The dataset it was trained on.
        ks: The k values to report.
        exclude_train: Also report accuracy with each user's training items
            removed from the ranking (keys prefixed ``excl_``).
        batch_size: Examples embedded per batch.

    Returns:
        ``{"top_1": ..., "top_5": ..., ...}`` (plus ``excl_top_k`` entries).
    """
    query_embeddings = embed(model.query_tower, data.test_features(model.query_tower.feature_keys), batch_size)
    positives = embed(model.candidate_tower, data.test_features(model.candidate_tower.feature_keys), batch_size)
    candidates = embed(
        model.candidate_tower,
        {k: data.candidate_features[k] for k in model.candidate_tower.feature_keys},
        batch_size,
    )
    positive_scores = tf.reduce_sum(query_embeddings * positives, axis=1)
    rows = positive_candidate_rows(data)
    always, excluding = ranking_masks(data, exclude_train)
    results = topk_from_ranks(ranks_from_scores(query_embeddings, positive_scores, candidates, always, positive_rows=rows), ks)
    if exclude_train:
        ranks = ranks_from_scores(query_embeddings, positive_scores, candidates, excluding, positive_rows=rows)
        results.update(topk_from_ranks(ranks, ks, "excl_"))
    return results


def _train_counts(data: Any) -> np.ndarray:
    train_ids = data.interactions[data.candidate_id_key][data.train_rows]
    unique, counts = np.unique(train_ids, return_counts=True)
    count_of = dict(zip(unique.tolist(), counts.tolist()))
    return np.array([count_of.get(c, 0) for c in data.candidate_ids.tolist()], dtype=np.float64)


def _ranks_from_matrix(score_rows: Any, positive_rows: np.ndarray, exclude: np.ndarray | None, chunk: int = 4096) -> np.ndarray:
    """Ranks from a callable giving each chunk's ``[chunk, candidates]`` scores."""
    ranks = []
    for start in range(0, len(positive_rows), chunk):
        stop = start + chunk
        scores = tf.constant(score_rows(start, stop))
        rows = positive_rows[start:stop]
        positives = tf.where(rows >= 0, tf.gather(scores, np.maximum(rows, 0), axis=1, batch_dims=1), -np.inf)
        ranks.append(_count_above(scores, positives, None if exclude is None else exclude[start:stop]))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int32)


def _baseline_topk(data: Any, score_rows: Any, ks: Sequence[int], exclude_train: bool) -> dict[str, float]:
    rows = positive_candidate_rows(data)
    always, excluding = ranking_masks(data, exclude_train)
    results = topk_from_ranks(_ranks_from_matrix(score_rows, rows, always), ks)
    if exclude_train:
        results.update(topk_from_ranks(_ranks_from_matrix(score_rows, rows, excluding), ks, "excl_"))
    return results


def popularity_topk(data: Any, ks: Sequence[int] = DEFAULT_KS, exclude_train: bool = False) -> dict[str, float]:
    """Top-k accuracy of recommending the most-interacted candidates in training.

    Scores are training counts; the same tie rule as the model's evaluation applies.
    """
    counts = _train_counts(data)
    return _baseline_topk(data, lambda start, stop: np.tile(counts, (len(data.test_rows[start:stop]), 1)),
                          ks, exclude_train)


def cooccurrence_topk(data: Any, ks: Sequence[int] = DEFAULT_KS, exclude_train: bool = False) -> dict[str, float]:
    """Top-k accuracy of recommending the candidates most often paired with the query in training.

    For item-to-item data: a candidate's score is how many training pairs join
    it to the query item, with popularity (scaled below 1) breaking ties.
    """
    num = len(data.candidate_ids)
    query_rows = _candidate_rows(data, data.interactions[data.query_id_key][data.train_rows])
    candidate_rows = _candidate_rows(data, data.interactions[data.candidate_id_key][data.train_rows])
    valid = (query_rows >= 0) & (candidate_rows >= 0)
    pairs = np.zeros((num, num), dtype=np.float64)
    np.add.at(pairs, (query_rows[valid], candidate_rows[valid]), 1.0)
    counts = _train_counts(data)
    tie_break = counts / (counts.max() + 1.0)
    test_queries = _candidate_rows(data, data.interactions[data.query_id_key][data.test_rows])

    def score_rows(start: int, stop: int) -> np.ndarray:
        rows = test_queries[start:stop]
        scores = pairs[np.maximum(rows, 0)] + tie_break
        scores[rows < 0] = tie_break
        return scores

    return _baseline_topk(data, score_rows, ks, exclude_train)


BASELINES = {"popularity": popularity_topk, "cooccurrence": cooccurrence_topk}
