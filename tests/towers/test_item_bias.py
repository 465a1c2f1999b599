"""The item_bias option: a learned per-candidate bias column, paired with a constant-1 column on the query side."""

import numpy as np
import pytest
import tensorflow as tf

import towerkit
from towerkit.errors import ConfigError
from towerkit.towers.history import HistoryTower
from towerkit.towers.id_embedding import IdEmbeddingTower


def test_the_candidate_side_appends_a_learned_per_id_bias_that_round_trips():
    tower = IdEmbeddingTower("movie_id", vocabulary=["1", "2", "3"], embedding_dim=4, item_bias=True)
    ids = tf.constant(["1", "3", "unknown"])
    out = tower({"movie_id": ids}).numpy()
    assert out.shape == (3, 5) and tower.output_dim == 5
    np.testing.assert_array_equal(out[:, 4], 0.0)  # starts at zero: no prior on any item
    bias = tower.bias_embedding
    bias.set_weights([np.array([[0.5], [1.0], [2.0], [3.0]], dtype=np.float32)])  # row 0 is the OOV row
    out = tower({"movie_id": ids}).numpy()
    np.testing.assert_allclose(out[:, 4], [1.0, 3.0, 0.5])
    np.testing.assert_allclose(out[:, :4], tower.embedding(tower.lookup(ids)).numpy())
    clone = IdEmbeddingTower.from_config(tower.get_config())
    clone({"movie_id": ids})
    clone.set_weights(tower.get_weights())
    np.testing.assert_allclose(clone({"movie_id": ids}).numpy(), out)
    assert IdEmbeddingTower("movie_id", vocabulary=["1"], embedding_dim=4).output_dim == 4


def test_the_history_side_appends_a_constant_one_that_round_trips():
    tower = HistoryTower(vocabulary=[1, 2, 3], embedding_dim=4, item_bias=True)
    histories = tf.ragged.constant([[1, 3], [], [2, 2, 9]], dtype=tf.int64)
    out = tower({"movie_history": histories}).numpy()
    assert out.shape == (3, 5) and tower.output_dim == 5
    np.testing.assert_array_equal(out[:, 4], 1.0)
    plain = HistoryTower(vocabulary=[1, 2, 3], embedding_dim=4)
    plain({"movie_history": histories})
    plain.set_weights(tower.get_weights())
    np.testing.assert_allclose(out[:, :4], plain({"movie_history": histories}).numpy())
    clone = HistoryTower.from_config(tower.get_config())
    clone({"movie_history": histories})
    clone.set_weights(tower.get_weights())
    np.testing.assert_allclose(clone({"movie_history": histories}).numpy(), out)


@pytest.mark.parametrize("build", [lambda: towerkit.create_tower("movie", item_bias="yes"),
                                   lambda: HistoryTower(vocabulary=[1], item_bias=1)])
def test_a_non_boolean_item_bias_is_one_clear_error(build):
    with pytest.raises(ConfigError, match="item_bias must be true or false"):
        build()


def test_the_movie_towers_item_bias_refuses_side_features():
    with pytest.raises(ConfigError, match="item_bias works with the title embedding alone"):
        towerkit.create_tower("movie", genres=True, item_bias=True)


def test_a_bias_on_one_side_only_is_a_width_error(small_leave_last):
    with pytest.raises(towerkit.TowerkitError, match="33|32"):
        towerkit.assemble(data=small_leave_last, query={"name": "history", "max_length": 5},
                          candidate={"name": "movie", "feature": "movie_id", "item_bias": True})


def test_a_trained_model_scores_the_embedding_dot_product_plus_the_items_bias(small_leave_last):
    from towerkit.datasets.base import to_tf_dataset

    tf.keras.utils.set_random_seed(5)
    model = towerkit.assemble(data=small_leave_last, query={"name": "history", "embedding_dim": 8, "item_bias": True},
                              candidate={"name": "movie", "embedding_dim": 8, "feature": "movie_id", "item_bias": True},
                              task={"name": "retrieval", "logq_correction": True})
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.2))
    model.fit(to_tf_dataset(small_leave_last.train_features(model.feature_keys)).batch(256), epochs=2, verbose=0)
    tower = model.candidate_tower
    movies = tf.constant(small_leave_last.candidate_features["movie_id"].astype(str))
    biases = tower.bias_embedding(tower.lookup(movies)).numpy()[:, 0]
    assert np.ptp(biases) > 0  # training moved the biases apart
    queries = model.query_tower({"movie_history": tf.ragged.constant([[1, 2, 3], [7]], dtype=tf.int64)}).numpy()
    candidates = tower({"movie_id": movies}).numpy()
    expected = queries[:, :8] @ tower.embedding(tower.lookup(movies)).numpy().T + biases[None, :]
    np.testing.assert_allclose(queries @ candidates.T, expected, rtol=1e-5, atol=1e-5)


def test_a_model_with_item_bias_exports_and_serves_a_new_user(data_dir, tmp_path):
    from conftest import recipe_text, run_cli

    recipe = tmp_path / "bias.toml"
    recipe.write_text(recipe_text(
        recipe={"name": "bias"}, dataset={"name": "movielens-100k", "split": "leave-last", "history_length": 8},
        query_tower={"name": "history", "embedding_dim": 16, "max_length": 5, "item_bias": True},
        candidate_tower={"name": "movie", "embedding_dim": 16, "feature": "movie_id", "item_bias": True},
        evaluate={"ks": [10], "every_epoch": False, "exclude_train": False},
    ).replace('num_users = 150\nnum_items = 60\nnum_interactions = 4000\n', ""))
    trained = run_cli("train", str(recipe), "-o", str(tmp_path / "run"), "--set", "train.epochs=1")
    assert trained.returncode == 0, trained.stderr[-2000:]
    export = towerkit.load_export(tmp_path / "run" / "model")
    scores, ids = export.recommend({"movie_history": [[1, 2, 3], [7]]}, k=5)
    assert ids.shape == (2, 5) and np.isfinite(scores).all() and list(ids[0]) != list(ids[1])
