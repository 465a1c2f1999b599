"""towerkit: a plugin-based Keras toolkit for two-tower retrieval recommenders.

Components (towers, tasks, indexes, datasets) live in registries and are
assembled by name::

    import towerkit
    data = towerkit.load_dataset("movielens-100k")
    model = towerkit.assemble(query="user", candidate="movie", task="retrieval", data=data)

The public surface for plugin authors is here too: the base classes
``towerkit.Tower``, ``towerkit.RetrievalDataset`` and ``towerkit.Index``, the
validation helpers (``check_positive_int``, ``check_k``, ``check_dims``), ``towerkit.hookimpl``
and ``towerkit.plugins``; ``towerkit.testing`` holds the contract checks.
"""

from towerkit._keras import ensure_legacy_keras

ensure_legacy_keras()

from towerkit import plugins  # noqa: E402
from towerkit.components import (  # noqa: E402
    create_index,
    create_task,
    create_tower,
    describe,
    get_registry,
    list_datasets,
    list_indexes,
    list_tasks,
    list_towers,
    load_dataset,
)
from towerkit.errors import (  # noqa: E402
    ConfigError,
    DataError,
    DuplicateComponentError,
    FeatureError,
    TowerkitError,
    UnknownComponentError,
)
from towerkit.hookspecs import hookimpl  # noqa: E402
from towerkit.validation import check_positive_int  # noqa: E402

__version__ = "0.1.0"

# These import TensorFlow, so they load on first use rather than with the package.
_LAZY = {
    "assemble": "towerkit.models:assemble",
    "evaluate_topk": "towerkit.evaluation:evaluate_topk",
    "popularity_topk": "towerkit.evaluation:popularity_topk",
    "load_export": "towerkit.serving:load_export",
    "Tower": "towerkit.towers.base:Tower",
    "RetrievalDataset": "towerkit.datasets.base:RetrievalDataset",
    "Index": "towerkit.indexes.base:ValidatedIndex",
    "check_k": "towerkit.indexes.base:check_k",
    "check_dims": "towerkit.indexes.base:check_dims",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module_name, _, attr = _LAZY[name].partition(":")
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'towerkit' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ConfigError",
    "DataError",
    "DuplicateComponentError",
    "FeatureError",
    "Index",
    "RetrievalDataset",
    "Tower",
    "TowerkitError",
    "UnknownComponentError",
    "assemble",
    "check_dims",
    "check_k",
    "check_positive_int",
    "create_index",
    "create_task",
    "create_tower",
    "describe",
    "evaluate_topk",
    "get_registry",
    "hookimpl",
    "list_datasets",
    "list_indexes",
    "list_tasks",
    "list_towers",
    "load_dataset",
    "load_export",
    "plugins",
    "popularity_topk",
]
