"""Item-to-item: consecutive pairs, the split, shared tables, the co-occurrence baseline, `similar`."""

import json

import numpy as np
import pytest

import towerkit
from towerkit.datasets.item2item import consecutive_pairs
from towerkit.evaluation import cooccurrence_topk

from conftest import run_cli


def _batch(data, keys, n=6):
    columns = data.test_features(keys)
    return {k: v[:n] for k, v in columns.items()}


def _ragged(batch):
    from towerkit.datasets.base import to_tf_dataset

    return next(iter(to_tf_dataset(batch).batch(len(next(iter(batch.values()))))))




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
