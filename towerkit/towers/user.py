"""The user tower of the seed tutorial."""

from __future__ import annotations

from typing import Sequence

from towerkit.towers.id_embedding import IdEmbeddingTower


def user_tower(
    vocabulary: Sequence[str] | None = None,
    embedding_dim: int = 32,
    feature: str = "user_id",
    num_oov_buckets: int = 1,
    l2: float = 0.0,
    name: str = "user_tower",
) -> IdEmbeddingTower:
    """Builds the user tower: user id -> StringLookup -> Embedding.

    Args:
        vocabulary: Known user ids; learned at assembly if omitted.
        embedding_dim: Width of the embeddings.
        feature: The feature key to read.
        l2: L2 penalty on the embeddings each batch uses.
        num_oov_buckets: Rows shared by unknown ids.
        name: The layer name.

    Example:
        >>> tower = towerkit.create_tower("user", embedding_dim=32)
    """
    return IdEmbeddingTower(feature, vocabulary, embedding_dim, num_oov_buckets, l2=l2, name=name)
