"""The base class of every tower, and the tower contract.

The contract (``towerkit.testing.check_tower_contract`` checks it, and
``towerkit.assemble`` probes it with a real batch):

* ``call(features)`` takes a dict of raw feature tensors ``[batch]`` and
  returns a float tensor ``[batch, embedding_dim]``: rank 2, as wide as the
  ``embedding_dim`` given to the constructor, and as wide as the other tower;
* ``feature_keys`` names every feature ``call`` reads (assembly checks them
  against the dataset);
* ``get_config`` records every constructor argument, so that
  ``type(tower).from_config(tower.get_config())`` rebuilds it;
* a tower that learns from data (a vocabulary) does it in ``adapt``, which
  assembly calls with every value of every feature.
"""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from towerkit.errors import FeatureError
from towerkit.validation import check_positive_int

__all__ = ["Tower", "check_positive_int"]


class Tower(tf.keras.layers.Layer):
    """A Keras layer from a dict of raw features to embeddings ``[batch, embedding_dim]``.

    Subclasses declare the feature keys they read in ``feature_keys``, and
    implement ``call`` and ``get_config`` (see the module docstring for the
    whole contract). A tower that needs vocabularies learns them in
    :meth:`adapt` (called at assembly) unless they were given to its
    constructor.

    Attributes:
        embedding_dim: Width of the output embeddings.
        registered_name: The name it was built by (e.g. ``"bag-of-ids"``), set
            by the registry; None for a tower built directly.

    Args:
        embedding_dim: Width of the output embeddings.
        **kwargs: Passed to ``tf.keras.layers.Layer``.
    """

    registered_name: str | None = None

    def __init__(self, embedding_dim: int = 32, **kwargs: Any):
        super().__init__(**kwargs)
        self.embedding_dim = check_positive_int(embedding_dim, "embedding_dim")

    @property
    def feature_keys(self) -> tuple[str, ...]:
        """The feature keys this tower reads."""
        raise NotImplementedError("a Tower subclass must define feature_keys")

    @property
    def output_dim(self) -> int:
        """Width of the output: ``embedding_dim``, unless a subclass projects to another width."""
        return self.embedding_dim

    @property
    def component_name(self) -> str:
        """The name to show users: the registered name if it was built by name, else the Keras layer name."""
        return self.registered_name or self.name

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
                    f"tower '{self.component_name}' needs feature(s) {', '.join(missing)}, but the input "
                    f"has only {', '.join(sorted(features)) or '(none)'}; pass a dict with those keys."
                )
            return {k: features[k] for k in self.feature_keys}
        if len(self.feature_keys) != 1:
            raise FeatureError(
                f"tower '{self.component_name}' reads {len(self.feature_keys)} features "
                f"({', '.join(self.feature_keys)}), so it needs a dict, not a single tensor."
            )
        return {self.feature_keys[0]: features}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["embedding_dim"] = self.embedding_dim
        return config

