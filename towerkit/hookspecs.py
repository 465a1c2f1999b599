"""pluggy hook specifications: the whole plugin surface of towerkit.

Each hook receives ``register(name, factory, *, aliases=(), description="")``.
A factory is a class, a callable, or a lazy ``"module:attr"`` string that is
imported only when the component is first built.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("towerkit")
hookimpl = pluggy.HookimplMarker("towerkit")


@hookspec
def register_towers(register):
    """Registers tower types (query or candidate encoders)."""


@hookspec
def register_tasks(register):
    """Registers tasks (losses plus metrics)."""


@hookspec
def register_indexes(register):
    """Registers index backends for serving top-k retrieval."""


@hookspec
def register_datasets(register):
    """Registers datasets."""
