"""The plugin manager: loads built-ins and installed plugins into the registries.

Plugins are installed distributions that declare an entry point in the
``towerkit`` group::

    [project.entry-points.towerkit]
    myplugin = "my_package.towerkit_plugin"

``TOWERKIT_PLUGINS`` is an allow-list of distribution names: unset loads every
installed plugin, empty loads none, ``a,b`` loads only those two. Built-ins
always load. A plugin that fails to import, raises in a hook (any
BaseException: even ``sys.exit`` or a KeyboardInterrupt it raises itself, but
not the user's real Ctrl-C) or has an invalid hook is skipped with a warning;
whatever it had registered is rolled back, it is unregistered from pluggy, and
the rest keep working. Plugin code runs with stdout sent to stderr, so that a
plugin's prints cannot corrupt ``--json`` output.

When two distributions register one name, the one that loads first keeps it
and the other's component stays reachable as ``distribution:name``
(``TOWERKIT_STRICT_PLUGINS=1`` makes a clash an error).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterator

import pluggy

from towerkit import builtins, hookspecs
from towerkit.errors import DuplicateComponentError, TowerkitError
from towerkit.registry import BUILTIN_SOURCE, KINDS, REGISTRIES, UNKNOWN_NAME_HINTS, Entry

ENTRY_POINT_GROUP = "towerkit"
ALLOW_ENV = "TOWERKIT_PLUGINS"
STRICT_ENV = "TOWERKIT_STRICT_PLUGINS"

# Hook name -> registry kind.
HOOK_KINDS = {
    "register_towers": "towers",
    "register_tasks": "tasks",
    "register_indexes": "indexes",
    "register_datasets": "datasets",
    "register_baselines": "baselines",
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
_loading = False
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


def blocked_advice(dist: str) -> str:
    """How to allow a distribution that ``TOWERKIT_PLUGINS`` blocks."""
    allowed = sorted(allowed_plugins() or ())
    return (f"blocked by {ALLOW_ENV}={','.join(allowed)!r}; add it ({ALLOW_ENV}={','.join([*allowed, dist])}) "
            f"or unset {ALLOW_ENV} to load every installed plugin")


def missing_distribution_advice(dist: str) -> str:
    """Why components of a distribution are unavailable, and what to do: blocked, failed, or not installed."""
    load_plugins()
    return _advice(dist)


def _advice(dist: str) -> str:
    # No load_plugins() here: this also runs while plugins load (an unknown name raised in a hook).
    info = next((p for p in _plugins.values() if _normalise(p.name) == _normalise(dist)), None)
    if info is not None and info.status == "blocked":
        return f"the {dist} plugin is installed but {blocked_advice(dist)}"
    if info is not None and info.status == "failed":
        return f"the {dist} plugin is installed but failed to load ({info.error}); reinstall or upgrade it"
    return f"the {dist} distribution is not installed; `pip install {dist}`"


def _unloaded_plugins_hint(name: str) -> str:
    """For an unknown name: which installed plugins are not loaded (blocked or failed), and why."""
    source, qualified, _ = name.partition(":")
    unloaded = [p for p in _plugins.values() if p.status in ("blocked", "failed")]
    if qualified:
        unloaded = [p for p in unloaded if _normalise(p.name) == _normalise(source)]
        if unloaded:
            return f"({_advice(unloaded[0].name)}.)"
        return ""
    blocked = sorted(p.name for p in unloaded if p.status == "blocked")
    failed = sorted(p.name for p in unloaded if p.status == "failed")
    parts = ([f"blocked by {ALLOW_ENV}: {', '.join(blocked)}"] if blocked else []) + \
            ([f"failed to load: {', '.join(failed)} (see `towerkit plugins`)"] if failed else [])
    return f"(Installed plugins not loaded, {'; '.join(parts)}.)" if parts else ""


UNKNOWN_NAME_HINTS.append(_unloaded_plugins_hint)


def component_label(entry: Entry) -> str:
    """``kind:name`` as `towerkit plugins` lists it, marking a clash loser as shadowed."""
    label = f"{KINDS[entry.kind]}:{entry.name}"
    if entry.shadowed_by:
        label += f" (shadowed by {entry.shadowed_by}; use '{entry.source}:{entry.name}')"
    return label


class _InterruptWatch:
    """Tells a real Ctrl-C (SIGINT) apart from a KeyboardInterrupt that plugin code raises itself.

    While active, a SIGINT is recorded and then handled as before (normally by
    raising KeyboardInterrupt). Outside the main thread no handler can be set,
    and a real Ctrl-C is delivered to the main thread anyway.
    """

    def __init__(self) -> None:
        self.signalled = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> "_InterruptWatch":
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._handle)
                self._installed = True
            except (ValueError, OSError):  # e.g. an embedded interpreter without signals
                self._installed = False
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signalled = True
        if callable(self._previous):
            self._previous(signum, frame)
        elif self._previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    def __exit__(self, *exc_info: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.SIG_DFL if self._previous is None else self._previous)

    def is_real(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the user's own Ctrl-C, which must propagate rather than be isolated."""
        return isinstance(exc, KeyboardInterrupt) and self.signalled


