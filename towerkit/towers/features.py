"""Building blocks for feature towers: each turns one raw feature into ``[batch, dim]``."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from towerkit.towers.id_embedding import unique_strings
from towerkit.towers.memory import check_weights_fit


def _as_strings(values: tf.Tensor) -> tf.Tensor:
    if values.dtype == tf.string:
        return values
    if values.dtype == tf.bool:
        return tf.where(values, "true", "false")
    if values.dtype.is_floating:
        values = tf.cast(tf.round(values), tf.int64)
    return tf.strings.as_string(values)


def _numpy_strings(values: Any, prefix: int | None = None) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.dtype == bool:
        strings = np.where(array, "true", "false")
    elif np.issubdtype(array.dtype, np.floating):
        strings = np.round(array).astype(np.int64).astype(str)
    else:
        strings = array.astype(str)
    if prefix:
        strings = np.array([s[:prefix] for s in strings])
    return strings


@tf.keras.utils.register_keras_serializable(package="towerkit")
class CategoryEmbedding(tf.keras.layers.Layer):
    """One categorical feature of any dtype (ids, labels, bools, bucketed floats) -> embedding.

    Args:
        feature: The feature key.
        embedding_dim: Output width.
        vocabulary: Known values as strings; learned by :meth:`adapt` if None.
        prefix: Keep only the first ``prefix`` characters (e.g. zip code regions).
    """

    def __init__(self, feature: str, embedding_dim: int, vocabulary: Sequence[str] | None = None,
                 prefix: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.feature, self.embedding_dim, self.prefix = feature, embedding_dim, prefix
        self.vocabulary = None if vocabulary is None else list(vocabulary)
        if self.vocabulary is not None:
            self._build_layers()

    def adapt(self, values: Any) -> None:
        if self.vocabulary is None:
            self.vocabulary = unique_strings(_numpy_strings(values, self.prefix))
            self._build_layers()

    def _build_layers(self) -> None:
        check_weights_fit(len(self.vocabulary) + 1, self.embedding_dim, "embedding_dim",
                          f"the '{self.feature}' embedding ({len(self.vocabulary):,} values)")
        self.lookup = tf.keras.layers.StringLookup(vocabulary=self.vocabulary, mask_token=None)
        self.embedding = tf.keras.layers.Embedding(len(self.vocabulary) + 1, self.embedding_dim)

    def call(self, values: tf.Tensor) -> tf.Tensor:
        strings = _as_strings(values)
        if self.prefix:
            strings = tf.strings.substr(strings, 0, self.prefix)
        return self.embedding(self.lookup(strings))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "feature": self.feature, "embedding_dim": self.embedding_dim,
                "vocabulary": self.vocabulary, "prefix": self.prefix}


@tf.keras.utils.register_keras_serializable(package="towerkit")
class MultiCategoryEmbedding(tf.keras.layers.Layer):
    """A list of integer labels per example (e.g. genres) -> mean of their embeddings.

    Args:
        feature: The feature key (a ragged or padded int tensor).
        num_categories: Label ids are in ``[0, num_categories)``.
        embedding_dim: Output width.
    """

    def __init__(self, feature: str, num_categories: int, embedding_dim: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.feature, self.num_categories, self.embedding_dim = feature, num_categories, embedding_dim
        # Row 0 is padding, so label i uses row i + 1.
        larger = "num_categories" if num_categories > embedding_dim else "embedding_dim"
        check_weights_fit(num_categories + 1, embedding_dim, larger, f"the '{feature}' label embedding")
        self.embedding = tf.keras.layers.Embedding(num_categories + 1, embedding_dim)

    def call(self, labels: Any) -> tf.Tensor:
        if isinstance(labels, tf.RaggedTensor):
            rows = tf.clip_by_value(labels + 1, 0, self.num_categories)
            embedded = tf.ragged.map_flat_values(self.embedding, rows)
            pooled = tf.reduce_mean(embedded, axis=1)
            return tf.where(tf.math.is_nan(pooled), tf.zeros_like(pooled), pooled)
        labels = tf.convert_to_tensor(labels)
        if labels.shape.rank == 1:
            labels = labels[:, None]
        rows = tf.clip_by_value(tf.cast(labels, tf.int64) + 1, 0, self.num_categories)
        mask = tf.cast(labels >= 0, tf.float32)[..., None]
        total = tf.reduce_sum(self.embedding(rows) * mask, axis=1)
        return total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "feature": self.feature, "num_categories": self.num_categories,
                "embedding_dim": self.embedding_dim}


@tf.keras.utils.register_keras_serializable(package="towerkit")
class TextEmbedding(tf.keras.layers.Layer):
    """Free text (e.g. titles) -> mean of its word embeddings (TextVectorization + Embedding).

    Args:
        feature: The feature key.
        embedding_dim: Output width.
        max_tokens: Vocabulary size cap.
        vocabulary: Known words; learned by :meth:`adapt` if None.
    """

    def __init__(self, feature: str, embedding_dim: int, max_tokens: int = 10_000,
                 vocabulary: Sequence[str] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.feature, self.embedding_dim, self.max_tokens = feature, embedding_dim, max_tokens
        # The word table has at most max_tokens rows (padding and OOV included).
        check_weights_fit(max_tokens, embedding_dim, "embedding_dim", f"the '{feature}' word embedding")
        self.vocabulary = None if vocabulary is None else list(vocabulary)
        if self.vocabulary is not None:
            self._build_layers()

    def adapt(self, values: Any) -> None:
        if self.vocabulary is None:
            vectorizer = tf.keras.layers.TextVectorization(max_tokens=self.max_tokens)
            vectorizer.adapt(tf.constant(np.unique(np.asarray(values).astype(str))))
            # The first two entries are the padding and OOV tokens, which the layer adds itself.
            self.vocabulary = [str(t) for t in vectorizer.get_vocabulary()[2:]]
            self._build_layers()

    def _build_layers(self) -> None:
        self.vectorizer = tf.keras.layers.TextVectorization(vocabulary=self.vocabulary or ["[empty]"])
        self.embedding = tf.keras.layers.Embedding(len(self.vocabulary) + 2, self.embedding_dim, mask_zero=True)
        self.pooling = tf.keras.layers.GlobalAveragePooling1D()

    def call(self, text: tf.Tensor) -> tf.Tensor:
        tokens = self.vectorizer(text)
        return self.pooling(self.embedding(tokens), mask=tf.not_equal(tokens, 0))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "feature": self.feature, "embedding_dim": self.embedding_dim,
                "max_tokens": self.max_tokens, "vocabulary": self.vocabulary}


@tf.keras.utils.register_keras_serializable(package="towerkit")
class TimestampEmbedding(tf.keras.layers.Layer):
    """A Unix timestamp -> embedding of its quantile bucket.

    Args:
        feature: The feature key.
        embedding_dim: Output width.
        num_buckets: Number of quantile buckets.
        boundaries: Bucket boundaries; learned by :meth:`adapt` if None.
    """

    def __init__(self, feature: str, embedding_dim: int, num_buckets: int = 100,
                 boundaries: Sequence[float] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.feature, self.embedding_dim, self.num_buckets = feature, embedding_dim, num_buckets
        self.boundaries = None if boundaries is None else [float(b) for b in boundaries]
        check_weights_fit(num_buckets + 1, embedding_dim, "embedding_dim", f"the '{feature}' time embedding")
        self.embedding = tf.keras.layers.Embedding(num_buckets + 1, embedding_dim)

    def adapt(self, values: Any) -> None:
        if self.boundaries is None:
            quantiles = np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, self.num_buckets + 1)[1:-1])
            self.boundaries = [float(b) for b in np.unique(quantiles)]

    def call(self, values: tf.Tensor) -> tf.Tensor:
        buckets = tf.raw_ops.Bucketize(input=tf.cast(values, tf.float64), boundaries=self.boundaries)
        return self.embedding(buckets)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "feature": self.feature, "embedding_dim": self.embedding_dim,
                "num_buckets": self.num_buckets, "boundaries": self.boundaries}
