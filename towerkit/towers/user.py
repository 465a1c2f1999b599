"""The user (query) tower: the seed's user id embedding, optionally with demographics and time."""

from __future__ import annotations

from typing import Sequence

from towerkit.towers.feature_tower import FeatureTower
from towerkit.towers.id_embedding import IdEmbeddingTower

DEMOGRAPHICS = ("bucketized_user_age", "user_gender", "user_occupation_label", "user_zip_code")


def user_tower(
    vocabulary: Sequence[str] | None = None,
    embedding_dim: int = 32,
    feature: str = "user_id",
    demographics: bool = False,
    timestamp: bool = False,
    zip_prefix: int = 3,
    layers: Sequence[int] | None = None,
    l2: float = 0.0,
    num_oov_buckets: int = 1,
    name: str = "user_tower",
) -> IdEmbeddingTower | FeatureTower:
    """Builds the user tower: user id -> StringLookup -> Embedding, plus optional features.

    With ``demographics`` or ``timestamp`` on, their embeddings are
    concatenated with the id embedding and projected by Dense layers (to
    ``embedding_dim``, or through ``layers``). With none on, this is exactly the
    seed's tower.

    Args:
        vocabulary: Known user ids; learned at assembly if omitted.
        embedding_dim: Width of the embeddings (and of the output, unless ``layers``).
        feature: The user id feature key.
        demographics: Add age bucket, gender, occupation and zip-code prefix.
        timestamp: Add the interaction time, bucketed by quantiles.
        zip_prefix: Leading zip-code digits kept (regions, not households).
        layers: Dense widths after concatenation, e.g. ``[64, 32]``.
        l2: L2 penalty on the id embeddings each batch uses.
        num_oov_buckets: Rows shared by unknown ids.
        name: The layer name.

    Example:
        >>> tower = towerkit.create_tower("user", demographics=True, layers=[64, 32])
    """
    if not demographics and not timestamp:
        if layers is not None:
            return FeatureTower(feature, vocabulary, embedding_dim, combine="concat", layers=layers, l2=l2,
                                num_oov_buckets=num_oov_buckets, name=name)
        return IdEmbeddingTower(feature, vocabulary, embedding_dim, num_oov_buckets, l2=l2, name=name)
    return FeatureTower(
        feature,
        vocabulary,
        embedding_dim,
        categories=DEMOGRAPHICS if demographics else (),
        prefixes={"user_zip_code": zip_prefix},
        timestamps=["timestamp"] if timestamp else (),
        combine="concat",
        layers=layers,
        l2=l2,
        num_oov_buckets=num_oov_buckets,
        name=name,
    )
