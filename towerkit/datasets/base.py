"""The dataset interface shared by every dataset plugin."""

from __future__ import annotations

from collections import ChainMap
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import tensorflow as tf

from towerkit.errors import ConfigError, FeatureError

Features = dict[str, np.ndarray]


class CodedColumns(Mapping):
    """Interaction columns where some are held as integer codes into a small table of values.

    ``columns[key]`` of a coded key materialises ``table[codes]`` (a new NumPy
    array each time, freed when the caller drops it), so a dataset of 10M
    interactions over 1M string ids holds 4 bytes a row instead of 44 (``<U11``).
    :meth:`take` gathers only the rows asked for.

    Args:
        coded: ``{key: (table, codes)}``: the distinct values and each row's index into them.
        plain: ``{key: column}``: columns held as they are.

    Example:
        >>> columns = CodedColumns({"user_id": (np.array(["a", "b"]), np.array([1, 1, 0]))}, {})
        >>> columns["user_id"].tolist()
        ['b', 'b', 'a']
    """

    def __init__(self, coded: Mapping[str, tuple[Any, np.ndarray]], plain: Mapping[str, np.ndarray]):
        self.coded = dict(coded)
        self.plain = dict(plain)

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self.coded:
            table, codes = self.coded[key]
            return table[codes]
        return self.plain[key]

    def __iter__(self) -> Iterator[str]:
        return iter([*self.coded, *self.plain])

    def __len__(self) -> int:
        return len(self.coded) + len(self.plain)

    def take(self, key: str, rows: np.ndarray) -> np.ndarray:
        """``self[key][rows]`` without materialising the whole column."""
        if key in self.coded:
            table, codes = self.coded[key]
            return table[codes[rows]]
        return self.plain[key][rows]


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


def take_rows(columns: Mapping[str, np.ndarray], key: str, rows: Any) -> np.ndarray:
    """``columns[key][rows]``, gathering only those rows of a coded column (see :class:`CodedColumns`)."""
    return columns.take(key, rows) if isinstance(columns, CodedColumns) else columns[key][rows]


def _slice(features: Mapping[str, np.ndarray], rows: np.ndarray) -> Features:
    return {k: take_rows(features, k, rows) for k in features}


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


def to_tensor(values: Any) -> Any:
    """One column as a tensor: strings as ``tf.string``, lists as a ragged int64 tensor, numbers as they are."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "U":
        # A tensor first: from_tensor_slices would convert the array through a transient copy.
        return tf.constant(_ascii_bytes(values))
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values
    if isinstance(values, np.ndarray) and len(values) and isinstance(values[0], (str, bytes)):
        return tf.constant(_ascii_bytes(values.astype(str)))
    # Variable-length lists (e.g. genres) become a ragged int64 column, as in tfds.
    lengths = np.array([len(v) for v in values], dtype=np.int64)
    flat = np.concatenate([np.asarray(v, dtype=np.int64) for v in values]) if len(values) else []
    return tf.RaggedTensor.from_row_lengths(np.asarray(flat, dtype=np.int64), lengths)


def to_tf_dataset(features: Mapping[str, Any]) -> tf.data.Dataset:
    """A tf.data.Dataset of feature dicts from column arrays (lists become ragged)."""
    return tf.data.Dataset.from_tensor_slices({key: to_tensor(values) for key, values in features.items()})


def coded_batches(columns: CodedColumns, rows: np.ndarray, batch_size: int, shuffle_buffer: int, seed: int,
                  input_context: Any = None) -> tf.data.Dataset:
    """Shuffled batches of feature dicts, gathered from coded columns inside tf.data.

    The same batches, in the same order, as
    ``to_tf_dataset(slices).shuffle(shuffle_buffer, seed).batch(batch_size).cache()``
    (a shuffle's order depends only on its seeds, buffer and element count),
    but only each coded
    column's table and its int32 codes become tensors: no string column of
    every training row is built, sliced or cached.

    Args:
        columns: The columns to batch (every key becomes a feature).
        rows: The row indices to draw from (e.g. the training rows).
        batch_size: Rows per batch (the last may be smaller).
        shuffle_buffer: tf.data's shuffle buffer, capped at the number of rows.
        seed: The shuffle's seed.
        input_context: A ``tf.distribute.InputContext``; its pipeline keeps every n-th batch, each
            of the per-replica size.
    """
    if input_context is not None:
        # Under a multi-replica strategy a pipeline feeds its replicas one per-replica batch at a time.
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    gathered = {}
    for key in columns:
        if key in columns.coded:
            table, codes = columns.coded[key]
            gathered[key] = (to_tensor(table), tf.constant(codes[rows]))
        else:
            gathered[key] = (tf.convert_to_tensor(to_tensor(columns.plain[key][rows])), None)

    @tf.autograph.experimental.do_not_convert  # no Python control flow; AutoGraph misreads the comprehension
    def features(positions: tf.Tensor) -> dict[str, Any]:
        return {key: tf.gather(values, positions if codes is None else tf.gather(codes, positions))
                for key, (values, codes) in gathered.items()}

    # The positions are cached (4 bytes a row), as the feature dicts were: the same order every epoch.
    # (A shuffle's order does not depend on the elements' type.)
    position_type = tf.int32 if len(rows) < 2**31 else tf.int64
    batches = (tf.data.Dataset.range(len(rows), output_type=position_type)
               .shuffle(min(shuffle_buffer, max(1, len(rows))), seed=seed)
               .batch(batch_size)
               .cache())
    if input_context is not None:
        batches = batches.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return batches.map(features, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


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

    @property
    def num_train_rows(self) -> int:
        """How many rows one training epoch has (a streamed dataset holds only a sample of them)."""
        return len(self.train_rows)

    def train_features(self, keys: Iterable[str] | None = None) -> Features:
        return _slice(self._columns(keys), self.train_rows)

    def test_features(self, keys: Iterable[str] | None = None) -> Features:
        return _slice(self._columns(keys), self.test_rows)

    def _columns(self, keys: Iterable[str] | None) -> Mapping[str, np.ndarray]:
        if keys is None:
            return self.interactions
        keys = list(dict.fromkeys(keys))
        self.check_features(keys, "the request")
        if isinstance(self.interactions, CodedColumns):
            # Still coded: _slice gathers only the rows it needs.
            return CodedColumns({k: v for k, v in self.interactions.coded.items() if k in keys},
                                {k: v for k, v in self.interactions.plain.items() if k in keys})
        return {k: self.interactions[k] for k in keys}

    def column(self, key: str, rows: np.ndarray | None = None) -> np.ndarray:
        """One interaction column, or only ``rows`` of it (a coded column gathers just those rows).

        ``data.column(key, rows)`` is ``data.interactions[key][rows]`` without materialising a
        coded column whole first (440 MB for 10M string ids of 11 characters).

        Args:
            key: The feature key.
            rows: Row indices into the interactions; None for every row.

        Example:
            >>> test_users = data.column("user_id", data.test_rows)
        """
        return self.interactions[key] if rows is None else take_rows(self.interactions, key, rows)

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

    def adapt_features(self) -> Mapping[str, np.ndarray]:
        """Values a tower may learn vocabularies from, by feature key.

        Query features come from all interactions (as the tutorial's user ids);
        candidate features come from the candidate set joined with interactions.
        """
        # A view, not a copy: a coded column is materialised only when a tower reads it.
        return ChainMap(dict(self.candidate_features), self.interactions)

    def candidate_train_frequencies(self) -> dict[str, float]:
        """Each candidate id's share of the training interactions."""
        ids = self.column(self.candidate_id_key, self.train_rows)
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
