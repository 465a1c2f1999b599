"""The movie (candidate) tower of the seed tutorial."""

from __future__ import annotations

from typing import Sequence

from towerkit.towers.id_embedding import IdEmbeddingTower


def movie_tower(
    vocabulary: Sequence[str] | None = None,
    embedding_dim: int = 32,
    feature: str = "movie_title",
    num_oov_buckets: int = 1,
    l2: float = 0.0,
    name: str = "movie_tower",
) -> IdEmbeddingTower:
    """Builds the movie tower: movie title -> StringLookup -> Embedding.

    Args:
        vocabulary: Known titles; learned at assembly if omitted.
        embedding_dim: Width of the embeddings.
        feature: The feature key to read.
        l2: L2 penalty on the embeddings each batch uses.
        num_oov_buckets: Rows shared by unknown titles.
        name: The layer name.
    """
    return IdEmbeddingTower(feature, vocabulary, embedding_dim, num_oov_buckets, l2=l2, name=name)
