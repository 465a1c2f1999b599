"""Cold items: a candidate tower with item features ranks items that had no training interactions (issue 16)."""

import numpy as np
import pytest
import tensorflow as tf

import towerkit
from towerkit.datasets.base import RetrievalDataset, to_tf_dataset

NUM_GENRES, ITEMS_PER_GENRE, COLD_PER_GENRE = 4, 10, 2


class GenreTaste(RetrievalDataset):
    """Each user likes one genre; the last items of each genre are met only in test (cold items)."""

    name = "genre-taste"

    def __init__(self, num_users: int = 240, per_user: int = 8, seed: int = 0):
        rng = np.random.default_rng(seed)
        num_items = NUM_GENRES * ITEMS_PER_GENRE
        genre_of = np.arange(num_items) // ITEMS_PER_GENRE
        cold = (np.arange(num_items) % ITEMS_PER_GENRE) >= ITEMS_PER_GENRE - COLD_PER_GENRE
        users, items = [], []
        for user in range(num_users):
            liked = np.flatnonzero(genre_of == user % NUM_GENRES)
            users += [f"user {user}"] * per_user
            items += rng.choice(liked, per_user, replace=False).tolist()
        items = np.array(items)
        titles = np.array([f"movie {i}" for i in range(num_items)])
        genres = np.empty(num_items, dtype=object)
        genres[:] = [[int(g)] for g in genre_of]
        interactions = {"user_id": np.array(users), "movie_title": titles[items], "movie_genres": genres[items]}
        super().__init__(interactions, {"movie_title": titles, "movie_genres": genres},
                         np.flatnonzero(~cold[items]), np.flatnonzero(cold[items]))
        self.cold_titles = set(titles[cold].tolist())


def fit(data, candidate: dict, epochs: int = 4, seed: int = 7):
    """A user-id query tower and the given candidate tower, trained briefly with fixed seeds."""
    tf.keras.utils.set_random_seed(seed)
    model = towerkit.assemble(data=data, query={"name": "user", "embedding_dim": 16}, candidate=candidate)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    model.fit(to_tf_dataset(data.train_features(model.feature_keys)).batch(256), epochs=epochs, verbose=0)
    return model


def mean_test_rank(model, data, among: np.ndarray) -> float:
    """Mean over test rows of how many of the ``among`` candidates score above the (cold) positive."""
    query = model.query_tower({"user_id": tf.constant(data.interactions["user_id"][data.test_rows])}).numpy()
    candidates = model.candidate_tower({
        "movie_title": tf.constant(data.candidate_ids),
        "movie_genres": tf.ragged.constant(data.candidate_features["movie_genres"].tolist(), dtype=tf.int64),
    }).numpy()
    scores = query @ candidates.T
    row_of = {title: row for row, title in enumerate(data.candidate_ids.tolist())}
    positive = np.array([row_of[title] for title in data.interactions["movie_title"][data.test_rows].tolist()])
    above = scores[:, among] > scores[np.arange(len(positive)), positive][:, None]
    return float(np.mean(above.sum(axis=1)))


@pytest.fixture(scope="module")
def taste():
    return GenreTaste()


def test_the_fixture_holds_cold_items_out_of_training(taste):
    train_titles = set(taste.interactions["movie_title"][taste.train_rows].tolist())
    assert not train_titles & taste.cold_titles
    assert set(taste.interactions["movie_title"][taste.test_rows].tolist()) == taste.cold_titles


def test_genre_features_rank_cold_items_where_an_id_only_tower_cannot(taste):
    """Cold items share no training row, so only their genre can place them; an id-only tower has nothing to go on.

    Among the 8 cold items a user's positive has 1 of its own genre to lose to (mean rank <= 1 when ranked by
    genre); by chance the mean rank is 3.5.
    """
    with_genres = fit(taste, {"name": "movie", "embedding_dim": 16, "genres": True, "num_genres": NUM_GENRES})
    id_only = fit(taste, {"name": "movie", "embedding_dim": 16})
    cold = np.array([row for row, title in enumerate(taste.candidate_ids.tolist()) if title in taste.cold_titles])
    every = np.arange(len(taste.candidate_ids))
    chance = (len(cold) - 1) / 2
    by_genre, by_id = mean_test_rank(with_genres, taste, cold), mean_test_rank(id_only, taste, cold)
    assert by_genre <= 1.0 < chance and by_genre < by_id
    # Over every candidate too: only the 8 warm items of the user's genre should come first.
    assert mean_test_rank(with_genres, taste, every) < mean_test_rank(id_only, taste, every)
