"""The user (query) tower: the seed's user id embedding, optionally with demographics and time."""

from __future__ import annotations

from typing import Sequence

from towerkit.towers.feature_tower import FeatureTower
from towerkit.towers.id_embedding import IdEmbeddingTower
from towerkit.towers.id_options import IdOptions, id_tower_factory

DEMOGRAPHICS = ("bucketized_user_age", "user_gender", "user_occupation_label", "user_zip_code")


@id_tower_factory(feature="user_id", name="user_tower", ids="user ids")
def user_tower(
    ids: IdOptions,
    demographics: bool = False,
    timestamp: bool = False,
    zip_prefix: int = 3,
    layers: Sequence[int] | None = None,
) -> IdEmbeddingTower | FeatureTower:
    """Builds the user tower: user id -> StringLookup -> Embedding, plus optional features.

    With ``demographics`` or ``timestamp`` on, their embeddings are
    concatenated with the id embedding and projected by Dense layers (to
    ``embedding_dim``, or through ``layers``). With none on, this is exactly the
    seed's tower.

    Args:
        demographics: Add age bucket, gender, occupation and zip-code prefix.
        timestamp: Add the interaction time, bucketed by quantiles.
        zip_prefix: Leading zip-code digits kept (regions, not households).
        layers: Dense widths after concatenation, e.g. ``[64, 32]``.

    Example:
        >>> tower = towerkit.create_tower("user", demographics=True, layers=[64, 32])
    """
    if not demographics and not timestamp:
        if layers is not None:
            return ids.feature_tower(combine="concat", layers=layers)
        return ids.id_tower()
    return ids.feature_tower(
        categories=DEMOGRAPHICS if demographics else (),
        prefixes={"user_zip_code": zip_prefix},
        timestamps=["timestamp"] if timestamp else (),
        combine="concat",
        layers=layers,
    )
