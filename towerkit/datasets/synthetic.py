"""A generated dataset with latent structure, using MovieLens' feature keys."""

from __future__ import annotations

from collections import ChainMap
from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow as tf

from towerkit.datasets.base import CodedColumns, RetrievalDataset, coded_batches, seed_split
from towerkit.datasets.splits import carve_validation, check_validation_fraction
from towerkit.errors import ConfigError
from towerkit.towers.base import check_positive_int

# A streamed dataset generates its rows in blocks of this many, each from its own stateless seed.
BLOCK_ROWS = 4096
# Validation and test blocks are numbered from here, so none shares a training block's seed.
VALIDATION_BLOCK_OFFSET = 2**40
TEST_BLOCK_OFFSET = 2**41
TIMESTAMP_RANGE = (880_000_000, 890_000_000)


def _ids(prefix: str, count: int) -> np.ndarray:
    """``prefix + str(i)`` for i < count, in the narrowest unicode dtype (not numpy's 21 digits a number)."""
    return _id_strings(prefix, np.arange(count), count)


def _id_strings(prefix: str, codes: np.ndarray, count: int) -> np.ndarray:
    """``prefix + str(code)`` for each code (< count), as ``_ids(prefix, count)[codes]`` is."""
    return np.char.add(prefix, np.asarray(codes).astype(f"<U{len(str(max(count - 1, 0)))}"))


def _latent(rng: np.random.Generator, num_users: int, num_items: int, latent_dim: int, num_genres: int,
            popularity_exponent: float) -> tuple:
    """Latent user vectors, genre-clustered item vectors, item genres and the popularity CDF."""
    user_vectors = rng.normal(size=(num_users, latent_dim)).astype(np.float32)
    genre_centres = rng.normal(size=(num_genres, latent_dim)).astype(np.float32)
    item_genres = rng.integers(0, num_genres, size=num_items)
    item_vectors = genre_centres[item_genres] + 0.5 * rng.normal(size=(num_items, latent_dim))
    item_vectors = (item_vectors / np.sqrt(latent_dim)).astype(np.float32)
    popularity = 1.0 / np.arange(1, num_items + 1) ** popularity_exponent
    popularity = rng.permutation(popularity / popularity.sum())
    return user_vectors, item_vectors, item_genres, np.cumsum(popularity)


def _generate(rng: np.random.Generator, num_users: int, num_items: int, num_interactions: int, latent_dim: int,
              num_genres: int, popularity_exponent: float, temperature: float, num_sampled: int) -> tuple:
    """Latent users and genre-clustered items; each interaction keeps the best of popularity-drawn items."""
    user_vectors, item_vectors, item_genres, cumulative = _latent(
        rng, num_users, num_items, latent_dim, num_genres, popularity_exponent)
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


