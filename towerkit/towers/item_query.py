"""The item-to-item query tower: embeds the query movie, optionally with the candidate tower's tables."""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from towerkit.errors import ConfigError
from towerkit.towers.base import Tower
from towerkit.towers.id_options import IdOptions, id_tower_factory
from towerkit.towers.movie import NUM_GENRES, movie_parts


@tf.keras.utils.register_keras_serializable(package="towerkit")
class SharedTower(Tower):
    """Runs another tower on renamed features, sharing its weights.

    Args:
        base: The tower whose layers are shared (e.g. the candidate movie tower).
        feature_map: Own feature key -> the base tower's feature key.
    """

    def __init__(self, base: Tower, feature_map: Mapping[str, str], **kwargs: Any):
        super().__init__(embedding_dim=base.embedding_dim, **kwargs)
        self.base = base
        self.feature_map = dict(feature_map)
        missing = [k for k in base.feature_keys if k not in self.feature_map.values()]
        if missing:
            raise ConfigError(
                f"cannot share tower '{base.name}': nothing feeds its feature(s) {', '.join(missing)}; "
                "turn on the matching options of the query tower."
            )

    @property
    def feature_keys(self) -> tuple[str, ...]:
        return tuple(own for own, theirs in self.feature_map.items() if theirs in self.base.feature_keys)

    @property
    def vocabulary(self):
        return getattr(self.base, "vocabulary", None)

    def call(self, features: Any) -> tf.Tensor:
        inputs = self.select(features)
        return self.base({self.feature_map[k]: v for k, v in inputs.items()})

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "base": tf.keras.layers.serialize(self.base), "feature_map": self.feature_map}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SharedTower":
        config = dict(config)
        config.pop("embedding_dim", None)
        config["base"] = tf.keras.layers.deserialize(config["base"])
        return cls(**config)


@id_tower_factory(feature="query_movie_title", name="item_query_tower", ids="titles")
def item_query_tower(
    ids: IdOptions,
    genres: bool = False,
    title_text: bool = False,
    genre_feature: str = "query_movie_genres",
    num_genres: int = NUM_GENRES,
    share_with: Any = None,
) -> Tower:
    """Builds the query tower of item-to-item retrieval: the query movie's features.

    Args:
        genres: Add the query movie's genres.
        title_text: Add the query title's words.
        genre_feature: The query movie's genre-list feature key.
        num_genres: Number of genre labels.
        share_with: A candidate movie tower (or, in recipes and ``assemble``,
            ``"candidate"``) whose embedding tables this tower reuses, so a
            movie has one embedding whether it is the query or the candidate;
            ``vocabulary``, ``embedding_dim``, ``l2`` and ``num_oov_buckets``
            then come from that tower.

    Example:
        >>> model = towerkit.assemble(query={"name": "item-query", "share_with": "candidate"},
        ...                           candidate="movie", data=pairs)
    """
    if share_with is None:
        return movie_parts(ids, genres, title_text, genre_feature, num_genres)
    if not isinstance(share_with, Tower):
        raise ConfigError(
            f"share_with must be a candidate tower (or 'candidate' when assembling), got {share_with!r}."
        )
    base_keys = share_with.feature_keys
    feature_map = {ids.feature: base_keys[0]}
    if genres or len(base_keys) > 1:
        base_genres = next((k for k in base_keys[1:] if "genre" in k), None)
        if base_genres is not None:
            feature_map[genre_feature] = base_genres
    return SharedTower(share_with, feature_map, name=ids.name)
