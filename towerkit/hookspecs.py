"""pluggy hook specifications: the whole plugin surface of towerkit.

Each hook receives ``register(name, factory, *, aliases=(), description="",
override=False)`` and takes that single argument, named ``register``. A
factory is a class, a callable, or a lazy ``"module:attr"`` string that is
imported only when the component is first built.

When a name (or alias) is already taken by another distribution, the plugin
that loaded first (built-ins, then distributions in sorted order) keeps it,
with a warning, and the later component stays reachable as
``distribution:name``. ``TOWERKIT_STRICT_PLUGINS=1`` makes such a clash an
error. ``override=True`` takes the name deliberately: the new component
answers to it, and the one it displaces stays reachable as
``distribution:name``.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("towerkit")
hookimpl = pluggy.HookimplMarker("towerkit")


@hookspec
def register_towers(register):
    """Registers towers: factories of ``towerkit.Tower`` layers (see the tower contract in towerkit.towers.base)."""


@hookspec
def register_tasks(register):
    """Registers tasks (losses plus metrics), such as the built-in ``retrieval``."""


@hookspec
def register_indexes(register):
    """Registers index backends for top-k retrieval (see the index contract in docs/plugins.md)."""


@hookspec
def register_datasets(register):
    """Registers datasets: factories of ``towerkit.RetrievalDataset`` (see its docstring for the contract)."""


@hookspec
def register_baselines(register):
    """Registers baselines: factories of objects with ``fit(data) -> scorer`` (see towerkit.baselines)."""
