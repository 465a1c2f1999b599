"""The public way to reach registered components: look up, build, list and describe.

Every function here loads the plugins first (once), then asks the registries
in :mod:`towerkit.registry`. Keeping these functions apart from the storage
lets :mod:`towerkit.plugins` fill the registries without importing the module
that calls it back.
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
from typing import Any, Callable

from towerkit import plugins
from towerkit.errors import UnknownComponentError
from towerkit.registry import KINDS, REGISTRIES, Registry, accepted_options

# Constructor arguments that are not component options: ``name`` is a Keras
# layer's own name, and in a recipe ``name`` already picks the component.
NOT_OPTIONS = frozenset({"name"})


def get_registry(kind: str) -> Registry:
    """Returns the registry of a kind ("towers", "tasks", "indexes", "datasets", "baselines"), loading plugins on first use.

    Raises:
        UnknownComponentError: ``kind`` is not one of the kinds.
    """
    if kind not in REGISTRIES:
        close = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UnknownComponentError(f"unknown component kind '{kind}'; {hint}kinds are: {', '.join(KINDS)}.")
    plugins.load_plugins()
    return REGISTRIES[kind]


def create_tower(name: str, **config: Any) -> Any:
    """Builds a registered tower by name.

    Example:
        >>> tower = towerkit.create_tower("user", vocabulary=["1", "2"], embedding_dim=8)
    """
    return get_registry("towers").create(name, **config)


def create_task(name: str, **config: Any) -> Any:
    """Builds a registered task by name."""
    return get_registry("tasks").create(name, **config)


def create_index(name: str, **config: Any) -> Any:
    """Builds a registered index backend by name."""
    return get_registry("indexes").create(name, **config)


def load_dataset(name: str, **config: Any) -> Any:
    """Loads a registered dataset by name; ``config`` goes to its constructor (a recipe's ``[dataset]`` keys)."""
    return get_registry("datasets").create(name, **config)


def list_towers(pattern: str = "*") -> list[str]:
    """The registered tower names matching an fnmatch pattern, sorted."""
    return get_registry("towers").list(pattern)


def list_tasks(pattern: str = "*") -> list[str]:
    """The registered task names matching an fnmatch pattern, sorted."""
    return get_registry("tasks").list(pattern)


def list_indexes(pattern: str = "*") -> list[str]:
    """The registered index names matching an fnmatch pattern, sorted."""
    return get_registry("indexes").list(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    """The registered dataset names matching an fnmatch pattern, sorted."""
    return get_registry("datasets").list(pattern)


def describe(kind: str, name: str) -> dict[str, Any]:
    """Describes one component: name, kind, aliases, source, and each option's type, default and doc line.

    Example:
        >>> towerkit.describe("towers", "user")["options"]["embedding_dim"]
        {'type': 'int', 'default': 32, 'required': False, 'doc': 'Width of the embeddings (and of the output, ...'}
    """
    entry = get_registry(kind).get(name)
    factory = entry.load()
    return {
        "name": entry.name,
        "kind": kind,
        "aliases": list(entry.aliases),
        "description": entry.description,
        "source": entry.source,
        "version": entry.version,
        "options": describe_options(factory),
    }


def describe_options(factory: Callable[..., Any]) -> dict[str, dict[str, Any]]:
    """Each keyword option of a factory, in signature order: its type, default, whether it is required, and its doc line."""
    names, _ = accepted_options(factory)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    docs = _argument_docs(factory)
    options = {}
    for option in names:
        if option in NOT_OPTIONS:
            continue
        parameter = parameters[option]
        required = parameter.default is inspect.Parameter.empty
        default = None if required else parameter.default
        options[option] = {
            "type": _type_name(parameter.annotation, default),
            "default": default if _is_json(default) else repr(default),
            "required": required,
            "doc": docs.get(option, ""),
        }
    return options


def _type_name(annotation: Any, default: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return type(default).__name__ if default is not None else ""
    if isinstance(annotation, str):  # postponed annotations (from __future__ import annotations)
        return annotation
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


_ARG_LINE = re.compile(r"^(\s*)([A-Za-z_][\w, ]*?)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _argument_docs(factory: Callable[..., Any]) -> dict[str, str]:
    """The first line of each argument's entry in the Google-style ``Args:`` section(s) of a factory."""
    docs: dict[str, str] = {}
    sources = [factory, factory.__init__] if inspect.isclass(factory) else [factory]
    for source in sources:
        for option, line in _args_section(inspect.getdoc(source) or "").items():
            docs.setdefault(option, line)
    return docs


def _args_section(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() in ("Args:", "Arguments:"))
    except StopIteration:
        return found
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:  # the next section ("Returns:", "Example:") ends this one
            break
        match = _ARG_LINE.match(line)
        if match and (indent is None or depth == indent):
            indent = depth
            for option in match.group(2).split(","):
                found[option.strip()] = match.group(3).strip()
    return found
