"""Named registries of components: towers, tasks, indexes and datasets.

Components are registered by plugins (the built-ins included) through the
hooks in :mod:`towerkit.hookspecs`; this module only stores and resolves them.
Plugins are loaded on the first access to any registry.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from towerkit.errors import (
    ConfigError,
    DuplicateComponentError,
    TowerkitError,
    UnknownComponentError,
)

BUILTIN_SOURCE = "towerkit"

# Kind name -> the singular noun used in messages ("an index, not a tower").
KINDS = {
    "towers": "tower",
    "tasks": "task",
    "indexes": "index",
    "datasets": "dataset",
}


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


@dataclass
class Entry:
    """One registered component.

    Attributes:
        name: The canonical name, as given to ``register``.
        factory: A class, a callable, or a lazy ``"module:attr"`` string.
        kind: The registry kind, e.g. ``"towers"``.
        aliases: Other names that resolve to this entry.
        description: A one-line description.
        source: ``"towerkit"`` for built-ins, else the plugin's distribution.
        version: The source distribution's version, when known.
    """

    name: str
    factory: Any
    kind: str
    aliases: tuple[str, ...] = ()
    description: str = ""
    source: str = BUILTIN_SOURCE
    version: str = ""
    _resolved: Any = field(default=None, repr=False)

    def load(self) -> Callable[..., Any]:
        """Returns the factory, importing a lazy ``"module:attr"`` on first use."""
        if self._resolved is None:
            factory = self.factory
            if isinstance(factory, str):
                module_name, _, attr = factory.partition(":")
                try:
                    factory = getattr(importlib.import_module(module_name), attr)
                except (ImportError, AttributeError) as exc:
                    raise TowerkitError(
                        f"{KINDS[self.kind]} '{self.name}' from {self.source} could not be "
                        f"imported from '{self.factory}' ({exc}); reinstall {self.source} "
                        "or report it to its author."
                    ) from exc
            self._resolved = factory
        return self._resolved

    @property
    def qualified_name(self) -> str:
        return f"{self.source}:{self.name}"


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"{what} must be a non-empty string, got {name!r}; pass a registered name "
            "such as those that `towerkit list` prints."
        )
    return name


def _check_factory(name: str, factory: Any, noun: str) -> None:
    if isinstance(factory, str):
        module_name, sep, attr = factory.partition(":")
        if not (sep and module_name and attr):
            raise ConfigError(
                f"{noun} '{name}' has the lazy factory {factory!r}, which is not of the form "
                "'module:attribute'; register a callable or a 'module:attribute' string."
            )
    elif not callable(factory):
        raise ConfigError(
            f"{noun} '{name}' has a factory of type {type(factory).__name__}, which is not "
            "callable; register a class, a function or a 'module:attribute' string."
        )


class Registry:
    """The components of one kind, by name.

    Args:
        kind: The plural kind, one of :data:`KINDS`.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.noun = KINDS[kind]
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self,
        name: str,
        factory: Any,
        *,
        aliases: Iterable[str] = (),
        description: str = "",
        source: str = BUILTIN_SOURCE,
        version: str = "",
        override: bool = False,
    ) -> Entry:
        """Adds a component.

        Registering the identical factory under the same name again is a no-op;
        a different factory raises :class:`DuplicateComponentError` unless
        ``override`` is true.
        """
        _check_name(name, f"A {self.noun} name")
        if ":" in name:
            raise ConfigError(
                f"{self.noun} name '{name}' contains ':', which is reserved for qualified "
                "names 'distribution:name'; choose a name without ':'."
            )
        _check_factory(name, factory, self.noun)
        aliases = tuple(aliases)
        for alias in aliases:
            _check_name(alias, f"An alias of {self.noun} '{name}'")
        existing = self._lookup(name)
        if existing is not None and not override:
            if existing.factory == factory and existing.name == name:
                return existing
            raise DuplicateComponentError(
                f"{self.noun} '{name}' is already registered by {existing.source}, and "
                f"{source} registers a different one; rename one of them, or pass "
                "override=True to replace it."
            )
        if existing is not None:
            self.unregister(existing.name)
        entry = Entry(
            name=name,
            factory=factory,
            kind=self.kind,
            aliases=aliases,
            description=description,
            source=source,
            version=version,
        )
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def unregister(self, name: str) -> None:
        entry = self.get(name)
        del self._entries[entry.name]
        for alias in entry.aliases:
            self._aliases.pop(alias, None)

    def _lookup(self, name: str) -> Entry | None:
        if name in self._entries:
            return self._entries[name]
        if name in self._aliases:
            return self._entries[self._aliases[name]]
        source, sep, short = name.partition(":")
        if sep:
            entry = self._lookup(short)
            if entry is not None and entry.source == source:
                return entry
        return None

    def get(self, name: str) -> Entry:
        """Resolves a name, alias or qualified ``distribution:name`` to its entry."""
        _check_name(name, f"A {self.noun} name")
        entry = self._lookup(name)
        if entry is None:
            raise UnknownComponentError(self._unknown_message(name))
        return entry

    def _unknown_message(self, name: str) -> str:
        for other_kind, other in REGISTRIES.items():
            if other_kind != self.kind and other._lookup(name) is not None:
                return (
                    f"'{name}' is {_article(other.noun)} {other.noun}, not "
                    f"{_article(self.noun)} {self.noun}; pass it where {_article(other.noun)} "
                    f"{other.noun} is expected, or choose one of the {self.kind}: "
                    f"{', '.join(self.names()) or '(none registered)'}."
                )
        close = difflib.get_close_matches(name, self.names(include_aliases=True), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        return (
            f"unknown {self.noun} '{name}'; {hint}registered {self.kind}: "
            f"{', '.join(self.names()) or '(none)'}."
        )

    def names(self, include_aliases: bool = False) -> list[str]:
        names = set(self._entries)
        if include_aliases:
            names |= set(self._aliases)
        return sorted(names)

    def list(self, pattern: str = "*") -> list[str]:
        """Returns the sorted canonical names matching an fnmatch pattern."""
        return [n for n in self.names() if fnmatch.fnmatchcase(n, pattern)]

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def create(self, name: str, **config: Any) -> Any:
        """Builds the component ``name`` from keyword config."""
        entry = self.get(name)
        factory = entry.load()
        check_config(factory, config, f"{self.noun} '{entry.name}'")
        return factory(**config)


def accepted_options(factory: Callable[..., Any]) -> tuple[list[str], bool]:
    """Returns the keyword names a factory accepts, and whether it takes **kwargs."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return [], True
    names = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def check_config(factory: Callable[..., Any], config: dict[str, Any], what: str) -> None:
    """Raises ConfigError naming any option the factory does not accept."""
    names, takes_any = accepted_options(factory)
    if takes_any:
        return
    for key in config:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"{what} has no option '{key}'; {hint}its options are: "
                f"{', '.join(names) or '(none)'}."
            )


REGISTRIES: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}


def registry(kind: str) -> Registry:
    """Returns the registry of a kind, loading plugins on first use."""
    if kind not in REGISTRIES:
        close = difflib.get_close_matches(kind, list(KINDS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UnknownComponentError(
            f"unknown component kind '{kind}'; {hint}kinds are: {', '.join(KINDS)}."
        )
    from towerkit import plugins

    plugins.load_plugins()
    return REGISTRIES[kind]


def create_tower(name: str, **config: Any) -> Any:
    """Builds a registered tower by name.

    Example:
        >>> tower = towerkit.create_tower("user", vocabulary=["1", "2"], embedding_dim=8)
    """
    return registry("towers").create(name, **config)


def create_task(name: str, **config: Any) -> Any:
    """Builds a registered task by name."""
    return registry("tasks").create(name, **config)


def create_index(name: str, **config: Any) -> Any:
    """Builds a registered index backend by name."""
    return registry("indexes").create(name, **config)


def load_dataset(name: str, **config: Any) -> Any:
    """Loads a registered dataset by name."""
    return registry("datasets").create(name, **config)


def list_towers(pattern: str = "*") -> list[str]:
    return registry("towers").list(pattern)


def list_tasks(pattern: str = "*") -> list[str]:
    return registry("tasks").list(pattern)


def list_indexes(pattern: str = "*") -> list[str]:
    return registry("indexes").list(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    return registry("datasets").list(pattern)


def describe(kind: str, name: str) -> dict[str, Any]:
    """Returns a dict describing one component: name, kind, aliases, source, options."""
    entry = registry(kind).get(name)
    options, _ = accepted_options(entry.load())
    return {
        "name": entry.name,
        "kind": kind,
        "aliases": list(entry.aliases),
        "description": entry.description,
        "source": entry.source,
        "version": entry.version,
        "options": options,
    }