@contextlib.contextmanager
def plugin_code() -> Iterator[None]:
    """Runs plugin code with its prints sent to stderr, so that stdout stays clean for ``--json``."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _fail(info: PluginInfo, error: str, what: str, advice: str) -> None:
    """Records a plugin as failed and warns once, naming the distribution and the error."""
    info.status = "failed"
    info.error = f"{info.error}; {error}" if info.error else error
    warnings.warn(f"plugin {info.name} {what} and was skipped ({error}); {advice}", PluginWarning, stacklevel=3)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): a plugin must not exit the program"
    return f"{type(exc).__name__}: {exc}"


def _make_register(kind: str, info: PluginInfo) -> Callable[..., Entry]:
    registry = REGISTRIES[kind]

    def register(name, factory, *, aliases=(), description="", override=False):
        details = dict(aliases=aliases, description=description, source=info.name, version=info.version)
        try:
            entry = registry.register(name, factory, override=bool(override), **details)
        except DuplicateComponentError:
            if _strict() or info.name == BUILTIN_SOURCE:
                raise
            # Plugins load in sorted distribution order, so the earlier one keeps the name;
            # the later one's component stays reachable by its qualified name.
            entry = registry.register_shadowed(name, factory, **details)
            warnings.warn(
                f"plugin {info.name} registers {registry.noun} '{name}', which {entry.shadowed_by} "
                f"already provides; '{name}' stays {entry.shadowed_by}'s, and {info.name}'s is "
                f"'{info.name}:{name}' (set {STRICT_ENV}=1 to make this an error).",
                PluginWarning,
                stacklevel=2,
            )
        # An identical registration by another distribution returns that one's entry: not ours to roll back.
        if entry.source == info.name and entry not in info.components:
            info.components.append(entry)
        return entry

    return register


def _rollback(info: PluginInfo) -> None:
    for entry in info.components:
        REGISTRIES[entry.kind].remove(entry)
    info.components.clear()


def _run_hooks(plugin: Any, info: PluginInfo, manager: pluggy.PluginManager, watch: _InterruptWatch) -> bool:
    """Calls one plugin's hook implementations, isolating its failures; returns whether they all ran."""
    try:
        with plugin_code():
            for hook_name, kind in HOOK_KINDS.items():
                for impl in getattr(manager.hook, hook_name).get_hookimpls():
                    if impl.plugin is plugin:
                        impl.function(register=_make_register(kind, info))
    except BaseException as exc:  # noqa: BLE001 - a plugin's bug (even sys.exit) must not end towerkit
        _rollback(info)
        if watch.is_real(exc) or info.name == BUILTIN_SOURCE or (_strict() and isinstance(exc, TowerkitError)):
            raise
        _fail(info, _describe(exc), "raised in a hook", "upgrade or uninstall it.")
        return False
    return True


def _add_plugin(plugin: Any, name: str, info: PluginInfo, manager: pluggy.PluginManager,
                watch: _InterruptWatch) -> str:
    """Registers a plugin object with pluggy and runs its hooks.

    Returns:
        ``"loaded"``, ``"invalid"`` (pluggy refused it, or it implements a hook
        towerkit does not define; it is then fully unregistered, so that no
        later plugin is blamed for it) or ``"raised"`` (a hook raised).
    """
    try:
        manager.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        if manager.get_plugin(name) is not None:  # older pluggy registers hook by hook
            manager.unregister(name=name)
        _fail(info, str(exc), "has an invalid hook implementation",
              "each hook takes a single argument named 'register'.")
        return "invalid"
    unknown = sorted(c.name for c in manager.get_hookcallers(plugin) or () if not c.has_spec())
    if unknown:
        manager.unregister(name=name)
        _fail(info, f"unknown hook(s) {', '.join(unknown)}", "implements a hook towerkit does not define",
              f"hooks are: {', '.join(HOOK_KINDS)}.")
        return "invalid"
    try:
        ran = _run_hooks(plugin, info, manager, watch)
    except BaseException:  # a real Ctrl-C, or strict mode's clash: leave nothing of the plugin behind
        manager.unregister(name=name)
        raise
    if not ran:
        manager.unregister(name=name)
        return "raised"
    return "loaded"


