"""Exact top-k evaluation: against NumPy and FactorizedTopK, both protocols, the popularity baseline."""

import numpy as np
import pytest
import tensorflow as tf

import towerkit
from conftest import fit_small
from towerkit.embedding import embed


def test_exact_evaluation_matches_numpy_and_factorized_topk(synthetic):
    model, _ = fit_small(synthetic, epochs=2)
    fast = towerkit.evaluate_topk(model, synthetic, ks=[1, 5, 10, 20, 50])

    # An exact NumPy computation from the same embeddings, in float64: the true
    # candidate's rank among all candidates (item i is candidate row i here).
    queries = embed(model.query_tower, synthetic.test_features(["user_id"])).numpy().astype(np.float64)
    candidates = embed(model.candidate_tower, {"movie_title": synthetic.candidate_ids}).numpy().astype(np.float64)
    rows = np.array([int(t.split()[-1]) for t in synthetic.test_features(["movie_title"])["movie_title"]])
    scores = queries @ candidates.T
    ranks = (scores > scores[np.arange(len(rows)), rows][:, None] + 1e-9).sum(axis=1)
    for k in (1, 5, 10, 20, 50):
        assert abs(fast.all[f"top_{k}"] - np.mean(ranks < k)) <= 1e-4

    # FactorizedTopK, as the tutorial computes it in model.evaluate, ranks the
    # positive below itself when rounding makes sum(q*c) < matmul(q, c); the two
    # agree up to those ties.
    test = tf.data.Dataset.from_tensor_slices(synthetic.test_features(model.feature_keys)).batch(512)
    slow = model.evaluate(test, return_dict=True, verbose=0)
    for k in (10, 50):
        factorized = slow[f"factorized_top_k/top_{k}_categorical_accuracy"]
        assert factorized <= fast.all[f"top_{k}"] + 1e-4
        assert fast.all[f"top_{k}"] - factorized <= 0.05


def test_excluding_training_items_never_lowers_accuracy(synthetic):
    model, _ = fit_small(synthetic, epochs=1)
    results = towerkit.evaluate_topk(model, synthetic, ks=[1, 10, 50], exclude_train=True)
    for k in (1, 10, 50):
        assert results.excluding_train[f"top_{k}"] >= results.all[f"top_{k}"]


def test_popularity_baseline_ranks_by_training_counts(synthetic):
    results = towerkit.popularity_topk(synthetic, ks=[1, 80])
    assert results.all["top_80"] == 1.0  # every candidate is within the top 80 of 80
    train_ids = synthetic.interactions["movie_title"][synthetic.train_rows]
    test_ids = synthetic.interactions["movie_title"][synthetic.test_rows]
    values, counts = np.unique(train_ids, return_counts=True)
    most_popular = values[np.argmax(counts)]
    assert results.all["top_1"] == pytest.approx(np.mean(test_ids == most_popular))


def test_model_beats_popularity_on_structured_data(synthetic):
    model, _ = fit_small(synthetic, epochs=8)
    assert towerkit.evaluate_topk(model, synthetic).all["top_10"] > towerkit.popularity_topk(synthetic).all["top_10"]


def test_ranking_a_large_catalogue_scores_bounded_chunks():
    """At 100k candidates a 4,096-row chunk of float64 scores is 3.3 GB; the chunk shrinks with the catalogue."""
    from towerkit.baselines import fit_baseline
    from towerkit.evaluation import topk_from_scores

    data = towerkit.load_dataset("synthetic", num_users=3000, num_items=100_000, num_interactions=20_000, seed=1)
    _, scorer = fit_baseline("popularity", data)
    queries = data.interactions[data.query_id_key][data.test_rows]
    widths = []

    def score_rows(start, stop):
        widths.append(stop - start)
        return scorer(queries[start:stop])

    result = topk_from_scores(data, score_rows, [10], False)
    assert sum(widths) == len(data.test_rows) and max(widths) * len(data.candidate_ids) <= 2**26
    assert 0 <= result.all["top_10"] <= 1
