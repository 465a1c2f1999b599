"""ScaNN tuned to a recall target (index.target_recall): measured against exact search, cheapest choice kept."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import towerkit
from towerkit.indexes.recall_tuning import (
    PLATEAU_TOLERANCE, REORDER_GRID, choose_search, exact_top_k, fewest_leaves, recall_at_k, recall_lower_bound, search_cost,
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
    assert params["tuned_latency_ms"] > 0  # the choice was timed, not modelled
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


def _synthetic_search(exact):
    """Recall grows with both knobs: leaves/10 + reorder/100 of the top k are found, capped at all."""
    def found(leaves, reorder):
        hits = min(K, int(leaves / 10 + reorder / 100))
        return np.concatenate([exact[:, :hits], np.full((len(exact), K - hits), -1)], axis=1)
    return found


def _reaching(found, exact, target, num_leaves):
    return [(leaves, reorder) for leaves in range(1, num_leaves + 1) for reorder in sorted({max(K, r) for r in REORDER_GRID})
            if recall_lower_bound(found(leaves, reorder), exact) >= target]


def test_choose_search_keeps_the_cheapest_modelled_pair_without_timings():
    exact = np.tile(np.arange(K), (400, 1))
    found = _synthetic_search(exact)
    choice = choose_search(found, exact, 0.7, num_leaves=100, num_candidates=1_000_000, k=K)
    assert choice["target_reached"] and choice["recall_lower_bound"] >= 0.7
    reaching = _reaching(found, exact, 0.7, 100)  # every leaf count, not a grid
    chosen = (choice["num_leaves_to_search"], choice["num_reordering_candidates"])
    assert chosen in reaching
    assert search_cost(*chosen, 100, 1_000_000) == min(search_cost(*pair, 100, 1_000_000) for pair in reaching)
    unreachable = choose_search(lambda leaves, reorder: np.full((400, K), -1), exact, 0.5, 100, 1_000_000, K)
    assert unreachable["target_reached"] is False and unreachable["reached_recall"] == 0.0


def test_an_unreachable_target_keeps_the_cheapest_setting_as_good_as_the_most_thorough():
    """When even every leaf falls short, searching every leaf is not the answer: the cheapest
    setting whose bound matches the most thorough search's (within the tolerance) is."""
    exact = np.tile(np.arange(K), (400, 1))

    def saturating(leaves, reorder):  # at most 9 of 10 found, however hard the search
        hits = min(K - 1, int(leaves / 10 + reorder / 100))
        return np.concatenate([exact[:, :hits], np.full((len(exact), K - hits), -1)], axis=1)

    choice = choose_search(saturating, exact, 0.99, 100, 1_000_000, K)
    best = recall_lower_bound(saturating(100, REORDER_GRID[-1]), exact)
    assert choice["target_reached"] is False
    assert choice["recall_lower_bound"] >= best - PLATEAU_TOLERANCE
    plateau = [pair for pair in _reaching(saturating, exact, best - PLATEAU_TOLERANCE, 100)]
    chosen = (choice["num_leaves_to_search"], choice["num_reordering_candidates"])
    assert search_cost(*chosen, 100, 1_000_000) == min(search_cost(*pair, 100, 1_000_000) for pair in plateau)
    assert search_cost(*chosen, 100, 1_000_000) < search_cost(100, REORDER_GRID[-1], 100, 1_000_000)


def test_rescoring_sizes_never_exceed_the_catalogue():
    exact = np.tile(np.arange(K), (50, 1))
    asked = []

    def found(leaves, reorder):
        asked.append(reorder)
        return exact

    choose_search(found, exact, 0.5, 10, 300, K)
    assert asked and max(asked) <= 300


@pytest.mark.parametrize("leaf_seconds, reorder_seconds", [(1e-3, 1e-6), (1e-6, 1e-3)])
def test_choose_search_keeps_the_fastest_timed_pair(leaf_seconds, reorder_seconds):
    """With timings, the measured fastest of all reaching settings wins, whichever knob is the dear one."""
    exact = np.tile(np.arange(K), (400, 1))
    found = _synthetic_search(exact)
    timed = []

    def latency(leaves, reorder):
        timed.append((leaves, reorder))
        return leaves * leaf_seconds + reorder * reorder_seconds

    choice = choose_search(found, exact, 0.7, 100, 1_000_000, K, latency=latency)
    reaching = _reaching(found, exact, 0.7, 100)
    fastest = min(reaching, key=lambda pair: latency(*pair))
    assert (choice["num_leaves_to_search"], choice["num_reordering_candidates"]) == fastest
    assert choice["tuned_latency_ms"] == pytest.approx(1e3 * latency(*fastest), rel=1e-3)
    assert set(timed) <= set(reaching)  # only settings that reach the target are worth timing


@pytest.mark.parametrize("threshold", [1, 2, 3, 7, 64, 100, 101])
@pytest.mark.parametrize("low", [1, 5])
def test_fewest_leaves_agrees_with_a_linear_scan(threshold, low):
    asked = []

    def reaches(leaves):
        asked.append(leaves)
        return leaves >= threshold

    expected = next((leaves for leaves in range(low, 101) if reaches(leaves)), None)
    asked.clear()
    assert fewest_leaves(reaches, low, 100) == expected
    assert len(asked) <= 2 * 7 + 2  # galloping then bisection: logarithmic, not a scan


