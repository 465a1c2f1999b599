"""ScaNN tuned to a recall target (index.target_recall): measured against exact search, cheapest choice kept."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import towerkit
from towerkit.indexes.recall_tuning import (
    LEAF_FRACTIONS, REORDER_GRID, choose_search, exact_top_k, recall_at_k, search_cost,
)

K = 10


@pytest.fixture(scope="module")
def gaussian():
    rng = np.random.default_rng(7)
    candidates = rng.normal(size=(50_000, 32)).astype(np.float32)
    tuning = rng.normal(size=(1_500, 32)).astype(np.float32)
    held_out = rng.normal(size=(400, 32)).astype(np.float32)
    return candidates, tuning, held_out, exact_top_k(held_out, candidates, K)


def _tuned(candidates, tuning, target):
    index = towerkit.create_index("scann", k=K, target_recall=target)
    assert index.wants_tuning_queries
    index.tune_with(tuning)
    index.index(candidates)
    return index


def test_exact_top_k_agrees_with_a_full_sort(gaussian):
    candidates, _, held_out, exact = gaussian
    scores = held_out[:20] @ candidates.T
    np.testing.assert_array_equal(exact[:20], np.argsort(-scores, axis=1)[:, :K])


@pytest.mark.parametrize("target", [0.9, 0.98])
def test_target_recall_is_reached_on_queries_the_tuning_never_saw(gaussian, target):
    candidates, tuning, held_out, exact = gaussian
    index = _tuned(candidates, tuning, target)
    params = index.parameters()
    assert params["target_recall"] == target and params["target_reached"] is True
    assert params["reached_recall"] >= target and params["tuning_queries"] == 1000
    found = index(tf.constant(held_out))[1].numpy()
    # The tuning aims two standard errors above the target; held-out queries land within noise of it.
    assert recall_at_k(found, exact) >= target - 0.01
    assert params["num_leaves_to_search"] <= params["num_leaves"]


def test_a_higher_target_buys_more_search_and_the_default_misses_it(gaussian):
    candidates, tuning, held_out, exact = gaussian
    low, high = (_tuned(candidates, tuning, t).parameters() for t in (0.8, 0.98))
    cost = [search_cost(p["num_leaves_to_search"], p["num_reordering_candidates"], p["num_leaves"], len(candidates))
            for p in (low, high)]
    assert cost[0] < cost[1]
    default = towerkit.create_index("scann", k=K)
    default.index(candidates)
    # The premise: untuned defaults fall well short on unstructured data.
    assert recall_at_k(default(tf.constant(held_out))[1].numpy(), exact) < 0.9


def test_choose_search_keeps_the_cheapest_pair_that_reaches_the_target():
    exact = np.tile(np.arange(K), (50, 1))

    def found(leaves, reorder):
        # Recall grows with both knobs: leaves/10 + reorder/1000 of the top k are found, capped at all.
        hits = min(K, int(leaves / 10 + reorder / 100))
        return np.concatenate([exact[:, :hits], np.full((50, K - hits), -1)], axis=1)

    choice = choose_search(found, exact, 0.8, num_leaves=100, num_candidates=1_000_000, k=K)
    assert choice["target_reached"] and choice["reached_recall"] >= 0.8
    leaves, reorder = choice["num_leaves_to_search"], choice["num_reordering_candidates"]
    chosen_cost = search_cost(leaves, reorder, 100, 1_000_000)
    grid_leaves = sorted({max(1, round(100 * f)) for f in LEAF_FRACTIONS})
    reaching = [(other_leaves, other_reorder) for other_leaves in grid_leaves for other_reorder in REORDER_GRID
                if recall_at_k(found(other_leaves, other_reorder), exact) >= 0.8]
    assert (leaves, reorder) in reaching
    assert chosen_cost == min(search_cost(*pair, 100, 1_000_000) for pair in reaching)
    unreachable = choose_search(lambda leaves, reorder: np.full((50, K), -1), exact, 0.5, 100, 1_000_000, K)
    assert unreachable["target_reached"] is False and unreachable["reached_recall"] == 0.0


@pytest.mark.parametrize("options, words", [
    ({"target_recall": 1.5}, "in \\(0, 1\\]"),
    ({"target_recall": "high"}, "in \\(0, 1\\]"),
    ({"target_recall": 0.9, "num_leaves_to_search": 4}, "not both"),
])
def test_bad_target_recall_options(options, words):
    with pytest.raises(towerkit.ConfigError, match=words):
        towerkit.create_index("scann", **options)


def test_small_candidate_sets_are_searched_exactly_and_say_so():
    index = towerkit.create_index("scann", k=K, target_recall=0.99)
    index.index(np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32))
    params = index.parameters()
    assert params["brute_force"] is True and params["reached_recall"] == 1.0


class _Features(tf.keras.layers.Layer):
    """A query model that passes a 32-wide float feature through, so raw features are embeddings."""

    def call(self, features):
        return features["q"]


def test_the_export_searches_with_the_tuned_parameters(gaussian, tmp_path):
    from towerkit.export import save_export
    from towerkit.serving import load_export

    candidates, tuning, held_out, _ = gaussian
    index = towerkit.create_index("scann", k=K, target_recall=0.9, query_model=_Features())
    index.tune_with(tuning)
    index.index(candidates)
    expected = index({"q": tf.constant(held_out)})[1].numpy()
    save_export(index, tmp_path / "model", query_feature_keys=["q"], metadata={},
                query_specs={"q": tf.TensorSpec([None, 32], tf.float32, name="q")})
    loaded = load_export(tmp_path / "model")
    assert loaded.metadata["index"]["reached_recall"] == index.parameters()["reached_recall"]
    # Built for the widest search, the searcher would answer differently without the tuned overrides.
    np.testing.assert_array_equal(loaded.signature(q=tf.constant(held_out))["ids"].numpy(), expected)


def test_without_real_queries_a_sample_of_the_candidates_tunes_the_search(gaussian):
    """`create_index("scann", target_recall=...)` used directly, with no tune_with: it still reaches its target."""
    candidates, _, held_out, exact = gaussian
    index = towerkit.create_index("scann", k=K, target_recall=0.9)
    index.index(candidates)
    params = index.parameters()
    assert params["target_reached"] is True and params["reached_recall"] >= 0.9
    found = index(tf.constant(held_out))[1].numpy()
    assert recall_at_k(found, exact) >= 0.85  # tuned on candidate-shaped queries, checked on held-out ones
