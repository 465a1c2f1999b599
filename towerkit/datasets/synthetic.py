"""A generated dataset with latent structure, using MovieLens' feature keys."""

from __future__ import annotations

import numpy as np

from towerkit.datasets.base import RetrievalDataset, seed_split
from towerkit.datasets.splits import carve_validation, check_validation_fraction
from towerkit.errors import ConfigError
from towerkit.towers.base import check_positive_int


def _ids(prefix: str, count: int) -> np.ndarray:
    """``prefix + str(i)`` for i < count, in the narrowest unicode dtype (not numpy's 21 digits a number)."""
    return np.char.add(prefix, np.arange(count).astype(f"<U{len(str(max(count - 1, 0)))}"))


def _generate(rng: np.random.Generator, num_users: int, num_items: int, num_interactions: int, latent_dim: int,
              num_genres: int, popularity_exponent: float, temperature: float, num_sampled: int) -> tuple:
    """Latent users and genre-clustered items; each interaction keeps the best of popularity-drawn items."""
    user_vectors = rng.normal(size=(num_users, latent_dim)).astype(np.float32)
    genre_centres = rng.normal(size=(num_genres, latent_dim)).astype(np.float32)
    item_genres = rng.integers(0, num_genres, size=num_items)
    item_vectors = genre_centres[item_genres] + 0.5 * rng.normal(size=(num_items, latent_dim))
    item_vectors = (item_vectors / np.sqrt(latent_dim)).astype(np.float32)
    popularity = 1.0 / np.arange(1, num_items + 1) ** popularity_exponent
    popularity = rng.permutation(popularity / popularity.sum())
    cumulative = np.cumsum(popularity)

    users = rng.integers(0, num_users, size=num_interactions)
    items = np.empty(num_interactions, dtype=np.int64)
    chunk = max(1, 4_000_000 // num_sampled)
    for start in range(0, num_interactions, chunk):
        stop = min(start + chunk, num_interactions)
        draws = np.minimum(np.searchsorted(cumulative, rng.random((stop - start, num_sampled))), num_items - 1)
        affinity = np.einsum("nd,nsd->ns", user_vectors[users[start:stop]], item_vectors[draws])
        affinity = affinity / temperature + rng.gumbel(size=affinity.shape)
        items[start:stop] = draws[np.arange(stop - start), affinity.argmax(axis=1)]
    return user_vectors, item_vectors, item_genres, users, items


class SyntheticDataset(RetrievalDataset):
    """Users and items with latent vectors; users pick items they are close to.

    Each interaction draws a user uniformly, then ``num_sampled`` items from a
    Zipf-like popularity distribution, and keeps the one with the highest
    ``<user, item> / temperature + Gumbel noise``. So there is both a
    popularity signal and a personal one for a model to learn. Features use
    MovieLens' keys (``user_id``, ``movie_title``, ``movie_id``,
    ``movie_genres``, ``timestamp``, ``user_rating``), so every tower and
    recipe runs on it unchanged.

    Args:
        num_users: Number of users.
        num_items: Number of items (all are candidates).
        num_interactions: Number of (user, item) interactions.
        latent_dim: Width of the hidden user and item vectors.
        num_genres: Items are clustered into this many genres.
        popularity_exponent: Zipf exponent of item popularity (0 = uniform).
        temperature: Lower means users follow their taste more strictly.
        num_sampled: Items considered per interaction.
        seed: Seeds generation and the split.
        train_fraction: Share of interactions used for training.
        genres: Also give each interaction its item's genre list (a Python list per
            row; turn off for tens of millions of interactions).
        validation_fraction: Share of all interactions carved from train (never from
            test) as ``validation_rows``; the test rows do not change.

    Example:
        >>> data = towerkit.load_dataset("synthetic", num_users=100, num_items=50,
        ...                              num_interactions=2_000)
    """

    name = "synthetic"

    def __init__(
        self,
        num_users: int = 1_000,
        num_items: int = 500,
        num_interactions: int = 50_000,
        latent_dim: int = 8,
        num_genres: int = 10,
        popularity_exponent: float = 0.8,
        temperature: float = 0.3,
        num_sampled: int = 32,
        seed: int = 42,
        train_fraction: float = 0.8,
        genres: bool = True,
        validation_fraction: float = 0.0,
    ):
        for value, name in (
            (num_users, "num_users"),
            (num_items, "num_items"),
            (num_interactions, "num_interactions"),
            (latent_dim, "latent_dim"),
            (num_genres, "num_genres"),
            (num_sampled, "num_sampled"),
        ):
            check_positive_int(value, name)
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature!r}.")
        rng = np.random.default_rng(seed)
        user_vectors, item_vectors, item_genres, users, items = _generate(
            rng, num_users, num_items, num_interactions, latent_dim, num_genres, popularity_exponent,
            temperature, num_sampled)
        item_ids = _ids("item ", num_items)
        candidates = {"movie_id": _ids("", num_items), "movie_title": item_ids}
        interactions = {
            # Gathered from one table per id kind: no per-row string building.
            "user_id": _ids("user ", num_users)[users],
            "movie_id": candidates["movie_id"][items],
            "movie_title": item_ids[items],
            "timestamp": np.sort(rng.integers(880_000_000, 890_000_000, size=num_interactions)),
            "user_rating": rng.integers(1, 6, size=num_interactions).astype(np.float32),
        }
        if genres:
            genre_lists = np.empty(num_items, dtype=object)
            genre_lists[:] = [[int(g)] for g in item_genres]
            candidates["movie_genres"] = genre_lists
            interactions["movie_genres"] = genre_lists[items]
        self.user_vectors, self.item_vectors = user_vectors, item_vectors
        if num_interactions <= 1_000_000:
            train_rows, test_rows = seed_split(num_interactions, train_fraction, seed)
        else:
            # tf.data's shuffle buffer would hold every row; a NumPy permutation is as good here.
            order = rng.permutation(num_interactions)
            num_train = int(round(num_interactions * train_fraction))
            train_rows, test_rows = order[:num_train], order[num_train:]
        check_validation_fraction(validation_fraction, train_fraction)
        train_rows, self.validation_rows = carve_validation(train_rows, num_interactions, validation_fraction)
        super().__init__(interactions, candidates, train_rows, test_rows)
