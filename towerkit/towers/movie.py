"""The movie (candidate) tower: the seed's title embedding, optionally with genres and title words."""

from __future__ import annotations

from towerkit.errors import ConfigError
from towerkit.towers.feature_tower import FeatureTower
from towerkit.towers.id_embedding import IdEmbeddingTower
from towerkit.towers.id_options import IdOptions, id_tower_factory

# tfds' movielens genre label count.
NUM_GENRES = 21


def movie_parts(ids: IdOptions, genres: bool, title_text: bool, genre_feature: str,
                num_genres: int, item_bias: bool = False) -> IdEmbeddingTower | FeatureTower:
    """The title embedding, plus the mean genre and title-word embeddings if asked (summed in)."""
    if not genres and not title_text:
        return ids.id_tower(item_bias=item_bias)
    if item_bias:
        raise ConfigError("the movie tower's item_bias works with the title embedding alone; "
                          "set genres and title_text to false, or item_bias to false.")
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
    item_bias: bool = False,
) -> IdEmbeddingTower | FeatureTower:
    """Builds the movie tower: title -> StringLookup -> Embedding, plus optional parts.

    The optional parts are added to the title embedding, so the output stays
    ``embedding_dim`` wide. With none on, this is exactly the seed's tower.

    Args:
        genres: Add the mean embedding of the movie's genres.
        title_text: Add the mean embedding of the title's words (helps similar titles).
        genre_feature: The genre-list feature key.
        num_genres: Number of genre labels.
        item_bias: Append a learned per-movie bias as a last column (output
            ``embedding_dim + 1`` wide), for a ``history`` query tower with
            ``item_bias`` on: scores become ``q . c + b_movie``. Title embedding only.

    Example:
        >>> tower = towerkit.create_tower("movie", genres=True, title_text=True)
    """
    return movie_parts(ids, genres, title_text, genre_feature, num_genres, item_bias)
