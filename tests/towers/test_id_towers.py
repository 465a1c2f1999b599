"""The id towers: lookups, out-of-vocabulary rows, feature checks, configs, adaptation, bad dimensions."""

import numpy as np
import pytest
import tensorflow as tf

import towerkit
from towerkit.errors import ConfigError, FeatureError
from towerkit.towers.id_embedding import IdEmbeddingTower


def test_tower_embeds_known_ids_and_shares_an_oov_row():
    tower = towerkit.create_tower("user", vocabulary=["1", "2", "3"], embedding_dim=4)
    out = tower({"user_id": tf.constant(["1", "2", "nobody", "stranger"])}).numpy()
    assert out.shape == (4, 4)
    assert not np.allclose(out[0], out[1])
    np.testing.assert_array_equal(out[2], out[3])  # both unknown ids use the OOV row
    # A bare tensor feeds a single-feature tower, as in the tutorial's index(tf.constant(["42"])).
    np.testing.assert_array_equal(tower(tf.constant(["1"])).numpy()[0], out[0])


def test_tower_declares_and_checks_features():
    tower = towerkit.create_tower("movie", vocabulary=["a"], embedding_dim=2)
    assert tower.feature_keys == ("movie_title",)
    with pytest.raises(FeatureError, match="needs feature\\(s\\) movie_title"):
        tower({"user_id": tf.constant(["a"])})
    assert towerkit.create_tower("user", feature="uid").feature_keys == ("uid",)


def test_tower_config_round_trips():
    tower = towerkit.create_tower("user", vocabulary=["x", "y"], embedding_dim=3)
    tower(tf.constant(["x"]))
    clone = IdEmbeddingTower.from_config(tower.get_config())
    clone(tf.constant(["x"]))
    clone.set_weights(tower.get_weights())
    ids = tf.constant(["y", "x", "zz"])
    np.testing.assert_allclose(clone(ids).numpy(), tower(ids).numpy())
    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(tower))
    assert isinstance(restored, IdEmbeddingTower) and restored.vocabulary == ["x", "y"]


def test_tower_adapts_from_data():
    tower = towerkit.create_tower("user", embedding_dim=2)
    assert not tower.is_adapted
    tower.adapt({"user_id": np.array(["b", "a", "b"])})
    assert tower.vocabulary == ["a", "b"]


@pytest.mark.parametrize("bad", [0, -3, 2.5, "32", True])
def test_tower_rejects_bad_dims(bad):
    with pytest.raises(ConfigError, match="embedding_dim must be a positive integer"):
        towerkit.create_tower("user", embedding_dim=bad)