def test_real_scann_tuning_picks_the_fewest_leaves_for_its_rescoring_size(gaussian):
    """On a real ScaNN tree: the choice reaches the target, one leaf fewer at its rescoring size does not."""
    from scann.scann_ops.py import scann_ops

    candidates, tuning, _, _ = gaussian
    queries = tuning[:300]
    exact = exact_top_k(queries, candidates, K)
    searcher = (scann_ops.builder(candidates, K, "dot_product").tree(num_leaves=200, num_leaves_to_search=200)
                .score_ah(2, anisotropic_quantization_threshold=0.2).reorder(REORDER_GRID[-1]).build())

    def found(leaves, reorder):
        return searcher.search_batched(tf.constant(queries), final_num_neighbors=K, pre_reorder_num_neighbors=reorder,
                                       leaves_to_search=leaves).indices.numpy()

    choice = choose_search(found, exact, 0.9, 200, len(candidates), K)
    leaves, reorder = choice["num_leaves_to_search"], choice["num_reordering_candidates"]
    assert choice["target_reached"] and recall_lower_bound(found(leaves, reorder), exact) >= 0.9
    assert leaves == 1 or recall_lower_bound(found(leaves - 1, reorder), exact) < 0.9


def test_the_recall_bound_counts_queries_not_hits():
    """One query missing all of its top k among 100 is a 1% shortfall the sample cannot rule out."""
    exact = np.tile(np.arange(K), (100, 1))
    lumpy = exact.copy()
    lumpy[0] = -1
    assert recall_at_k(lumpy, exact) == pytest.approx(0.99)
    assert recall_lower_bound(lumpy, exact) < 0.97
    perfect_small, perfect_large = (recall_lower_bound(np.tile(np.arange(K), (n, 1)), np.tile(np.arange(K), (n, 1)))
                                    for n in (100, 10_000))
    assert perfect_small < perfect_large < 1.0  # never certainty, and tighter with more queries
    assert perfect_large > 0.999


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


def test_a_batch_of_one_gets_the_answer_it_gets_inside_a_larger_batch(gaussian, tmp_path):
    """A [1, d] query takes ScaNN's single-query op (the serving call); it must answer as the batched op does."""
    from towerkit.export import save_export
    from towerkit.serving import load_export

    candidates, tuning, held_out, _ = gaussian
    index = towerkit.create_index("scann", k=K, target_recall=0.9, query_model=_Features())
    index.tune_with(tuning)
    index.index(candidates)
    batch_scores, batch_ids = (t.numpy() for t in index({"q": tf.constant(held_out[:20])}))
    graph_call = tf.function(lambda q: index({"q": q}), input_signature=[tf.TensorSpec([None, None], tf.float32)])
    save_export(index, tmp_path / "model", query_feature_keys=["q"], metadata={},
                query_specs={"q": tf.TensorSpec([None, 32], tf.float32, name="q")})
    exported = load_export(tmp_path / "model").signature
    for row in range(20):
        one = tf.constant(held_out[row : row + 1])
        served = exported(q=one)
        for scores, ids in (index({"q": one}), graph_call(one), (served["scores"], served["ids"])):
            assert ids.shape == (1, K)
            np.testing.assert_array_equal(ids.numpy()[0], batch_ids[row])
            np.testing.assert_allclose(scores.numpy()[0], batch_scores[row], rtol=1e-5)


def test_tuning_builds_both_block_sizes_and_keeps_the_faster(gaussian):
    """Without dimensions_per_block, tuning builds blocks of 2 and of 1, times each one's choice, keeps the faster."""
    candidates, tuning, held_out, exact = gaussian
    index = _tuned(candidates, tuning, 0.9)
    params = index.parameters()
    timings = params["block_size_latency_ms"]
    assert set(timings) == {"1", "2"} and all(value > 0 for value in timings.values())
    assert params["target_reached"] is True
    assert params["dimensions_per_block"] in (1, 2)
    # The searcher kept is the one recorded: its codes have one column per block (TFRS keeps it as variables).
    assert index._serialized_searcher.hashed_dataset.shape[1] == 32 // params["dimensions_per_block"]
    assert recall_at_k(index(tf.constant(held_out))[1].numpy(), exact) >= 0.85


@pytest.mark.parametrize("choices, times, expected", [
    ({1: (True, 0.991), 2: (True, 0.995)}, {1: 0.2, 2: 0.3}, 1),     # both reach: the faster
    ({1: (False, 0.985), 2: (True, 0.991)}, {1: 0.1, 2: 0.3}, 2),    # only one reaches: it, however slow
    ({1: (False, 0.950), 2: (False, 0.985)}, {1: 0.1, 2: 0.3}, 2),   # neither: the faster one serves worse
    ({1: (False, 0.984), 2: (False, 0.985)}, {1: 0.1, 2: 0.3}, 1),   # neither, bounds within the tolerance
])
def test_fastest_choice_prefers_reaching_then_a_bound_as_good_as_the_best(choices, times, expected):
    from towerkit.indexes.recall_tuning import fastest_choice

    made = {key: {"target_reached": reached, "recall_lower_bound": bound} for key, (reached, bound) in choices.items()}
    assert fastest_choice(made, times) == expected


def test_a_given_block_size_is_the_only_one_tuned(gaussian):
    candidates, tuning, _, _ = gaussian
    index = towerkit.create_index("scann", k=K, target_recall=0.9, dimensions_per_block=1)
    index.tune_with(tuning)
    index.index(candidates)
    params = index.parameters()
    assert params["dimensions_per_block"] == 1 and "block_size_latency_ms" not in params
    assert params["target_reached"] is True
