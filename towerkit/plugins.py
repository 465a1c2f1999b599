"""The plugin manager: loads built-ins and installed plugins into the registries.

Plugins are installed distributions that declare an entry point in the
``towerkit`` group::

    [project.entry-points.towerkit]
    myplugin = "my_package.towerkit_plugin"

``TOWERKIT_PLUGINS`` is an allow-list of distribution names: unset loads every
installed plugin, empty loads none, ``a,b`` loads only those two. Built-ins
always load. A plugin that fails to import or raises in a hook is skipped with
a warning; whatever it had registered is rolled back, and the rest keep working.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from towerkit import builtins, hookspecs
from towerkit.errors import DuplicateComponentError, TowerkitError
from towerkit.registry import BUILTIN_SOURCE, REGISTRIES, Entry

ENTRY_POINT_GROUP = "towerkit"
ALLOW_ENV = "TOWERKIT_PLUGINS"
STRICT_ENV = "TOWERKIT_STRICT_PLUGINS"

# Hook name -> registry kind.
HOOK_KINDS = {
    "register_towers": "towers",
    "register_tasks": "tasks",
    "register_indexes": "indexes",
    "register_datasets": "datasets",
}


class PluginWarning(UserWarning):
    """A plugin was skipped or one of its components was not registered."""


@dataclass
class PluginInfo:
    """What is known about one plugin after loading."""

    name: str
    version: str = ""
    status: str = "loaded"  # loaded | failed | blocked
    error: str = ""
    components: list[Entry] = field(default_factory=list)


_lock = threading.RLock()
_loaded = False
_manager: pluggy.PluginManager | None = None
_plugins: dict[str, PluginInfo] = {}


def _normalise(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def allowed_plugins() -> set[str] | None:
    """Returns the allow-list from ``TOWERKIT_PLUGINS``, or None for all."""
    value = os.environ.get(ALLOW_ENV)
    if value is None:
        return None
    return {_normalise(part) for part in value.split(",") if part.strip()}


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "").strip() not in ("", "0", "false", "no")


def _fail(info: PluginInfo, error: str, what: str, advice: str) -> None:
    """Records a plugin as failed and warns once, naming the distribution and the error."""
    info.status = "failed"
    info.error = f"{info.error}; {error}" if info.error else error
    warnings.warn(f"plugin {info.name} {what} and was skipped ({error}); {advice}", PluginWarning, stacklevel=3)


def _make_register(kind: str, info: PluginInfo):
    registry = REGISTRIES[kind]

    def register(name, factory, *, aliases=(), description=""):
        try:
            entry = registry.register(
                name,
                factory,
                aliases=aliases,
                description=description,
                source=info.name,
                version=info.version,
            )
        except DuplicateComponentError as exc:
            if _strict() or info.name == BUILTIN_SOURCE:
                raise
            # Plugins load in sorted distribution order, so the earlier one wins.
            warnings.warn(
                f"plugin {info.name} registers {registry.noun} '{name}', which "
                f"{registry.get(name).source} already provides; keeping the latter "
                f"(set {STRICT_ENV}=1 to make this an error).",
                PluginWarning,
                stacklevel=3,
            )
            del exc
            return None
        if entry not in info.components:
            info.components.append(entry)
        return entry

    return register


def _rollback(info: PluginInfo) -> None:
    for entry in info.components:
        registry = REGISTRIES[entry.kind]
        if registry._entries.get(entry.name) is entry:
            registry.unregister(entry.name)
    info.components.clear()


def _run_hooks(plugin: Any, info: PluginInfo, manager: pluggy.PluginManager) -> None:
    """Calls one plugin's hook implementations, isolating its failures."""
    try:
        for hook_name, kind in HOOK_KINDS.items():
            for impl in getattr(manager.hook, hook_name).get_hookimpls():
                if impl.plugin is plugin:
                    impl.function(register=_make_register(kind, info))
    except Exception as exc:  # noqa: BLE001 - a plugin's bug must not break towerkit
        _rollback(info)
        if info.name == BUILTIN_SOURCE or (_strict() and isinstance(exc, TowerkitError)):
            raise
        _fail(info, f"{type(exc).__name__}: {exc}", "raised in a hook", "upgrade or uninstall it.")


def _check_hook_names(manager: pluggy.PluginManager, plugin: Any, info: PluginInfo) -> bool:
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        manager.unregister(plugin)
        _fail(info, str(exc), "implements a hook towerkit does not define", f"hooks are: {', '.join(HOOK_KINDS)}.")
        return False
    return True


def _entry_points() -> list[metadata.EntryPoint]:
    eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(eps, key=lambda ep: (_normalise(ep.dist.name if ep.dist else ep.name), ep.name))


def load_plugins() -> None:
    """Loads the built-ins and the allowed installed plugins, once."""
    global _loaded, _manager
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        manager = pluggy.PluginManager("towerkit")
        manager.add_hookspecs(hookspecs)
        _manager = manager
        builtin_info = PluginInfo(BUILTIN_SOURCE, _own_version())
        _plugins[BUILTIN_SOURCE] = builtin_info
        manager.register(builtins, name=BUILTIN_SOURCE)
        _run_hooks(builtins, builtin_info, manager)

        allowed = allowed_plugins()
        for ep in _entry_points():
            dist = ep.dist.name if ep.dist else ep.name
            info = _plugins.setdefault(dist, PluginInfo(dist, ep.dist.version if ep.dist else ""))
            if allowed is not None and _normalise(dist) not in allowed:
                info.status = "blocked"
                info.error = f"not in {ALLOW_ENV}"
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - isolate broken plugins
                _fail(info, f"{ep.name}: {type(exc).__name__}: {exc}", "failed to import", "reinstall or uninstall it.")
                continue
            try:
                manager.register(plugin, name=f"{dist}:{ep.name}")
            except pluggy.PluginValidationError as exc:
                _fail(info, str(exc), "has an invalid hook implementation",
                      "each hook takes a single argument named 'register'.")
                continue
            if _check_hook_names(manager, plugin, info):
                _run_hooks(plugin, info, manager)
        _loaded = True


def register_plugin(plugin: Any, name: str | None = None) -> PluginInfo:
    """Registers a plugin object (a module or class with hook implementations) from code.

    Args:
        plugin: An object whose functions are marked with ``towerkit.hookimpl``.
        name: The source name shown in listings; defaults to the object's name.
    """
    load_plugins()
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    with _lock:
        info = PluginInfo(name)
        _manager.register(plugin, name=name)
        if not _check_hook_names(_manager, plugin, info):
            raise TowerkitError(f"plugin {name} was not registered: {info.error}")
        _plugins[name] = info
        _run_hooks(plugin, info, _manager)
        if info.status == "failed":
            _manager.unregister(plugin)
        return info


def unregister_plugin(name: str) -> None:
    """Removes a plugin registered with :func:`register_plugin` and its components."""
    with _lock:
        info = _plugins.pop(name, None)
        if info is not None:
            _rollback(info)
        if _manager is not None and _manager.get_plugin(name) is not None:
            _manager.unregister(name=name)


def plugin_infos() -> list[PluginInfo]:
    """Returns every known plugin, built-ins first, then by name."""
    load_plugins()
    return sorted(_plugins.values(), key=lambda p: (p.name != BUILTIN_SOURCE, p.name))


def _own_version() -> str:
    try:
        return metadata.version("towerkit")
    except metadata.PackageNotFoundError:
        return ""
