import json

import numpy as np
import pytest
import tensorflow as tf

import towerkit
from towerkit.datasets.item2item import consecutive_pairs
from towerkit.errors import ConfigError
from towerkit.evaluation import cooccurrence_topk
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


def test_consecutive_pairs_follow_time_order_within_users():
    users = np.array(["a", "a", "b", "a", "b"])
    times = np.array([3, 1, 5, 2, 4])
    queries, candidates = consecutive_pairs(users, times, np.arange(5), window=1)
    assert sorted(zip(queries.tolist(), candidates.tolist())) == [(1, 3), (3, 0), (4, 2)]
    queries, _ = consecutive_pairs(users, times, np.arange(5), window=2)
    assert len(queries) == 4  # a: 1->3, 3->0, 1->0; b: 4->2


def test_item2item_pairs_never_cross_the_split(data_dir):
    ratings = towerkit.load_dataset("movielens-100k", source="files")
    pairs = towerkit.load_dataset("movielens-100k-item2item", source="files", window=2)
    train_ratings = set(zip(ratings.interactions["user_id"][ratings.train_rows],
                            ratings.interactions["movie_title"][ratings.train_rows]))
    test_ratings = set(zip(ratings.interactions["user_id"][ratings.test_rows],
                           ratings.interactions["movie_title"][ratings.test_rows]))
    for rows, allowed in ((pairs.train_rows, train_ratings), (pairs.test_rows, test_ratings)):
        users = pairs.interactions["user_id"][rows]
        for key in ("query_movie_title", "movie_title"):
            assert set(zip(users, pairs.interactions[key][rows])) <= allowed
    assert {"query_movie_title", "query_movie_genres", "movie_title"} <= set(pairs.feature_keys)


def test_item_query_tower_shares_the_candidate_tables(data_dir):
    pairs = towerkit.load_dataset("movielens-100k-item2item", source="files")
    model = towerkit.assemble(query={"name": "item-query", "share_with": "candidate"}, candidate="movie", data=pairs)
    batch = _batch(pairs, ["query_movie_title", "movie_title"])
    same = {"query_movie_title": batch["movie_title"], "movie_title": batch["movie_title"]}
    np.testing.assert_allclose(model.query_tower(same).numpy(), model.candidate_tower(same).numpy())
    assert {id(v) for v in model.query_tower.trainable_variables} == {id(v) for v in model.candidate_tower.trainable_variables}
    separate = towerkit.assemble(query="item-query", candidate="movie", data=pairs)
    assert not {id(v) for v in separate.query_tower.trainable_variables} & {id(v) for v in separate.candidate_tower.trainable_variables}


def test_cooccurrence_baseline_counts_training_pairs(data_dir):
    pairs = towerkit.load_dataset("movielens-100k-item2item", source="files")
    results = cooccurrence_topk(pairs, ks=[1, 10, 40])
    # By hand: the best co-occurring candidate of each test query, ties broken by popularity.
    train_q = pairs.interactions["query_movie_title"][pairs.train_rows]
    train_c = pairs.interactions["movie_title"][pairs.train_rows]
    popularity = {t: np.sum(train_c == t) for t in pairs.candidate_ids}
    hits = 0
    for query, truth in zip(pairs.interactions["query_movie_title"][pairs.test_rows],
                            pairs.interactions["movie_title"][pairs.test_rows]):
        scores = {t: np.sum((train_q == query) & (train_c == t)) + popularity[t] / (max(popularity.values()) + 1)
                  for t in pairs.candidate_ids if t != query}
        hits += sum(s > scores[truth] for s in scores.values()) < 1
    assert results.all["top_1"] == pytest.approx(hits / len(pairs.test_rows))
    assert results.all["top_40"] == 1.0  # 40 movies in the fixture, the query left out


def test_item_to_item_recipe_and_similar_command(data_dir, tmp_path):
    output = tmp_path / "i2i"
    result = run_cli("train", "item-to-item", "-o", str(output), "--set", "train.epochs=2",
                     "--set", 'export.example_query="Film 1 (1951)"', "--set", "index.k=6")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics["test"]) == {"model", "popularity", "cooccurrence"}
    similar = run_cli("similar", "Film 1 (1951)", "--model", str(output / "model"), "-k", "5", "--json")
    assert similar.returncode == 0, similar.stderr
    rows = json.loads(similar.stdout)
    assert len(rows) == 5 and all(r["id"] != "Film 1 (1951)" for r in rows)
    too_many = run_cli("similar", "Film 1 (1951)", "--model", str(output / "model"), "-k", "9")
    assert too_many.returncode == 2 and "at most" in too_many.stderr
    # An unknown title is answered (from the shared OOV embedding), with the same warning as `recommend`.
    unknown = run_cli("similar", "No Such Film (2099)", "--model", str(output / "model"), "-k", "3", "--json")
    assert unknown.returncode == 0 and "unknown to this model" in unknown.stderr
    assert len(json.loads(unknown.stdout)) == 3


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
