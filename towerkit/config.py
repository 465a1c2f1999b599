"""Recipes: TOML files that name every part of a training run, validated before work starts."""

from __future__ import annotations

import copy
import json
import difflib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from towerkit.errors import ConfigError
from towerkit.components import get_registry
from towerkit.registry import accepted_options

RECIPE_DIR = "recipes"

# Section -> {key: (type or tuple of types, default)}; None default = required.
FIXED_SECTIONS: dict[str, dict[str, tuple[Any, Any]]] = {
    "recipe": {"name": (str, ""), "description": (str, "")},
    "model": {"style": (str, "tfrs"), "train_metrics": (bool, False)},
    "optimizer": {"name": (str, "adagrad"), "learning_rate": ((int, float), 0.1)},
    "train": {
        "epochs": (int, 3),
        "batch_size": (int, 8192),
        "shuffle_buffer": (int, 100_000),
        "seed": (int, 42),
        "strategy": (str, "default"),
    },
    "evaluate": {
        "batch_size": (int, 4096),
        "ks": (list, [1, 5, 10, 50, 100]),
        "exclude_train": (bool, True),
        # Exact test top-k after every epoch, for history.csv and report.png.
        "every_epoch": (bool, True),
    },
    "export": {"enabled": (bool, True), "example_query": (str, "42")},
}
# Section -> registry kind; these take "name" plus the component's own options.
COMPONENT_SECTIONS = {
    "dataset": "datasets",
    "query_tower": "towers",
    "candidate_tower": "towers",
    "task": "tasks",
    "index": "indexes",
}
# Options the pipeline supplies itself, so a recipe may not set them.
SUPPLIED_OPTIONS = {"task": {"candidates"}, "index": {"query_model"}}
INDEX_PIPELINE_KEYS = {"k": (int, 10)}
OPTIMIZERS = ("adagrad", "adam", "sgd", "rmsprop", "adamw", "ftrl")
STYLES = ("tfrs", "train_step")


def list_recipes() -> list[str]:
    """Names of the recipes shipped with towerkit."""
    folder = resources.files("towerkit") / RECIPE_DIR
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def _read_toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin} is not valid TOML ({exc}); fix the syntax and run again.") from exc


