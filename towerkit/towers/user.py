"""The user (query) tower: the seed's user id embedding, optionally with demographics and time."""

from __future__ import annotations

from typing import Sequence

from towerkit.towers.base import check_positive_int
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
    history: int = 0,
    history_pooling: str = "mean",
    history_feature: str = "movie_history",
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
        history: Above 0, also pool the last ``history`` items the user met
            before each interaction (``history_feature``, which
            ``movielens-100k`` adds with its ``history_length`` option) and
            add them to the id embedding: who the user is, plus what they
            watched last.
        history_pooling: ``"mean"``, ``"attention"`` or ``"gru"`` over the history.
        history_feature: The feature holding each interaction's earlier items.

    Example:
        >>> tower = towerkit.create_tower("user", demographics=True, layers=[64, 32])
    """
    if history:
        check_positive_int(history, "history")
        return ids.feature_tower(
            categories=DEMOGRAPHICS if demographics else (),
            prefixes={"user_zip_code": zip_prefix} if demographics else None,
            timestamps=["timestamp"] if timestamp else (),
            history=history_feature, history_length=history, history_pooling=history_pooling,
            combine="concat" if layers is not None else "sum",
            layers=layers,
        )
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
