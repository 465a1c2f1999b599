"""towerkit's own components, registered through the same hooks as any plugin.

Factories are lazy ``"module:attr"`` strings so that listing components does
not import TensorFlow.
"""

from __future__ import annotations

from towerkit.hookspecs import hookimpl


@hookimpl
def register_towers(register):
    register(
        "user",
        "towerkit.towers.user:user_tower",
        description="User id embedding; options add demographics, time and a deep stack.",
    )
    register(
        "movie",
        "towerkit.towers.movie:movie_tower",
        aliases=("item",),
        description="Movie title embedding; options add genres and title words.",
    )
    register(
        "item-query",
        "towerkit.towers.item_query:item_query_tower",
        description="Item-to-item query tower over the query movie (reads 'query_movie_title').",
    )
    register(
        "id-embedding",
        "towerkit.towers.id_embedding:IdEmbeddingTower",
        description="Any string id feature -> StringLookup + Embedding.",
    )
    register(
        "history",
        "towerkit.towers.history:HistoryTower",
        description="Query tower over the query's item history (e.g. movie_history), mean or attention pooled.",
    )
    register(
        "features",
        "towerkit.towers.columns:features_tower",
        description="Generic tower: one encoder per column (id, categorical, multi, numeric, text, timestamp).",
    )


@hookimpl
def register_tasks(register):
    register(
        "retrieval",
        "towerkit.tasks.retrieval:RetrievalTask",
        description="In-batch softmax retrieval (tfrs.tasks.Retrieval) with FactorizedTopK.",
    )


@hookimpl
def register_indexes(register):
    register(
        "brute-force",
        "towerkit.indexes.brute_force:BruteForceIndex",
        aliases=("bruteforce",),
        description="Exact top-k by dot product over all candidates (TFRS BruteForce).",
    )
    register(
        "scann",
        "towerkit.indexes.scann_index:ScannIndex",
        description="Approximate top-k with ScaNN (TFRS ScaNN layer).",
    )


@hookimpl
def register_datasets(register):
    register(
        "movielens-100k",
        "towerkit.datasets.movielens:MovieLens100K",
        aliases=("movielens",),
        description="MovieLens-100K ratings as implicit feedback, with the seed's 80/20 split.",
    )
    register(
        "movielens-100k-item2item",
        "towerkit.datasets.item2item:MovieLensItemToItem",
        aliases=("item2item",),
        description="(movie, next movie rated by the same user) pairs from MovieLens-100K.",
    )
    register(
        "synthetic",
        "towerkit.datasets.synthetic:SyntheticDataset",
        description="Generated users, items and interactions with latent structure.",
    )
    register(
        "interactions",
        "towerkit.datasets.interactions:InteractionsDataset",
        description="Your own interaction log (CSV/TSV/Parquet/JSON Lines), split random, temporal or leave-last.",
    )


@hookimpl
def register_baselines(register):
    register("popularity", "towerkit.baselines.classic:Popularity",
             description="The candidates met most often in training, for every query.")
    register("cooccurrence", "towerkit.baselines.classic:Cooccurrence",
             description="Item-to-item: the candidates most often paired with the query item in training.")
    register("ease", "towerkit.baselines.ease:EASE",
             description="EASE, closed-form item-item linear model (option l2).")
    register("als", "towerkit.baselines.als:ALS",
             description="Implicit-feedback ALS matrix factorisation via the implicit library (extra 'baselines').")
