"""towerkit: a plugin-based Keras toolkit for two-tower retrieval recommenders.

Components (towers, tasks, indexes, datasets) live in registries and are
assembled by name::

    import towerkit
    data = towerkit.load_dataset("movielens-100k")
    model = towerkit.assemble(query="user", candidate="movie", task="retrieval", data=data)
"""

from towerkit._keras import ensure_legacy_keras

ensure_legacy_keras()

from towerkit.errors import (  # noqa: E402
    ConfigError,
    DataError,
    DuplicateComponentError,
    FeatureError,
    TowerkitError,
    UnknownComponentError,
)
from towerkit.hookspecs import hookimpl  # noqa: E402
from towerkit.registry import (  # noqa: E402
    create_index,
    create_task,
    create_tower,
    describe,
    list_datasets,
    list_indexes,
    list_tasks,
    list_towers,
    load_dataset,
    registry,
)

__version__ = "0.1.0"

# These import TensorFlow, so they load on first use rather than with the package.
_LAZY = {
    "assemble": "towerkit.models",
    "evaluate_topk": "towerkit.evaluation",
    "popularity_topk": "towerkit.evaluation",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'towerkit' has no attribute '{name}'")


__all__ = [
    "ConfigError",
    "DataError",
    "DuplicateComponentError",
    "FeatureError",
    "TowerkitError",
    "UnknownComponentError",
    "assemble",
    "create_index",
    "create_task",
    "create_tower",
    "describe",
    "evaluate_topk",
    "hookimpl",
    "list_datasets",
    "list_indexes",
    "list_tasks",
    "list_towers",
    "load_dataset",
    "popularity_topk",
    "registry",
]
