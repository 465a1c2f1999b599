"""The dataset interface shared by every dataset plugin."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow as tf

from towerkit.errors import ConfigError, FeatureError

Features = dict[str, np.ndarray]


def seed_split(num_examples: int, train_fraction: float = 0.8, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Returns train and test row indices exactly as the TFRS tutorial splits.

    The tutorial calls ``tf.random.set_seed(42)``, then
    ``shuffle(100_000, seed=42, reshuffle_each_iteration=False)`` and takes the
    first 80% for training. A shuffle's order depends only on the seeds, the
    buffer size and the element count, so shuffling row indices gives the same
    permutation without materialising feature dicts through tf.data.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ConfigError(f"train_fraction must be in (0, 1), got {train_fraction!r}.")
    num_train = int(round(num_examples * train_fraction))
    if not 0 < num_train < num_examples:
        # Training and evaluation each need at least one row; tf.data would fail on an empty shuffle.
        raise ConfigError(
            f"the dataset has {num_examples:,} interaction(s), too few to split with train_fraction="
            f"{train_fraction:g} into non-empty train and test parts; use more interactions."
        )
    tf.random.set_seed(seed)
    order = (
        tf.data.Dataset.range(num_examples)
        .shuffle(num_examples, seed=seed, reshuffle_each_iteration=False)
        .batch(num_examples)
        .get_single_element()
        .numpy()
    )
    return order[:num_train], order[num_train:]


def _slice(features: Features, rows: np.ndarray) -> Features:
    return {k: v[rows] for k, v in features.items()}


def _ascii_bytes(values: np.ndarray) -> np.ndarray:
    """A unicode column as fixed-width bytes when it is all ASCII (the same tf.string values).

    TensorFlow converts a NumPy unicode array through a transient about twice
    its size; a bytes array it copies directly (measured at 8M rows: +0.33 GiB
    against none).
    """
    try:
        return values.astype(f"S{max(1, values.itemsize // 4)}")
    except UnicodeEncodeError:
        return values


def to_tf_dataset(features: Mapping[str, Any]) -> tf.data.Dataset:
    """A tf.data.Dataset of feature dicts from column arrays (lists become ragged)."""
    columns = {}
    for key, values in features.items():
        if isinstance(values, np.ndarray) and values.dtype.kind == "U":
            # A tensor first: from_tensor_slices would convert the array through a transient copy.
            columns[key] = tf.constant(_ascii_bytes(values))
        elif isinstance(values, np.ndarray) and values.dtype != object:
            columns[key] = values
        elif isinstance(values, np.ndarray) and len(values) and isinstance(values[0], (str, bytes)):
            columns[key] = tf.constant(_ascii_bytes(values.astype(str)))
        else:
            # Variable-length lists (e.g. genres) become a ragged int64 column, as in tfds.
            lengths = np.array([len(v) for v in values], dtype=np.int64)
            flat = np.concatenate([np.asarray(v, dtype=np.int64) for v in values]) if len(values) else []
            columns[key] = tf.RaggedTensor.from_row_lengths(np.asarray(flat, dtype=np.int64), lengths)
    return tf.data.Dataset.from_tensor_slices(columns)


class RetrievalDataset:
    """Interactions (query, candidate) plus the candidate set, split into train and test.

    The dataset contract (``towerkit.testing.check_dataset_contract`` checks
    it; ``towerkit.assemble`` checks its cheap part): a subclass sets ``name``,
    ``query_id_key`` and ``candidate_id_key`` (the defaults suit MovieLens
    only), and calls this constructor with

    * ``interactions``: a dict of NumPy column arrays, one row per
      interaction, all the same length, holding every feature either tower
      reads and both id keys;
    * ``candidate_features``: a dict of NumPy column arrays, one row per
      candidate (each id once), holding the candidate id key and every
      feature the candidate tower reads; every test interaction's candidate
      is among them;
    * ``train_rows`` and ``test_rows``: disjoint, non-empty 1-D integer
      arrays of row indices into ``interactions``.

    Its constructor's keyword arguments are the recipe's ``[dataset]`` keys.

    Attributes:
        name: The registered name.
        query_id_key: The feature that identifies a query (e.g. ``user_id``).
        candidate_id_key: The feature that identifies a candidate (e.g. ``movie_title``).
        interactions: Every interaction, as column arrays.
        candidate_features: The candidate set, as column arrays.
        train_rows, test_rows: Row indices into ``interactions``.
    """

    name = "dataset"
    query_id_key = "user_id"
    candidate_id_key = "movie_title"
    # Baselines the train job reports beside the model (see towerkit.evaluation.BASELINES).
    baselines: tuple[str, ...] = ("popularity",)
    # Item-to-item: the query item is itself a candidate and must not be recommended.
    exclude_query_from_candidates = False

    def __init__(
        self,
        interactions: Features,
        candidate_features: Features,
        train_rows: np.ndarray,
        test_rows: np.ndarray,
    ):
        self.interactions = interactions
        self.candidate_features = candidate_features
        self.train_rows = train_rows
        self.test_rows = test_rows

    # Column views -------------------------------------------------------
    @property
    def feature_keys(self) -> tuple[str, ...]:
        """Every feature key an interaction carries."""
        return tuple(sorted(self.interactions))

    @property
    def candidate_feature_keys(self) -> tuple[str, ...]:
        return tuple(sorted(self.candidate_features))

    def train_features(self, keys: Iterable[str] | None = None) -> Features:
        return _slice(self._columns(keys), self.train_rows)

    def test_features(self, keys: Iterable[str] | None = None) -> Features:
        return _slice(self._columns(keys), self.test_rows)

    def _columns(self, keys: Iterable[str] | None) -> Features:
        if keys is None:
            return self.interactions
        keys = list(dict.fromkeys(keys))
        self.check_features(keys, "the request")
        return {k: self.interactions[k] for k in keys}

    def check_features(self, keys: Iterable[str], who: str) -> None:
        """Raises FeatureError naming any key the interactions lack."""
        missing = [k for k in keys if k not in self.interactions]
        if missing:
            raise FeatureError(
                f"{who} needs feature(s) {', '.join(repr(k) for k in missing)}, which dataset "
                f"'{self.name}' does not have; available keys: {', '.join(self.feature_keys)}."
            )

    # tf.data views, as the tutorial uses them ----------------------------
    @property
    def train(self) -> tf.data.Dataset:
        """Training interactions as a tf.data.Dataset of feature dicts."""
        return to_tf_dataset(self.train_features())

    @property
    def test(self) -> tf.data.Dataset:
        """Test interactions as a tf.data.Dataset of feature dicts."""
        return to_tf_dataset(self.test_features())

    @property
    def candidates(self) -> tf.data.Dataset:
        """The candidate set as a tf.data.Dataset of feature dicts."""
        return to_tf_dataset(self.candidate_features)

    @property
    def candidate_ids(self) -> np.ndarray:
        return self.candidate_features[self.candidate_id_key]

    @property
    def vocabularies(self) -> dict[str, np.ndarray]:
        """Sorted unique values of the id features, as the tutorial computes them.

        Query ids come from all interactions, candidate ids from the candidate set.
        """
        return {
            self.query_id_key: np.unique(self.interactions[self.query_id_key]),
            self.candidate_id_key: np.unique(self.candidate_ids),
        }

    def adapt_features(self) -> dict[str, np.ndarray]:
        """Values a tower may learn vocabularies from, by feature key.

        Query features come from all interactions (as the tutorial's user ids);
        candidate features come from the candidate set joined with interactions.
        """
        values = dict(self.interactions)
        for key, column in self.candidate_features.items():
            values[key] = column
        return values

    def candidate_train_frequencies(self) -> dict[str, float]:
        """Each candidate id's share of the training interactions."""
        ids = self.interactions[self.candidate_id_key][self.train_rows]
        unique, counts = np.unique(ids, return_counts=True)
        total = counts.sum()
        return {str(u): c / total for u, c in zip(unique, counts)}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "interactions": int(len(self.train_rows) + len(self.test_rows)),
            "train": int(len(self.train_rows)),
            "test": int(len(self.test_rows)),
            "queries": int(len(np.unique(self.interactions[self.query_id_key]))),
            "candidates": int(len(self.candidate_ids)),
            "feature_keys": list(self.feature_keys),
        }
