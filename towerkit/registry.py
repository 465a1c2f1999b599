"""Named registries of components: towers, tasks, indexes and datasets.

Components are registered by plugins (the built-ins included) through the
hooks in :mod:`towerkit.hookspecs`; this module only stores and resolves them.
It imports no other towerkit module but the errors: loading plugins lives in
:mod:`towerkit.plugins`, and the public functions that load plugins before
they look anything up (``get_registry``, ``create_tower`` ...) live in
:mod:`towerkit.components`.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import importlib
import inspect
import sys
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
    "baselines": "baseline",
}


# Callbacks that add advice to an unknown-name error (towerkit.plugins adds why some plugins are
# not loaded); callbacks rather than an import, so that this module depends on no plugin loading.
UNKNOWN_NAME_HINTS: list[Callable[[str], str]] = []


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


@dataclass(eq=False)  # entries compare by identity: two registrations are two entries
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
        shadowed_by: For an entry that lost a name clash, the distribution
            that won it; such an entry resolves only as ``source:name``.
    """

    name: str
    factory: Any
    kind: str
    aliases: tuple[str, ...] = ()
    description: str = ""
    source: str = BUILTIN_SOURCE
    version: str = ""
    shadowed_by: str = ""
    _resolved: Any = field(default=None, repr=False)

    def load(self) -> Callable[..., Any]:
        """Returns the factory, importing a lazy ``"module:attr"`` on first use."""
        if self._resolved is None:
            factory = self.factory
            if isinstance(factory, str):
                factory = self._import(factory)
            self._resolved = factory
        return self._resolved

    def _import(self, factory: str) -> Any:
        module_name, _, attr = factory.partition(":")
        builtin = self.source == BUILTIN_SOURCE
        # A plugin's module is plugin code: any failure there (even sys.exit) is its fault, and
        # its prints go to stderr so that stdout stays clean for --json.
        failures = (ImportError, AttributeError) if builtin else (Exception, SystemExit)
        try:
            with contextlib.nullcontext() if builtin else contextlib.redirect_stdout(sys.stderr):
                return getattr(importlib.import_module(module_name), attr)
        except failures as exc:
            raise TowerkitError(
                f"{KINDS[self.kind]} '{self.name}' from {self.source} could not be "
                f"imported from '{factory}' ({type(exc).__name__}: {exc}); reinstall {self.source} "
                "or report it to its author."
            ) from exc


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

    Each name (or alias) resolves to one active entry. An entry that lost a
    name clash to another distribution is kept as *shadowed*: it is reachable
    only by its qualified name ``distribution:name``.

    Args:
        kind: The plural kind, one of :data:`KINDS`.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self.noun = KINDS[kind]
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._shadowed: list[Entry] = []

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
        a different factory under a name or alias already taken raises
        :class:`DuplicateComponentError` unless ``override`` is true. Then the
        new entry takes the name; an entry it displaces from another source is
        kept as shadowed (still reachable as ``source:name``), one from the
        same source is replaced.
        """
        entry = self._new_entry(name, factory, aliases, description, source, version)
        existing = self._lookup(name)
        if existing is not None and existing.name == name and existing.factory == factory and not override:
            return existing
        clashes = self._clashes(entry)
        if clashes and not override:
            other = clashes[0]
            raise DuplicateComponentError(
                f"{self.noun} '{name}' is already registered by {other.source}, and "
                f"{source} registers a different one; rename one of them, or pass "
                "override=True to replace it."
            )
        for other in clashes:
            self._detach(other)
            if other.source != source:
                other.shadowed_by = source
                self._shadowed.append(other)
        self._activate(entry)
        return entry

    def register_shadowed(self, name: str, factory: Any, *, aliases: Iterable[str] = (), description: str = "",
                          source: str = BUILTIN_SOURCE, version: str = "") -> Entry:
        """Keeps a component that lost a name clash, reachable only as ``source:name``."""
        entry = self._new_entry(name, factory, aliases, description, source, version)
        winner = self._clashes(entry)
        entry.shadowed_by = winner[0].source if winner else ""
        if not winner:
            self._activate(entry)
        else:
            self._shadowed.append(entry)
        return entry

    def _new_entry(self, name, factory, aliases, description, source, version) -> Entry:
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
        return Entry(name=name, factory=factory, kind=self.kind, aliases=aliases,
                     description=description, source=source, version=version)

    def _clashes(self, entry: Entry) -> list[Entry]:
        """The active entries that already answer to the entry's name or one of its aliases."""
        found = [self._lookup(key) for key in (entry.name, *entry.aliases) if ":" not in key]
        return list({id(e): e for e in found if e is not None}.values())

    def _activate(self, entry: Entry) -> None:
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name

    def remove(self, entry: Entry) -> bool:
        """Removes one entry (active or shadowed); returns whether it was registered here.

        When an active entry goes, the first shadowed entry that clashed with
        it, if any, takes its place.
        """
        if entry in self._shadowed:
            self._shadowed.remove(entry)
            return True
        if self._entries.get(entry.name) is not entry:
            return False
        self._detach(entry)
        for waiting in list(self._shadowed):
            if not self._clashes(waiting):
                self._shadowed.remove(waiting)
                waiting.shadowed_by = ""
                self._activate(waiting)
        return True

    def _detach(self, entry: Entry) -> None:
        """Takes an active entry out of the name and alias tables."""
        del self._entries[entry.name]
        for alias in entry.aliases:
            if self._aliases.get(alias) == entry.name:
                del self._aliases[alias]

    def unregister(self, name: str) -> None:
        """Removes the active entry that ``name`` resolves to."""
        self.remove(self.get(name))

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
            for entry in self._shadowed:
                if entry.source == source and short in (entry.name, *entry.aliases):
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
        extra = "".join(f" {advice}" for advice in (h(name) for h in UNKNOWN_NAME_HINTS) if advice)
        return (
            f"unknown {self.noun} '{name}'; {hint}registered {self.kind}: "
            f"{', '.join(self.names()) or '(none)'}.{extra}"
        )

    def names(self, include_aliases: bool = False) -> list[str]:
        """The sorted names of the active entries (and their aliases, if asked)."""
        names = set(self._entries)
        if include_aliases:
            names |= set(self._aliases)
        return sorted(names)

    def list(self, pattern: str = "*") -> list[str]:
        """Returns the sorted canonical names matching an fnmatch pattern."""
        return [n for n in self.names() if fnmatch.fnmatchcase(n, pattern)]

    def entries(self, include_shadowed: bool = False) -> list[Entry]:
        """The active entries by name, then (if asked) the shadowed ones."""
        active = [self._entries[n] for n in self.names()]
        return active + (sorted(self._shadowed, key=lambda e: (e.name, e.source)) if include_shadowed else [])

    def create(self, name: str, **config: Any) -> Any:
        """Builds the component ``name`` from keyword config.

        The result is tagged with ``registered_name`` (where it takes
        attributes), so that error messages can name the component as the user
        wrote it rather than, say, its Keras layer name.
        """
        entry = self.get(name)
        factory = entry.load()
        check_config(factory, config, f"{self.noun} '{entry.name}'")
        component = factory(**config)
        try:
            component.registered_name = entry.name
        except (AttributeError, TypeError):  # e.g. built-in types or __slots__ classes
            pass
        return component


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