def _entry_points() -> list[metadata.EntryPoint]:
    eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(eps, key=lambda ep: (_normalise(ep.dist.name if ep.dist else ep.name), ep.name))


def _load_entry_point(ep: metadata.EntryPoint, manager: pluggy.PluginManager, allowed: set[str] | None,
                      watch: _InterruptWatch) -> None:
    dist = ep.dist.name if ep.dist else ep.name
    info = _plugins.setdefault(dist, PluginInfo(dist, ep.dist.version if ep.dist else ""))
    if allowed is not None and _normalise(dist) not in allowed:
        info.status = "blocked"
        info.error = blocked_advice(dist)
        return
    try:
        with plugin_code():
            plugin = ep.load()
    except BaseException as exc:  # noqa: BLE001 - isolate broken plugins, even one that calls sys.exit
        if watch.is_real(exc):
            raise
        _fail(info, f"{ep.name}: {_describe(exc)}", "failed to import", "reinstall or uninstall it.")
        return
    if manager.is_registered(plugin):  # a second entry point naming the same module: loaded already
        return
    _add_plugin(plugin, f"{dist}:{ep.name}", info, manager, watch)


def load_plugins() -> None:
    """Loads the built-ins and the allowed installed plugins, once."""
    global _loaded, _loading, _manager
    if _loaded:
        return
    with _lock:
        # A plugin that looks a registry up while plugins load sees what has loaded so far,
        # rather than starting the loading again inside itself.
        if _loaded or _loading:
            return
        _loading = True
        try:
            _load_all()
        finally:
            _loading = False
        _loaded = True


def _load_all() -> None:
    """Registers the built-ins, then each allowed installed plugin in sorted distribution order."""
    global _manager
    manager = pluggy.PluginManager("towerkit")
    manager.add_hookspecs(hookspecs)
    _manager = manager
    builtin_info = PluginInfo(BUILTIN_SOURCE, _own_version())
    _plugins[BUILTIN_SOURCE] = builtin_info
    with _InterruptWatch() as watch:
        _add_plugin(builtins, BUILTIN_SOURCE, builtin_info, manager, watch)
        allowed = allowed_plugins()
        for ep in _entry_points():
            _load_entry_point(ep, manager, allowed, watch)
    for info in _plugins.values():
        if info.status == "failed":  # a distribution with one bad entry point registers nothing
            _rollback(info)


def register_plugin(plugin: Any, name: str | None = None) -> PluginInfo:
    """Registers a plugin object (a module or class with hook implementations) from code.

    A hook that raises makes the plugin ``failed`` (with a warning) and
    registers nothing; in strict mode a name clash raises instead.

    Args:
        plugin: An object whose functions are marked with ``towerkit.hookimpl``.
        name: The source name shown in listings; defaults to the object's name.

    Returns:
        The plugin's :class:`PluginInfo`.

    Raises:
        TowerkitError: The name is taken, or a hook implementation is invalid
            (a wrong argument name, or a hook towerkit does not define).
    """
    load_plugins()
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    with _lock:
        if name in _plugins or _manager.get_plugin(name) is not None or _manager.is_registered(plugin):
            raise TowerkitError(f"a plugin named '{name}' (or this very object) is already registered; "
                                f"pass another name, or call unregister_plugin('{name}') first.")
        info = PluginInfo(name)
        with warnings.catch_warnings(record=True) as caught, _InterruptWatch() as watch:
            warnings.simplefilter("always")
            outcome = _add_plugin(plugin, name, info, _manager, watch)
        if outcome == "invalid":
            raise TowerkitError(f"plugin {name} was not registered: {info.error}; each hook takes a single "
                                f"argument named 'register', and the hooks are {', '.join(HOOK_KINDS)}.")
        for caught_warning in caught:  # the error above says it all; otherwise pass the warnings on
            warnings.warn(caught_warning.message, caught_warning.category, stacklevel=2)
        _plugins[name] = info
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
