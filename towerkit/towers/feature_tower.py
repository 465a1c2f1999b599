"""A tower over an id plus side features, combined by sum or by a dense projection."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import tensorflow as tf

from towerkit.errors import ConfigError
from towerkit.towers.base import Tower, check_positive_int
from towerkit.towers.features import CategoryEmbedding, MultiCategoryEmbedding, TextEmbedding, TimestampEmbedding
from towerkit.towers.history import HistoryTower
from towerkit.towers.id_embedding import IdEmbeddingTower
from towerkit.towers.memory import check_weights_fit

COMBINE = ("sum", "concat")


@tf.keras.utils.register_keras_serializable(package="towerkit")
class FeatureTower(Tower):
    """Id embedding plus side-feature embeddings.

    With ``combine="sum"`` every part has ``embedding_dim`` and they are added
    (the output stays ``embedding_dim`` wide). With ``combine="concat"`` the
    parts are concatenated and projected by Dense layers: one to
    ``embedding_dim``, or a deep stack given by ``layers`` (ReLU between, the
    last layer linear; the output is ``layers[-1]`` wide).

    Args:
        id_feature: The id feature key.
        vocabulary: Known ids; learned at assembly if None.
        embedding_dim: Width of each part's embedding.
        categories: Categorical features, one embedding each.
        prefixes: Per categorical feature, keep only this many leading characters.
        multi_categories: List-valued label features and their label counts, mean-pooled.
        texts: Text features, as mean-pooled word embeddings.
        timestamps: Timestamp features, as quantile-bucket embeddings.
        history: A feature holding each query's earlier items (a list of item
            ids, such as ``movie_history``), pooled by a :class:`HistoryTower`
            and added as one more part: the query is then described by who it
            is and by what it met before.
        history_length: Only the last this many items of the history are read.
        history_pooling: ``"mean"``, ``"attention"`` or ``"gru"``.
        combine: ``"sum"`` or ``"concat"``.
        layers: Widths of the Dense stack after concatenation.
        l2: L2 penalty on the id embeddings a batch uses.
        num_oov_buckets: Rows shared by unknown ids.
        state: Learned vocabularies and boundaries, as ``get_config`` records them.
    """

    def __init__(
        self,
        id_feature: str,
        vocabulary: Sequence[str] | None = None,
        embedding_dim: int = 32,
        categories: Sequence[str] = (),
        prefixes: Mapping[str, int] | None = None,
        multi_categories: Mapping[str, int] | None = None,
        texts: Sequence[str] = (),
        timestamps: Sequence[str] = (),
        history: str | None = None,
        history_length: int = 50,
        history_pooling: str = "mean",
        combine: str = "sum",
        layers: Sequence[int] | None = None,
        l2: float = 0.0,
        num_oov_buckets: int = 1,
        state: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(embedding_dim=embedding_dim, **kwargs)
        if combine not in COMBINE:
            raise ConfigError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}.")
        if layers is not None:
            layers = [check_positive_int(width, "each of layers") for width in layers]
            if combine != "concat" or not layers:
                raise ConfigError("layers needs combine='concat' and at least one width, e.g. layers=[64, 32].")
        state = dict(state or {})
        self.id_feature, self.combine, self.layer_widths = id_feature, combine, layers
        self.categories, self.prefixes = list(categories), dict(prefixes or {})
        self.multi_categories = dict(multi_categories or {})
        self.texts, self.timestamps = list(texts), list(timestamps)
        self.history, self.history_length, self.history_pooling = history, history_length, history_pooling
        self.ids = IdEmbeddingTower(id_feature, vocabulary, embedding_dim, num_oov_buckets, l2=l2, name="ids")
        self.parts: list[tf.keras.layers.Layer] = []
        for key in self.categories:
            self.parts.append(CategoryEmbedding(key, embedding_dim, state.get(key), self.prefixes.get(key),
                                                name=f"category_{key}"))
        for key, count in self.multi_categories.items():
            self.parts.append(MultiCategoryEmbedding(key, check_positive_int(count, key), embedding_dim,
                                                     name=f"labels_{key}"))
        for key in self.texts:
            self.parts.append(TextEmbedding(key, embedding_dim, vocabulary=state.get(f"text:{key}"), name=f"text_{key}"))
        for key in self.timestamps:
            self.parts.append(TimestampEmbedding(key, embedding_dim, boundaries=state.get(f"time:{key}"),
                                                 name=f"time_{key}"))
        if history is not None:
            self.parts.append(HistoryTower(history, state.get(f"history:{history}"), embedding_dim, history_length,
                                           history_pooling, name=f"history_{history}"))
        self.projection = None
        if combine == "concat":
            widths = layers or [embedding_dim]
            inputs = embedding_dim * (1 + len(self.parts))
            for units in widths:
                check_weights_fit(inputs, units, "width in layers" if layers else "embedding_dim",
                                  f"tower '{self.component_name}' (a Dense layer of {units:,} units)")
                inputs = units
            self.projection = tf.keras.Sequential(
                [tf.keras.layers.Dense(w, activation="relu") for w in widths[:-1]] + [tf.keras.layers.Dense(widths[-1])],
                name="projection",
            )

    @property
    def feature_keys(self) -> tuple[str, ...]:
        keys = [self.id_feature, *self.categories, *self.multi_categories, *self.texts, *self.timestamps,
                *([self.history] if self.history else [])]
        return tuple(dict.fromkeys(keys))

    @property
    def output_dim(self) -> int:
        return self.layer_widths[-1] if self.layer_widths else self.embedding_dim

    @property
    def vocabulary(self) -> list[str] | None:
        return self.ids.vocabulary

    @property
    def is_adapted(self) -> bool:
        return self.ids.is_adapted

    def adapt(self, features: Mapping[str, Any]) -> None:
        self.ids.adapt(features)
        for part in self.parts:
            if isinstance(part, HistoryTower):
                part.adapt(features)  # a tower: it selects its own feature
            elif hasattr(part, "adapt"):
                part.adapt(features[part.feature])

    def call(self, features: Any) -> tf.Tensor:
        inputs = self.select(features)
        embeddings = [self.ids(inputs)] + [part(inputs if isinstance(part, HistoryTower) else inputs[part.feature])
                                           for part in self.parts]
        if self.combine == "sum":
            return tf.add_n(embeddings)
        return self.projection(tf.concat(embeddings, axis=-1))

    def get_config(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for part in self.parts:
            if isinstance(part, CategoryEmbedding):
                state[part.feature] = part.vocabulary
            elif isinstance(part, TextEmbedding):
                state[f"text:{part.feature}"] = part.vocabulary
            elif isinstance(part, TimestampEmbedding):
                state[f"time:{part.feature}"] = part.boundaries
            elif isinstance(part, HistoryTower):
                state[f"history:{part.feature}"] = part.vocabulary
        return {
            **super().get_config(),
            "id_feature": self.id_feature,
            "vocabulary": self.ids.vocabulary,
            "categories": self.categories,
            "prefixes": self.prefixes,
            "multi_categories": self.multi_categories,
            "texts": self.texts,
            "timestamps": self.timestamps,
            "history": self.history,
            "history_length": self.history_length,
            "history_pooling": self.history_pooling,
            "combine": self.combine,
            "layers": self.layer_widths,
            "l2": self.ids.l2,
            "num_oov_buckets": self.ids.num_oov_buckets,
            "state": state,
        }
