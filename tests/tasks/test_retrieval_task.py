"""The retrieval task: its loss against TFRS, logQ, temperature, accidental hits, hard negatives, configs."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

import towerkit
from towerkit.errors import ConfigError


def _tfrs_loss(query, candidates, **kwargs):
    return tfrs.tasks.Retrieval(**kwargs)(query, candidates, compute_metrics=False)


@pytest.mark.parametrize("options", [{}, {"temperature": 0.2}])
def test_fast_loss_equals_tfrs_loss(options):
    rng = np.random.default_rng(0)
    query = tf.constant(rng.normal(size=(64, 8)), tf.float32)
    candidates = tf.constant(rng.normal(size=(64, 8)), tf.float32)
    task = towerkit.create_task("retrieval", **options)
    ours = task(query, candidates, compute_metrics=False).numpy()
    np.testing.assert_allclose(ours, _tfrs_loss(query, candidates, **options).numpy(), rtol=1e-5)


def test_fast_loss_with_weights_and_sampling_probability_equals_tfrs():
    rng = np.random.default_rng(1)
    query = tf.constant(rng.normal(size=(32, 4)), tf.float32)
    candidates = tf.constant(rng.normal(size=(32, 4)), tf.float32)
    weights = tf.constant(rng.uniform(0.1, 2.0, size=32), tf.float32)
    probability = tf.constant(rng.uniform(0.001, 0.1, size=32), tf.float32)
    ours = towerkit.create_task("retrieval")(
        query, candidates, sample_weight=weights, candidate_sampling_probability=probability, compute_metrics=False)
    theirs = tfrs.tasks.Retrieval()(
        query, candidates, sample_weight=weights, candidate_sampling_probability=probability, compute_metrics=False)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5)


def test_logq_correction_uses_training_frequencies_and_changes_the_loss():
    rng = np.random.default_rng(2)
    query = tf.constant(rng.normal(size=(16, 4)), tf.float32)
    candidates = tf.constant(rng.normal(size=(16, 4)), tf.float32)
    ids = tf.constant([f"item {i % 4}" for i in range(16)])
    task = towerkit.create_task("retrieval", logq_correction=True)
    with pytest.raises(ConfigError, match="logq_correction needs"):
        task(query, candidates, candidate_ids=ids)
    task.set_candidate_probabilities({"item 0": 0.7, "item 1": 0.1, "item 2": 0.1, "item 3": 0.1})
    corrected = task(query, candidates, candidate_ids=ids, compute_metrics=False).numpy()
    plain = towerkit.create_task("retrieval")(query, candidates, compute_metrics=False).numpy()
    assert not np.isclose(corrected, plain)


@pytest.mark.parametrize(
    "options, message",
    [({"ks": []}, "ks must be"), ({"ks": [0]}, "ks must be"), ({"temperature": 0}, "temperature must be"),
     ({"num_hard_negatives": -1}, "num_hard_negatives must be")],
)
def test_task_rejects_invalid_values(options, message):
    with pytest.raises(ConfigError, match=message):
        towerkit.create_task("retrieval", **options)


def test_task_config_round_trips():
    task = towerkit.create_task("retrieval", temperature=0.5, ks=[1, 10], num_hard_negatives=3)
    config = task.get_config()
    assert config["temperature"] == 0.5 and config["ks"] == [1, 10] and config["num_hard_negatives"] == 3
    rebuilt = towerkit.create_task("retrieval", **{k: v for k, v in config.items() if k != "name"})
    assert rebuilt.get_config() == {**config, "name": rebuilt.name}


def _embeddings(seed, n=32, dim=4):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.normal(size=(n, dim)), tf.float32), tf.constant(rng.normal(size=(n, dim)), tf.float32)


def test_temperature_scales_the_logits():
    query, candidates = _embeddings(4)
    plain = towerkit.create_task("retrieval")(query, candidates, compute_metrics=False)
    hot = towerkit.create_task("retrieval", temperature=0.5)(query, candidates, compute_metrics=False)
    doubled = towerkit.create_task("retrieval")(query * 2.0, candidates, compute_metrics=False)
    np.testing.assert_allclose(hot.numpy(), doubled.numpy(), rtol=1e-5)
    assert not np.isclose(hot.numpy(), plain.numpy())


def test_remove_accidental_hits_masks_duplicate_candidates():
    query, candidates = _embeddings(5, n=8)
    distinct = tf.constant([f"m{i}" for i in range(8)])
    repeated = tf.constant(["m0", "m0", "m1", "m1", "m2", "m2", "m3", "m3"])
    task = towerkit.create_task("retrieval", remove_accidental_hits=True)
    plain = towerkit.create_task("retrieval")(query, candidates, compute_metrics=False).numpy()
    # With every id distinct nothing is masked; with repeats the duplicates stop counting as negatives.
    np.testing.assert_allclose(task(query, candidates, candidate_ids=distinct, compute_metrics=False).numpy(), plain, rtol=1e-5)
    assert task(query, candidates, candidate_ids=repeated, compute_metrics=False).numpy() < plain


def test_hard_negatives_keep_only_the_hardest():
    query, candidates = _embeddings(6)
    plain = towerkit.create_task("retrieval")(query, candidates, compute_metrics=False).numpy()
    hard = towerkit.create_task("retrieval", num_hard_negatives=3)(query, candidates, compute_metrics=False).numpy()
    assert hard < plain


def test_logq_correction_undoes_the_in_batch_popularity_penalty(synthetic):
    """In-batch negatives are sampled in proportion to popularity, so without
    correction popular items are pushed down too often. Subtracting log(p) from
    the training logits removes that penalty: the corrected model ranks popular
    items higher at serving time (which is also why it beats popularity on
    MovieLens while the uncorrected seed model does not)."""
    from towerkit.embedding import embed

    def mean_popularity_of_top10(logq):
        tf.keras.utils.set_random_seed(0)
        model = towerkit.assemble(task={"name": "retrieval", "logq_correction": logq}, data=synthetic)
        model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
        train = tf.data.Dataset.from_tensor_slices(synthetic.train_features(model.feature_keys)).shuffle(10_000, seed=0).batch(512)
        model.fit(train, epochs=5, verbose=0)
        users = embed(model.query_tower, {"user_id": np.unique(synthetic.interactions["user_id"])}).numpy()
        items = embed(model.candidate_tower, {"movie_title": synthetic.candidate_ids}).numpy()
        top = np.argsort(-(users @ items.T), axis=1)[:, :10]
        counts = synthetic.candidate_train_frequencies()
        popularity = np.array([counts.get(t, 0.0) for t in synthetic.candidate_ids])
        return popularity[top].mean()

    assert mean_popularity_of_top10(True) > mean_popularity_of_top10(False)
