"""The base class of every tower."""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from towerkit.errors import ConfigError, FeatureError


class Tower(tf.keras.layers.Layer):
    """A Keras layer from a dict of raw features to embeddings ``[batch, dim]``.

    Subclasses declare the feature keys they read in ``feature_keys``. A tower
    that needs vocabularies learns them in :meth:`adapt` (called at assembly)
    unless they were given to its constructor.

    Args:
        embedding_dim: Width of the output embeddings.
        **kwargs: Passed to ``tf.keras.layers.Layer``.
    """

    def __init__(self, embedding_dim: int = 32, **kwargs: Any):
        super().__init__(**kwargs)
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")

    @property
    def feature_keys(self) -> tuple[str, ...]:
        """The feature keys this tower reads."""
        raise NotImplementedError("a Tower subclass must define feature_keys")

    @property
    def is_adapted(self) -> bool:
        return True

    def adapt(self, features: Mapping[str, Any]) -> None:
        """Learns what the tower needs from data (e.g. vocabularies).

        Args:
            features: A mapping from feature key to a NumPy array of all values
                seen in training (and, for candidates, the candidate set).
        """

    def select(self, features: Any) -> Mapping[str, tf.Tensor]:
        """Returns the tower's inputs as a dict; a bare tensor feeds its only feature."""
        if isinstance(features, Mapping):
            missing = [k for k in self.feature_keys if k not in features]
            if missing:
                raise FeatureError(
                    f"tower '{self.name}' needs feature(s) {', '.join(missing)}, but the input "
                    f"has only {', '.join(sorted(features)) or '(none)'}; pass a dict with those keys."
                )
            return {k: features[k] for k in self.feature_keys}
        if len(self.feature_keys) != 1:
            raise FeatureError(
                f"tower '{self.name}' reads {len(self.feature_keys)} features "
                f"({', '.join(self.feature_keys)}), so it needs a dict, not a single tensor."
            )
        return {self.feature_keys[0]: features}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["embedding_dim"] = self.embedding_dim
        return config


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}; pass e.g. {name}=32.")
    return value
