"""The hashing-trick tower."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from towerkit import Tower, check_positive_int


@tf.keras.utils.register_keras_serializable(package="towerkit_hashing")
class HashingTower(Tower):
    """Embeds string ids through ``Hashing(num_bins)`` and ``Embedding``.

    Collisions share a row; with num_bins well above the number of active ids
    they are rare. Nothing is learned at assembly, so it serves ids it never saw.

    Args:
        feature: The id feature key.
        num_bins: Rows of the embedding table.
        embedding_dim: Width of the embeddings.

    Example:
        >>> tower = towerkit.create_tower("hashing", num_bins=1024, embedding_dim=16)
    """

    def __init__(self, feature: str = "user_id", num_bins: int = 100_000, embedding_dim: int = 32, **kwargs: Any):
        super().__init__(embedding_dim=embedding_dim, **kwargs)
        self.feature = feature
        self.num_bins = check_positive_int(num_bins, "num_bins")
        self.hashing = tf.keras.layers.Hashing(self.num_bins)
        self.embedding = tf.keras.layers.Embedding(self.num_bins, embedding_dim)

    @property
    def feature_keys(self) -> tuple[str, ...]:
        return (self.feature,)

    def call(self, features: Any) -> tf.Tensor:
        return self.embedding(self.hashing(self.select(features)[self.feature]))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "feature": self.feature, "num_bins": self.num_bins}
