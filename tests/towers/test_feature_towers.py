"""Feature towers: genres, title words, demographics, time and deep stacks; typed query features in exports."""

import json

import numpy as np
import pytest
import tensorflow as tf

import towerkit
from towerkit.errors import ConfigError
from towerkit.towers.feature_tower import FeatureTower

from conftest import run_cli


def _batch(data, keys, n=6):
    columns = data.test_features(keys)
    return {k: v[:n] for k, v in columns.items()}


def _ragged(batch):
    from towerkit.datasets.base import to_tf_dataset

    return next(iter(to_tf_dataset(batch).batch(len(next(iter(batch.values()))))))




@pytest.mark.parametrize("options", [{"genres": True}, {"title_text": True}, {"genres": True, "title_text": True}])
def test_movie_feature_options_keep_dim_and_round_trip(small_movielens, options):
    tower = towerkit.create_tower("movie", embedding_dim=8, **options)
    tower.adapt(small_movielens.adapt_features())
    assert set(tower.feature_keys) == {"movie_title"} | ({"movie_genres"} if options.get("genres") else set())
    batch = _ragged(_batch(small_movielens, tower.feature_keys))
    out = tower(batch)
    assert out.shape == (6, 8)
    clone = FeatureTower.from_config(tower.get_config())
    clone(batch)
    clone.set_weights(tower.get_weights())
    np.testing.assert_allclose(clone(batch).numpy(), out.numpy(), rtol=1e-6)


@pytest.mark.parametrize("options, width", [({"demographics": True}, 8), ({"timestamp": True}, 8),
                                            ({"demographics": True, "timestamp": True, "layers": [16, 4]}, 4)])
def test_user_feature_options(small_movielens, options, width):
    tower = towerkit.create_tower("user", embedding_dim=8, **options)
    tower.adapt(small_movielens.adapt_features())
    batch = _ragged(_batch(small_movielens, tower.feature_keys))
    assert tower(batch).shape == (6, width)
    if options.get("demographics"):
        assert "user_zip_code" in tower.feature_keys and "user_gender" in tower.feature_keys
    clone = FeatureTower.from_config(tower.get_config())
    clone(batch)
    clone.set_weights(tower.get_weights())
    np.testing.assert_allclose(clone(batch).numpy(), tower(batch).numpy(), rtol=1e-6)


def test_layers_need_concat():
    with pytest.raises(ConfigError, match="layers needs"):
        FeatureTower("user_id", layers=[8], combine="sum")
    with pytest.raises(ConfigError, match="combine must be one of"):
        FeatureTower("user_id", combine="product")


def test_feature_towers_train_end_to_end(small_movielens):
    tf.keras.utils.set_random_seed(0)
    model = towerkit.assemble(query={"name": "user", "demographics": True, "layers": [16, 8], "embedding_dim": 8},
                              candidate={"name": "movie", "genres": True, "title_text": True, "embedding_dim": 8},
                              data=small_movielens)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    from towerkit.pipeline import training_dataset

    history = model.fit(training_dataset(small_movielens, model.feature_keys, 32, 10_000, 0), epochs=5, verbose=0)
    # The fixture's ratings are random, so only fitting the training data is expected.
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert set(towerkit.evaluate_topk(model, small_movielens, ks=[5]).all) == {"top_5"}


def test_feature_tower_export_takes_typed_query_features(data_dir, tmp_path):
    output = tmp_path / "features"
    result = run_cli("train", "basic-retrieval", "-o", str(output), "--set", "train.epochs=1",
                     "--set", "query_tower.demographics=true", "--set", "query_tower.timestamp=true",
                     "--set", "candidate_tower.genres=true", "--set", 'export.example_query="1"')
    assert result.returncode == 0, result.stderr
    assert "reloaded export agrees" in result.stdout
    meta = json.loads((output / "model" / "towerkit.json").read_text())
    assert meta["query_feature_dtypes"]["timestamp"] == "int64"
    assert meta["query_feature_dtypes"]["user_gender"] == "bool"
    assert meta["query_feature_dtypes"]["user_id"] == "string"