class _StreamGenerator:
    """Interactions generated in TensorFlow, block by block, each block from a stateless seed.

    Block ``b`` is a pure function of ``(seed, b)``, so a stream is the same
    however it is batched, sharded or restarted, and nothing but the latent
    vectors and the popularity CDF is held.
    """

    def __init__(self, seed: int, user_vectors: np.ndarray, item_vectors: np.ndarray, cumulative: np.ndarray,
                 temperature: float, num_sampled: int):
        self.seed = seed
        self.user_vectors = tf.constant(user_vectors)
        self.item_vectors = tf.constant(item_vectors)
        self.cumulative = tf.constant(cumulative[None, :])
        self.temperature = temperature
        self.num_sampled = num_sampled

    def block(self, block_id: tf.Tensor, rows: tf.Tensor) -> dict[str, tf.Tensor]:
        """``rows`` interactions of block ``block_id``: user and item codes (int32), timestamp, rating."""
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.constant(self.seed, tf.int64), tf.cast(block_id, tf.int64)]), 5)
        num_users = tf.shape(self.user_vectors, out_type=tf.int64)[0]
        num_items = tf.shape(self.item_vectors, out_type=tf.int64)[0]
        users = tf.random.stateless_uniform([rows], seeds[0], 0, num_users, dtype=tf.int64)
        uniform = tf.random.stateless_uniform([1, rows * self.num_sampled], seeds[1], dtype=tf.float64)
        draws = tf.minimum(tf.searchsorted(self.cumulative, uniform, out_type=tf.int64), num_items - 1)
        draws = tf.reshape(draws, [rows, self.num_sampled])
        affinity = tf.einsum("nd,nsd->ns", tf.gather(self.user_vectors, users), tf.gather(self.item_vectors, draws))
        noise = tf.random.stateless_uniform([rows, self.num_sampled], seeds[2], minval=1e-12, maxval=1.0)
        affinity = affinity / self.temperature - tf.math.log(-tf.math.log(noise))  # + Gumbel(0, 1)
        items = tf.gather(draws, tf.argmax(affinity, axis=1), batch_dims=1)
        return {
            "users": tf.cast(users, tf.int32),
            "items": tf.cast(items, tf.int32),
            "timestamp": tf.random.stateless_uniform([rows], seeds[3], *TIMESTAMP_RANGE, dtype=tf.int64),
            "user_rating": tf.cast(tf.random.stateless_uniform([rows], seeds[4], 1, 6, dtype=tf.int64), tf.float32),
        }

    def rows(self, first_block: int, count: int) -> dict[str, np.ndarray]:
        """The first ``count`` rows of the blocks from ``first_block`` on, as NumPy arrays."""
        parts = [self.block(tf.constant(first_block + b, tf.int64), tf.constant(BLOCK_ROWS))
                 for b in range(-(-count // BLOCK_ROWS))]
        return {key: np.concatenate([part[key].numpy() for part in parts])[:count] for key in parts[0]}


class SyntheticDataset(RetrievalDataset):
    """Users and items with latent vectors; users pick items they are close to.

    Each interaction draws a user uniformly, then ``num_sampled`` items from a
    Zipf-like popularity distribution, and keeps the one with the highest
    ``<user, item> / temperature + Gumbel noise``. So there is both a
    popularity signal and a personal one for a model to learn. Features use
    MovieLens' keys (``user_id``, ``movie_title``, ``movie_id``,
    ``movie_genres``, ``timestamp``, ``user_rating``), so every tower and
    recipe runs on it unchanged.

    Ids are held as int32 codes into one table per id kind (``interactions``
    is a :class:`~towerkit.datasets.base.CodedColumns`): reading a column gives
    the same string array as before, made when it is read.

    With ``streamed=True`` the training interactions are never held: they are
    generated in TensorFlow, block by block, as :meth:`train_stream` is read
    (the same rows for the same ``seed``; not the rows the in-memory mode
    makes). ``interactions`` then holds only a sample of ``materialised_rows``
    rows (training and test rows in ``train_fraction`` proportion), which
    evaluation and the baselines use; ``num_train_rows`` is the full epoch.
    Vocabularies cover every user and item id.

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
            item; turn off for tens of millions of items).
        validation_fraction: Share of all interactions carved from train (never from
            test) as ``validation_rows``; the test rows do not change.
        streamed: Generate the training interactions on the fly (see above).
        materialised_rows: In streamed mode, how many rows ``interactions`` holds.

    Example:
        >>> data = towerkit.load_dataset("synthetic", num_users=100, num_items=50,
        ...                              num_interactions=2_000)
        >>> big = towerkit.load_dataset("synthetic", num_users=10_000_000, num_items=10_000_000,
        ...                             num_interactions=100_000_000, genres=False, streamed=True)
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
        streamed: bool = False,
        materialised_rows: int = 100_000,
    ):
        for value, name in (
            (num_users, "num_users"),
            (num_items, "num_items"),
            (num_interactions, "num_interactions"),
            (latent_dim, "latent_dim"),
            (num_genres, "num_genres"),
            (num_sampled, "num_sampled"),
            (materialised_rows, "materialised_rows"),
        ):
            check_positive_int(value, name)
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature!r}.")
        check_validation_fraction(validation_fraction, train_fraction)
        self.num_users, self.num_items, self.streamed = num_users, num_items, bool(streamed)
        rng = np.random.default_rng(seed)
        if self.streamed:
            self._init_streamed(rng, seed, num_interactions, latent_dim, num_genres, popularity_exponent,
                                temperature, num_sampled, train_fraction, genres, validation_fraction,
                                materialised_rows)
            return
        user_vectors, item_vectors, item_genres, users, items = _generate(
            rng, num_users, num_items, num_interactions, latent_dim, num_genres, popularity_exponent,
            temperature, num_sampled)
        # The latent vectors are not kept: nothing reads them once the rows are drawn (64 MB at 1M x 1M).
        del user_vectors, item_vectors
        candidates = self._candidates(item_genres, genres)
        interactions = self._coded(candidates, _ids("user ", num_users), users.astype(np.int32),
                                   items.astype(np.int32), {
                                       "timestamp": np.sort(rng.integers(*TIMESTAMP_RANGE, size=num_interactions)),
                                       "user_rating": rng.integers(1, 6, size=num_interactions).astype(np.float32),
                                   })
        if num_interactions <= 1_000_000:
            train_rows, test_rows = seed_split(num_interactions, train_fraction, seed)
        else:
            # tf.data's shuffle buffer would hold every row; a NumPy permutation is as good here.
            order = rng.permutation(num_interactions)
            if num_interactions < 2**31:
                order = order.astype(np.int32)  # half the bytes; the same rows
            num_train = int(round(num_interactions * train_fraction))
            train_rows, test_rows = order[:num_train], order[num_train:]
        train_rows, self.validation_rows = carve_validation(train_rows, num_interactions, validation_fraction)
        super().__init__(interactions, candidates, train_rows, test_rows)

    def _candidates(self, item_genres: np.ndarray, genres: bool) -> dict[str, np.ndarray]:
        candidates = {"movie_id": _ids("", self.num_items), "movie_title": _ids("item ", self.num_items)}
        if genres:
            genre_lists = np.empty(self.num_items, dtype=object)
            genre_lists[:] = [[int(g)] for g in item_genres]
            candidates["movie_genres"] = genre_lists
        return candidates

    @staticmethod
    def _coded(candidates: Mapping[str, np.ndarray], user_table: np.ndarray, users: np.ndarray, items: np.ndarray,
               plain: dict[str, np.ndarray]) -> CodedColumns:
        """The interaction columns: ids (and genres) as codes into the user table and the candidate set."""
        coded = {"user_id": (user_table, users)}
        coded.update({key: (column, items) for key, column in candidates.items()})
        return CodedColumns(coded, plain)

    def _init_streamed(self, rng: np.random.Generator, seed: int, num_interactions: int, latent_dim: int,
                       num_genres: int, popularity_exponent: float, temperature: float, num_sampled: int,
                       train_fraction: float, genres: bool, validation_fraction: float,
                       materialised_rows: int) -> None:
        """The latent structure and a generator; only a sample of rows is materialised."""
        if not 0.0 < train_fraction < 1.0:
            raise ConfigError(f"train_fraction must be in (0, 1), got {train_fraction!r}.")
        user_vectors, item_vectors, item_genres, cumulative = _latent(
            rng, self.num_users, self.num_items, latent_dim, num_genres, popularity_exponent)
        self._generator = _StreamGenerator(seed, user_vectors, item_vectors, cumulative, temperature, num_sampled)
        self._num_train = int(round(num_interactions * train_fraction))
        self._num_interactions = num_interactions
        if not 0 < self._num_train < num_interactions:
            raise ConfigError(f"the dataset has {num_interactions:,} interaction(s), too few to split with "
                              f"train_fraction={train_fraction:g}; use more interactions.")
        self._item_genres = item_genres
        sample = min(materialised_rows, num_interactions)
        sample_train = min(max(1, int(round(sample * train_fraction))), max(1, sample - 1))
        num_validation = int(round(sample * validation_fraction))
        # The sample's training rows are the stream's first rows; validation and test rows are
        # generated apart, so the stream never trains on them.
        parts = [self._generator.rows(0, sample_train),
                 self._generator.rows(VALIDATION_BLOCK_OFFSET, num_validation) if num_validation else None,
                 self._generator.rows(TEST_BLOCK_OFFSET, max(1, sample - sample_train))]
        rows = {key: np.concatenate([part[key] for part in parts if part is not None]) for key in parts[0]}
        # The sample's users get a table of their own ids (not every user's: 10M strings).
        seen_users, user_codes = np.unique(rows["users"], return_inverse=True)
        candidates = self._candidates(item_genres, genres)
        interactions = self._coded(candidates, _id_strings("user ", seen_users, self.num_users),
                                   user_codes.astype(np.int32), rows["items"],
                                   {"timestamp": rows["timestamp"], "user_rating": rows["user_rating"]})
        bounds = np.cumsum([0, sample_train, num_validation, len(rows["users"]) - sample_train - num_validation])
        self.validation_rows = np.arange(bounds[1], bounds[2])
        super().__init__(interactions, candidates, np.arange(bounds[0], bounds[1]), np.arange(bounds[2], bounds[3]))

    # Streamed mode ----------------------------------------------------------
    @property
    def num_train_rows(self) -> int:
        return self._num_train if self.streamed else len(self.train_rows)

    def train_stream(self, keys: Iterable[str], batch_size: int, *, shuffle_buffer: int, seed: int,
                     input_context: Any = None) -> tf.data.Dataset:
        """One epoch of training batches (feature dicts of ``keys``), built inside tf.data.

        In memory: the batches ``to_tf_dataset(train_features(keys)).shuffle(shuffle_buffer,
        seed).batch(batch_size).cache()`` gives, in the same order, gathered from the id codes
        (no string column of all training rows is made). Streamed: ``num_train_rows`` rows,
        generated block by block; the blocks' order is shuffled with ``seed`` within a window
        of ``shuffle_buffer`` rows (rows within a block are already independent draws).

        Args:
            keys: The features the towers read.
            batch_size: Rows per batch (the last may be smaller).
            shuffle_buffer: Rows the shuffle mixes at once.
            seed: The shuffle's seed.
            input_context: A ``tf.distribute.InputContext``: this pipeline keeps every n-th batch.
        """
        columns = self._columns(keys)
        if not self.streamed:
            return coded_batches(columns, self.train_rows, batch_size, shuffle_buffer, seed, input_context)
        if input_context is not None:
            # Under a multi-replica strategy each pipeline feeds its replicas, a per-replica batch at a time.
            batch_size = input_context.get_per_replica_batch_size(batch_size)
        num_blocks = -(-self._num_train // BLOCK_ROWS)
        blocks = tf.data.Dataset.range(num_blocks).shuffle(
            min(num_blocks, max(1, shuffle_buffer // BLOCK_ROWS)), seed=seed, reshuffle_each_iteration=False)
        last_rows = self._num_train - (num_blocks - 1) * BLOCK_ROWS

        @tf.autograph.experimental.do_not_convert  # no Python control flow to convert
        def block(block_id: tf.Tensor) -> dict[str, tf.Tensor]:
            rows = tf.where(block_id == num_blocks - 1, last_rows, BLOCK_ROWS)
            return self._generator.block(block_id, tf.cast(rows, tf.int32))

        batches = blocks.map(block, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).rebatch(batch_size)
        if input_context is not None:
            batches = batches.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        genres = tf.constant(self._item_genres, tf.int64) if "movie_genres" in columns else None

        @tf.autograph.experimental.do_not_convert
        def features(codes: dict[str, tf.Tensor]) -> dict[str, Any]:
            return self._features(columns, codes, genres)

        return batches.map(features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)

    @staticmethod
    def _features(columns: Mapping[str, Any], codes: Mapping[str, tf.Tensor], genres: Any) -> dict[str, Any]:
        """A generated batch's codes as the features the in-memory mode gives (the same values and dtypes)."""
        users, items = tf.strings.as_string(codes["users"]), tf.strings.as_string(codes["items"])
        values = {"user_id": lambda: tf.strings.join(["user ", users]),
                  "movie_title": lambda: tf.strings.join(["item ", items]),
                  "movie_id": lambda: items,
                  "movie_genres": lambda: tf.RaggedTensor.from_tensor(
                      tf.gather(genres, codes["items"])[:, None]),
                  "timestamp": lambda: codes["timestamp"],
                  "user_rating": lambda: codes["user_rating"]}
        return {key: values[key]() for key in columns}

    def adapt_features(self) -> Mapping[str, np.ndarray]:
        """As every dataset's; streamed, the query ids are every user's (the stream may draw any)."""
        values = super().adapt_features()
        if self.streamed:
            return ChainMap({self.query_id_key: _ids("user ", self.num_users)}, values)
        return values

    @property
    def vocabularies(self) -> dict[str, np.ndarray]:
        if not self.streamed:
            return super().vocabularies
        return {self.query_id_key: np.unique(_ids("user ", self.num_users)),
                self.candidate_id_key: np.unique(self.candidate_ids)}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.streamed:
            info.update(interactions=self._num_interactions, train=self._num_train,
                        test=self._num_interactions - self._num_train, queries=self.num_users, streamed=True,
                        materialised={"train": int(len(self.train_rows)), "test": int(len(self.test_rows))})
        return info
