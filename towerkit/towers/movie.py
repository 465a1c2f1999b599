"""The movie (candidate) tower: the seed's title embedding, optionally with genres and title words."""

from __future__ import annotations

from towerkit.towers.feature_tower import FeatureTower
from towerkit.towers.id_embedding import IdEmbeddingTower
from towerkit.towers.id_options import IdOptions, id_tower_factory

# tfds' movielens genre label count.
NUM_GENRES = 21


def movie_parts(ids: IdOptions, genres: bool, title_text: bool, genre_feature: str,
                num_genres: int) -> IdEmbeddingTower | FeatureTower:
    """The title embedding, plus the mean genre and title-word embeddings if asked (summed in)."""
    if not genres and not title_text:
        return ids.id_tower()
    return ids.feature_tower(
        multi_categories={genre_feature: num_genres} if genres else None,
        texts=[ids.feature] if title_text else (),
        combine="sum",
    )


@id_tower_factory(feature="movie_title", name="movie_tower", ids="titles")
def movie_tower(
    ids: IdOptions,
    genres: bool = False,
    title_text: bool = False,
    genre_feature: str = "movie_genres",
    num_genres: int = NUM_GENRES,
) -> IdEmbeddingTower | FeatureTower:
    """Builds the movie tower: title -> StringLookup -> Embedding, plus optional parts.

    The optional parts are added to the title embedding, so the output stays
    ``embedding_dim`` wide. With none on, this is exactly the seed's tower.

    Args:
        genres: Add the mean embedding of the movie's genres.
        title_text: Add the mean embedding of the title's words (helps similar titles).
        genre_feature: The genre-list feature key.
        num_genres: Number of genre labels.

    Example:
        >>> tower = towerkit.create_tower("movie", genres=True, title_text=True)
    """
    return movie_parts(ids, genres, title_text, genre_feature, num_genres)