def load_recipe(name_or_path: str) -> tuple[dict[str, Any], str]:
    """Reads a shipped recipe by name, or a TOML file by path; returns (raw config, origin)."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read recipe file {path} ({exc}); check the path.") from exc
        return _read_toml(text, str(path)), str(path)
    names = list_recipes()
    if name_or_path not in names:
        close = difflib.get_close_matches(name_or_path, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"unknown recipe '{name_or_path}'; {hint}recipes: {', '.join(names)} (or pass a .toml path)."
        )
    text = (resources.files("towerkit") / RECIPE_DIR / f"{name_or_path}.toml").read_text(encoding="utf-8")
    return _read_toml(text, f"recipe '{name_or_path}'"), f"recipe '{name_or_path}'"


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """Parses ``--set section.key=value``; the value is TOML, or a bare string."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r} has no '='; write it as section.key=value.")
    dotted, raw = assignment.split("=", 1)
    keys = [k.strip() for k in dotted.split(".")]
    if len(keys) != 2 or not all(keys):
        raise ConfigError(f"--set {assignment!r} must name section.key, e.g. train.epochs=5.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return keys, value


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    for assignment in overrides:
        (section, key), value = parse_override(assignment)
        config.setdefault(section, {})[key] = value
    return config


def _type_name(expected: Any) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


def _check_type(value: Any, expected: Any, where: str) -> None:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise ConfigError(f"{where} must be {_type_name(expected)}, got {value!r}.")


def _unknown_key(key: str, allowed: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return ConfigError(f"unknown key '{key}' in {where}; {hint}allowed: {', '.join(sorted(allowed))}.")


def resolve(raw: dict[str, Any], origin: str) -> dict[str, Any]:
    """Validates a raw recipe and fills defaults; raises ConfigError naming key and origin."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin} must be a TOML table.")
    allowed_sections = list(FIXED_SECTIONS) + list(COMPONENT_SECTIONS)
    resolved: dict[str, Any] = {}
    for section in raw:
        if section not in allowed_sections:
            raise _unknown_key(section, allowed_sections, origin)
        if not isinstance(raw[section], dict):
            raise ConfigError(f"[{section}] in {origin} must be a table, got {raw[section]!r}.")
    for section, schema in FIXED_SECTIONS.items():
        given = raw.get(section, {})
        values = {}
        for key, value in given.items():
            if key not in schema:
                raise _unknown_key(key, list(schema), f"[{section}] of {origin}")
            _check_type(value, schema[key][0], f"{section}.{key} in {origin}")
            values[key] = value
        resolved[section] = {key: copy.deepcopy(values.get(key, default)) for key, (_, default) in schema.items()}
    for section, kind in COMPONENT_SECTIONS.items():
        resolved[section] = _resolve_component(raw.get(section), section, kind, origin)
    _check_values(resolved, origin)
    return resolved


def _resolve_component(given: dict[str, Any] | None, section: str, kind: str, origin: str) -> dict[str, Any]:
    if not given or "name" not in given:
        raise ConfigError(f"[{section}] in {origin} needs a 'name', e.g. name = \"...\" (see `towerkit list {kind}`).")
    name = given["name"]
    _check_type(name, str, f"{section}.name in {origin}")
    entry = get_registry(kind).get(name)
    options, takes_any = accepted_options(entry.load())
    pipeline_keys = INDEX_PIPELINE_KEYS if section == "index" else {}
    supplied = SUPPLIED_OPTIONS.get(section, set())
    allowed = [o for o in options if o not in supplied] + list(pipeline_keys)
    component = {"name": name}
    for key, value in given.items():
        # TOML has no null; from code, None means "the component's default".
        if key == "name" or value is None:
            continue
        if key in supplied or (not takes_any and key not in allowed):
            raise _unknown_key(key, ["name", *allowed], f"[{section}] ({get_registry(kind).noun} '{name}') of {origin}")
        if key in pipeline_keys:
            _check_type(value, pipeline_keys[key][0], f"{section}.{key} in {origin}")
        component[key] = value
    for key, (_, default) in pipeline_keys.items():
        component.setdefault(key, default)
    return component


def _check_positive(value: Any, where: str) -> None:
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{where} must be positive and finite, got {value!r}.")


def _check_values(config: dict[str, Any], origin: str) -> None:
    for section, key in (("train", "epochs"), ("train", "batch_size"), ("train", "shuffle_buffer"),
                         ("evaluate", "batch_size"), ("optimizer", "learning_rate"), ("index", "k")):
        _check_positive(config[section][key], f"{section}.{key} in {origin}")
    if config["train"]["seed"] < 0:
        raise ConfigError(f"train.seed in {origin} must be a non-negative integer, got {config['train']['seed']!r}.")
    if config["optimizer"]["name"].lower() not in OPTIMIZERS:
        raise _unknown_key(config["optimizer"]["name"], list(OPTIMIZERS), f"optimizer.name of {origin}")
    from towerkit.distribute import STRATEGIES

    if config["train"]["strategy"] not in STRATEGIES:
        raise _unknown_key(config["train"]["strategy"], list(STRATEGIES), f"train.strategy of {origin}")
    if config["model"]["style"] not in STYLES:
        raise ConfigError(f"model.style in {origin} must be one of {', '.join(STYLES)}, got {config['model']['style']!r}.")
    ks = config["evaluate"]["ks"]
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k <= 0 for k in ks):
        raise ConfigError(f"evaluate.ks in {origin} must be a non-empty list of positive integers, got {ks!r}.")


def component_config(section: dict[str, Any], drop: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    """Splits a resolved component section into its name and its options."""
    options = {k: v for k, v in section.items() if k != "name" and k not in drop}
    return section["name"], options


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes (quote, backslash, newline, \u plus 4 hex digits) are valid TOML too.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        # Inline tables, e.g. the features tower's encoders = {genre = "categorical"}; quoted keys are valid TOML.
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)} = {_toml_value(v)}"
                               for k, v in value.items() if v is not None) + "}"
    if value is None:
        raise ConfigError("TOML has no null; leave the key out instead.")
    raise ConfigError(f"cannot write {type(value).__name__} as TOML.")


def to_toml(config: dict[str, Any]) -> str:
    """Writes a resolved config (tables of scalars and lists) as TOML."""
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None)
        lines.append("")
    return "\n".join(lines)
