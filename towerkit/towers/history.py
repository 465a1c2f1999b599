"""A query tower over the query's history: the items it met before, pooled into one embedding.

The history is an input feature (a list of item ids per query, such as the
``movie_history`` that ``movielens-100k`` adds with ``history_length``), so at
serving time any user, even one never seen in training, gets recommendations
from the items they name, without retraining.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from towerkit.errors import ConfigError
from towerkit.towers.base import Tower, check_positive_int
from towerkit.towers.memory import check_weights_fit

POOLINGS = ("mean", "attention", "gru")


def _flat_ints(values: Any) -> np.ndarray:
    """Every id in a column of id lists, as one int64 array."""
    arrays = [np.asarray(v, dtype=np.int64).reshape(-1) for v in values]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)


@tf.keras.utils.register_keras_serializable(package="towerkit")
class HistoryTower(Tower):
    """Embeds each item of the history, keeps the last ``max_length``, and pools them.

    ``mean`` averages the item embeddings; ``attention`` weights each item by
    a learned softmax over its embedding and its recency. A learned bias is
    added, so an empty history still gets a defined (popularity-like) embedding.
    Unknown item ids share one out-of-vocabulary row.

    With ``item_bias`` the output gains a last column that is always 1: the
    slot that multiplies a candidate tower's learned per-item bias (the
    ``movie`` tower's ``item_bias``), so scores are ``q . c + b_item``. From a
    few items of history, how popular a candidate is carries much of the
    signal; the bias learns it apart from the embedding.

    Args:
        feature: The history feature: a ragged list of int64 item ids per query.
        vocabulary: The known item ids; if omitted, :meth:`adapt` learns them.
        embedding_dim: Width of the embeddings.
        max_length: Only the last ``max_length`` items of each history are read.
        pooling: ``"mean"``, ``"attention"`` or ``"gru"`` (a GRU reads the history
            oldest first; its last state, after the most recent item, is the output).
        l2: L2 penalty on the item embeddings each batch uses (0 for none).
        item_bias: Append a constant 1 as a last column (the output is
            ``embedding_dim + 1`` wide), for a candidate tower with a per-item bias.
        item_key: The candidate-table column whose values the history's ids
            are (``movie_id`` for ``movielens-100k``); the model's
            ``self_score_penalty`` finds each history item's candidate row by it.
        **kwargs: Passed to ``tf.keras.layers.Layer``.

    Example:
        >>> tower = HistoryTower(vocabulary=[1, 2, 3], embedding_dim=4)
        >>> tower({"movie_history": tf.ragged.constant([[1, 3], []], dtype=tf.int64)}).shape
        TensorShape([2, 4])
    """

    def __init__(self, feature: str = "movie_history", vocabulary: Sequence[int] | None = None,
                 embedding_dim: int = 32, max_length: int = 50, pooling: str = "mean", l2: float = 0.0,
                 item_bias: bool = False, item_key: str = "movie_id", **kwargs: Any):
        super().__init__(embedding_dim=embedding_dim, **kwargs)
        if not isinstance(item_bias, bool):
            raise ConfigError(f"item_bias must be true or false, got {item_bias!r}.")
        self.item_bias = item_bias
        if not isinstance(feature, str) or not feature:
            raise ConfigError(f"feature must be a non-empty string, got {feature!r}.")
        if not isinstance(item_key, str) or not item_key:
            raise ConfigError(f"item_key must be a non-empty string (a candidate column), got {item_key!r}.")
        self.item_key = item_key
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}.")
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or l2 < 0:
            raise ConfigError(f"l2 must be a non-negative number, got {l2!r}.")
        self.feature, self.pooling, self.l2 = feature, pooling, float(l2)
        self.max_length = check_positive_int(max_length, "max_length")
        self.vocabulary: list[int] | None = None
        self.bias = self.add_weight(name="bias", shape=(self.embedding_dim,), initializer="zeros")
        if pooling == "gru":
            self.gru = tf.keras.layers.GRU(self.embedding_dim, name="gru")
        if pooling == "attention":
            self.attention = tf.keras.layers.Dense(1, name="attention")
            self.recency = tf.keras.layers.Embedding(self.max_length, 1, embeddings_initializer="zeros", name="recency")
        if vocabulary is not None:
            self._build_layers([int(v) for v in vocabulary])

    @property
    def feature_keys(self) -> tuple[str, ...]:
        return (self.feature,)

    @property
    def is_adapted(self) -> bool:
        return self.vocabulary is not None

    @property
    def pools_additively(self) -> bool:
        """Whether the query is a weighted sum of item embeddings (mean, attention), not a GRU's mix of them."""
        return self.pooling != "gru"

    @property
    def output_dim(self) -> int:
        return self.embedding_dim + 1 if self.item_bias else self.embedding_dim

    def adapt(self, features: Mapping[str, Any]) -> None:
        if self.vocabulary is None:
            self._build_layers(np.unique(_flat_ints(features[self.feature])).tolist())

    def _build_layers(self, vocabulary: list[int]) -> None:
        if not vocabulary:
            raise ConfigError(f"tower '{self.component_name}' found no item ids in '{self.feature}'; "
                              "the histories are all empty (is history_length set on the dataset?).")
        check_weights_fit(len(vocabulary) + 1, self.embedding_dim, "embedding_dim",
                          f"tower '{self.component_name}' ({len(vocabulary):,} ids of '{self.feature}')")
        self.vocabulary = vocabulary
        self.lookup = tf.keras.layers.IntegerLookup(vocabulary=np.array(vocabulary, dtype=np.int64),
                                                    mask_token=None, num_oov_indices=1, name="lookup")
        self.embedding = tf.keras.layers.Embedding(len(vocabulary) + 1, self.embedding_dim, name="embedding")

    def item_embeddings(self, ids: tf.Tensor) -> tf.Tensor:
        """The embedding of each item id before pooling (unknown ids share the out-of-vocabulary row)."""
        return self.embedding(self.lookup(tf.cast(ids, tf.int64)))

    def history_ids(self, features: Any) -> tf.RaggedTensor:
        """The item ids this tower reads from ``features``: each row's last ``max_length``, oldest first."""
        ids = self.select(features)[self.feature]
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(tf.convert_to_tensor(ids))
        ids = tf.cast(ids, tf.int64)
        # The last max_length items of each row (oldest first), however long the row is.
        lengths = ids.row_lengths()
        keep = tf.minimum(lengths, self.max_length)
        starts = ids.row_starts() + lengths - keep
        positions = tf.ragged.range(starts, starts + keep)
        return tf.RaggedTensor.from_row_lengths(tf.gather(ids.flat_values, positions.flat_values), keep)

    def call(self, features: Any) -> tf.Tensor:
        if self.vocabulary is None:
            raise ConfigError(f"tower '{self.component_name}' has no vocabulary yet; pass vocabulary= or "
                              "assemble it with data so it can adapt.")
        history = self.history_ids(features)
        embedded = tf.ragged.map_flat_values(self.item_embeddings, history)
        if self.l2:
            self.add_loss(self.l2 * tf.reduce_sum(tf.square(embedded.flat_values)))
        if self.pooling == "mean":
            counts = tf.cast(tf.maximum(history.row_lengths(), 1), embedded.dtype)[:, None]
            pooled = tf.reduce_sum(embedded, axis=1) / counts
        elif self.pooling == "gru":
            # Padded on the right and masked, so each row's state stops at its own last item;
            # an empty history leaves the zero state (the bias then stands for "nothing yet").
            lengths = history.row_lengths()
            padded = embedded.to_tensor(shape=[None, self.max_length, self.embedding_dim])
            pooled = self.gru(padded, mask=tf.sequence_mask(lengths, self.max_length))
        else:
            # Position from the end (0 = most recent) lets attention prefer recent items.
            lengths = history.row_lengths()
            from_end = tf.ragged.range(lengths - 1, -1, -1)
            logits = (tf.ragged.map_flat_values(lambda e: tf.squeeze(self.attention(e), -1), embedded)
                      + tf.ragged.map_flat_values(lambda p: tf.squeeze(self.recency(p), -1), from_end))
            weights = tf.exp(logits - tf.reduce_max(logits, axis=1)[:, None])
            weights = weights / tf.maximum(tf.reduce_sum(weights, axis=1)[:, None], 1e-12)
            pooled = tf.reduce_sum(embedded * tf.expand_dims(weights, -1), axis=1)
        pooled = pooled + self.bias
        if self.item_bias:
            return tf.concat([pooled, tf.ones_like(pooled[:, :1])], axis=-1)
        return pooled

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(feature=self.feature, vocabulary=self.vocabulary, max_length=self.max_length,
                      pooling=self.pooling, l2=self.l2, item_bias=self.item_bias,
                      item_key=self.item_key)
        return config
