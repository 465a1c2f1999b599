"""The movie (candidate) tower: the seed's title embedding, optionally with genres and title words."""

from __future__ import annotations

from typing import Sequence

from towerkit.towers.feature_tower import FeatureTower
from towerkit.towers.id_embedding import IdEmbeddingTower

# tfds' movielens genre label count.
NUM_GENRES = 21


def movie_tower(
    vocabulary: Sequence[str] | None = None,
    embedding_dim: int = 32,
    feature: str = "movie_title",
    genres: bool = False,
    title_text: bool = False,
    genre_feature: str = "movie_genres",
    num_genres: int = NUM_GENRES,
    l2: float = 0.0,
    num_oov_buckets: int = 1,
    name: str = "movie_tower",
) -> IdEmbeddingTower | FeatureTower:
    """Builds the movie tower: title -> StringLookup -> Embedding, plus optional parts.

    The optional parts are added to the title embedding, so the output stays
    ``embedding_dim`` wide. With none on, this is exactly the seed's tower.

    Args:
        vocabulary: Known titles; learned at assembly if omitted.
        embedding_dim: Width of the embeddings.
        feature: The title feature key.
        genres: Add the mean embedding of the movie's genres.
        title_text: Add the mean embedding of the title's words (helps similar titles).
        genre_feature: The genre-list feature key.
        num_genres: Number of genre labels.
        l2: L2 penalty on the title embeddings each batch uses.
        num_oov_buckets: Rows shared by unknown titles.
        name: The layer name.

    Example:
        >>> tower = towerkit.create_tower("movie", genres=True, title_text=True)
    """
    if not genres and not title_text:
        return IdEmbeddingTower(feature, vocabulary, embedding_dim, num_oov_buckets, l2=l2, name=name)
    return FeatureTower(
        feature,
        vocabulary,
        embedding_dim,
        multi_categories={genre_feature: num_genres} if genres else None,
        texts=[feature] if title_text else (),
        combine="sum",
        l2=l2,
        num_oov_buckets=num_oov_buckets,
        name=name,
    )
