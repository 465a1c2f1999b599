"""A tower over one string id feature: StringLookup followed by Embedding."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from towerkit.errors import ConfigError
from towerkit.towers.base import Tower, check_positive_int
from towerkit.towers.memory import check_weights_fit


def unique_strings(values: Any) -> list[str]:
    """Sorted unique values as ``str``, the way the seed builds its vocabularies."""
    array = np.asarray(values).reshape(-1)
    array = np.unique(array)
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array]


@tf.keras.utils.register_keras_serializable(package="towerkit")
class IdEmbeddingTower(Tower):
    """Embeds a string id: ``StringLookup(vocabulary)`` then ``Embedding``.

    Unknown ids map to a shared out-of-vocabulary row, so a new user still gets
    a defined (learned OOV) embedding.

    With ``item_bias`` the output gains one last column, a learned scalar per
    id (zero at the start, not L2-penalised). Paired with a query tower whose
    last column is a constant 1 (``HistoryTower(item_bias=True)``), the dot
    product becomes ``q . c + b_id``: each candidate gets its own additive
    score, such as its popularity, without spending embedding width on it.

    Args:
        feature: The feature key to read.
        vocabulary: The known ids; if omitted, :meth:`adapt` learns them.
        embedding_dim: Width of the embeddings.
        num_oov_buckets: Rows reserved for unknown ids.
        l2: L2 penalty on the embeddings of each batch (0 for none).
        item_bias: Append a learned per-id bias as a last column (the output is
            ``embedding_dim + 1`` wide; the other tower must match it).
        **kwargs: Passed to ``tf.keras.layers.Layer``.

    Example:
        >>> tower = IdEmbeddingTower("user_id", vocabulary=["1", "2"], embedding_dim=4)
        >>> tower({"user_id": tf.constant(["2", "unknown"])}).shape
        TensorShape([2, 4])
    """

    def __init__(
        self,
        feature: str,
        vocabulary: Sequence[str] | None = None,
        embedding_dim: int = 32,
        num_oov_buckets: int = 1,
        l2: float = 0.0,
        item_bias: bool = False,
        **kwargs: Any,
    ):
        super().__init__(embedding_dim=embedding_dim, **kwargs)
        if not isinstance(item_bias, bool):
            raise ConfigError(f"item_bias must be true or false, got {item_bias!r}.")
        self.item_bias = item_bias
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or l2 < 0:
            raise ConfigError(f"l2 must be a non-negative number, got {l2!r}.")
        self.l2 = float(l2)
        if not isinstance(feature, str) or not feature:
            raise ConfigError(f"feature must be a non-empty string, got {feature!r}.")
        self.feature = feature
        self.num_oov_buckets = check_positive_int(num_oov_buckets, "num_oov_buckets")
        # The OOV rows alone must fit; the vocabulary is checked when it is known.
        larger = "num_oov_buckets" if self.num_oov_buckets > self.embedding_dim else "embedding_dim"
        check_weights_fit(self.num_oov_buckets, self.embedding_dim, larger, f"tower '{self.component_name}'")
        self.vocabulary: list[str] | None = None
        self.lookup = None
        self.embedding = None
        self.bias_embedding = None
        if vocabulary is not None:
            self._build_layers(list(vocabulary))

    @property
    def feature_keys(self) -> tuple[str, ...]:
        return (self.feature,)

    @property
    def is_adapted(self) -> bool:
        return self.vocabulary is not None

    @property
    def output_dim(self) -> int:
        return self.embedding_dim + 1 if self.item_bias else self.embedding_dim

    def adapt(self, features: Mapping[str, Any]) -> None:
        if self.vocabulary is None:
            self._build_layers(unique_strings(features[self.feature]))

    def _build_layers(self, vocabulary: list[str]) -> None:
        if not vocabulary:
            raise ConfigError(f"tower '{self.component_name}' got an empty vocabulary for '{self.feature}'.")
        check_weights_fit(len(vocabulary) + self.num_oov_buckets, self.embedding_dim, "embedding_dim",
                          f"tower '{self.component_name}' ({len(vocabulary):,} ids of '{self.feature}')")
        # Not tracked by Keras: a tracked list is walked element by element each time the model's
        # losses or layers are listed (every trace), minutes for 10M ids; it holds no weights.
        object.__setattr__(self, "vocabulary", vocabulary)
        self.lookup = tf.keras.layers.StringLookup(
            # An object array (8 bytes an id, the same str objects): Keras would track a list and walk it.
            vocabulary=np.array(vocabulary, dtype=object),
            mask_token=None,
            num_oov_indices=self.num_oov_buckets,
            name="lookup",
        )
        self.embedding = tf.keras.layers.Embedding(
            len(vocabulary) + self.num_oov_buckets, self.embedding_dim, name="embedding"
        )
        if self.item_bias:
            self.bias_embedding = tf.keras.layers.Embedding(
                len(vocabulary) + self.num_oov_buckets, 1, embeddings_initializer="zeros", name="item_bias"
            )

    def call(self, features: Any) -> tf.Tensor:
        if self.lookup is None:
            raise ConfigError(
                f"tower '{self.component_name}' has no vocabulary yet; pass vocabulary= or assemble it "
                "with data so it can adapt."
            )
        indices = self.lookup(self.select(features)[self.feature])
        embeddings = self.embedding(indices)
        if self.l2:
            # Penalising the rows a batch uses (not the whole table) regularises
            # frequent ids more, like weight decay applied per occurrence.
            self.add_loss(self.l2 * tf.reduce_sum(tf.square(embeddings)))
        if self.item_bias:
            return tf.concat([embeddings, self.bias_embedding(indices)], axis=-1)
        return embeddings

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            feature=self.feature,
            vocabulary=self.vocabulary,
            num_oov_buckets=self.num_oov_buckets,
            l2=self.l2,
            item_bias=self.item_bias,
        )
        return config
