"""The `user` tower's history option: the user id plus the pooled items the user met before."""

import numpy as np
import pytest
import tensorflow as tf

import towerkit
from towerkit.errors import ConfigError
from towerkit.towers.feature_tower import FeatureTower


@pytest.fixture(scope="module")
def with_history(tmp_path_factory):
    from conftest import write_grouplens

    directory = tmp_path_factory.mktemp("data")
    write_grouplens(directory / "ml-100k")
    return towerkit.load_dataset("movielens-100k", data_dir=str(directory), source="files", history_length=5)


def _batch(data, keys, rows):
    from towerkit.datasets.base import to_tf_dataset

    columns = {key: data.interactions[key][rows] for key in keys}
    return next(iter(to_tf_dataset(columns).batch(len(rows))))


def test_history_adds_the_pooled_history_to_the_id_and_round_trips(with_history):
    tower = towerkit.create_tower("user", embedding_dim=8, history=5)
    tower.adapt(with_history.adapt_features())
    assert tower.feature_keys == ("user_id", "movie_history")
    rows = with_history.test_rows[:6]
    batch = _batch(with_history, tower.feature_keys, rows)
    out = tower(batch).numpy()
    clone = FeatureTower.from_config(tower.get_config())
    clone(batch)
    clone.set_weights(tower.get_weights())
    np.testing.assert_allclose(clone(batch).numpy(), out, rtol=1e-6)
    # The same users with other histories get other embeddings: the history is read.
    other = dict(batch, movie_history=tf.ragged.constant([[int(m)] for m in with_history.interactions["movie_id"][rows]],
                                                         dtype=tf.int64))
    assert not np.allclose(tower(other).numpy(), out)


def test_without_history_the_user_tower_is_the_seed_tower():
    assert towerkit.create_tower("user").feature_keys == ("user_id",)


@pytest.mark.parametrize("value", [-1, 2.5, True])
def test_a_bad_history_option_is_one_clear_error(value):
    with pytest.raises(ConfigError, match="history"):
        towerkit.create_tower("user", history=value)


def test_a_model_reading_history_without_the_dataset_feature_names_the_option(small_movielens):
    with pytest.raises(towerkit.TowerkitError, match="movie_history"):
        towerkit.assemble(query={"name": "user", "history": 5}, data=small_movielens)


def test_current_history_is_each_users_latest_training_movies(with_history):
    data = with_history
    current = data.current_query_features(["movie_history"])["movie_history"]
    users, movies, times = (data.interactions[k] for k in ("user_id", "movie_id", "timestamp"))
    for user in np.unique(users[data.train_rows])[:20]:
        own = [row for row in data.train_rows.tolist() if users[row] == user]
        own.sort(key=lambda row: (times[row], row))
        assert current[str(user)] == [int(movies[row]) for row in own[-5:]]
    def pairs(rows):
        return {(str(u), int(m)) for u, m in zip(users[rows].tolist(), movies[rows].tolist())}

    test_pairs, train_pairs = pairs(data.test_rows), pairs(data.train_rows)
    assert any((user, m) in test_pairs for user, history in current.items() for m in range(1, 41))
    for user, history in current.items():
        # Only training rows: a movie of this user's test rows appears only if it is a training row too.
        assert all((user, m) in train_pairs or (user, m) not in test_pairs for m in history)
