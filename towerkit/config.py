"""Recipes: TOML files that name every part of a training run, validated before work starts."""

from __future__ import annotations

import copy
import json
import difflib
import math
import tomllib
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Any

from towerkit.errors import ConfigError
from towerkit.resources import available_memory_bytes, format_bytes, training_bytes
from towerkit.components import get_registry
from towerkit.registry import accepted_options

RECIPE_DIR = "recipes"

# Section -> {key: (type or tuple of types, default)}; None default = required.
FIXED_SECTIONS: dict[str, dict[str, tuple[Any, Any]]] = {
    "recipe": {"name": (str, ""), "description": (str, "")},
    # self_score_penalty: see towerkit.tasks.self_score (0: off).
    "model": {"style": (str, "tfrs"), "train_metrics": (bool, False), "self_score_penalty": ((int, float), 0.0)},
    "optimizer": {"name": (str, "adagrad"), "learning_rate": ((int, float), 0.1)},
    "train": {
        "epochs": (int, 3),
        "batch_size": (int, 8192),
        "shuffle_buffer": (int, 100_000),
        "seed": (int, 42),
        "strategy": (str, "default"),
        # Seconds a multi-worker run waits for its TF_CONFIG peers before giving up.
        "cluster_timeout": ((int, float), 120),
        # Training steps per call into TensorFlow (Keras' steps_per_execution): fewer
        # Python round trips at small batches; the trained weights are the same.
        "steps_per_execution": (int, 1),
        # Epochs without a better validation top-k before stopping (0: off); the best epoch is kept.
        "early_stopping_patience": (int, 0),
        "early_stopping_metric": (str, "top_100"),
        # strategy "parameter-server": how embedding tables are sharded over the ps tasks
        # ("min-size" or "fixed-shards"; num_shards 0 = one shard per ps task).
        "partitioner": (str, "min-size"),
        "num_shards": (int, 0),
        "min_shard_bytes": (int, 256 << 10),
    },
    "evaluate": {
        "batch_size": (int, 4096),
        "ks": (list, [1, 5, 10, 50, 100]),
        "exclude_train": (bool, True),
        # Exact test top-k after every epoch, for history.csv and report.png.
        "every_epoch": (bool, True),
        # Baselines beside the model: names or {name = ..., options}; [] = the dataset's own.
        "baselines": (list, []),
        # Evaluate on this many test queries, drawn at random (seeded by train.seed); 0 = every test query.
        "max_queries": (int, 0),
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
# Recipe optimizer name -> the tf.keras.optimizers class that implements it
# (the one TensorFlow-free table; the train job looks the class up by this name).
OPTIMIZERS = {
    "adagrad": "Adagrad",
    "adam": "Adam",
    "sgd": "SGD",
    "rmsprop": "RMSprop",
    "adamw": "AdamW",
    "ftrl": "Ftrl",
}
# Model styles: a tfrs.Model subclass, or a plain Keras model with its own train_step.
STYLES = ("tfrs", "train_step")

# Seeds reach numpy.random.seed, which takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
# Containers inside containers (the document and its tables count): recipes need 3.
MAX_NESTING = 10
# Sane upper bounds; memory is checked as well where a value allocates in proportion.
MAX_BATCH_SIZE = 2**20
# TensorFlow's shuffle reserves a slot of about this many bytes per buffer element
# up front, whatever the data size (2**31 - 1 slots crash the process).
SHUFFLE_SLOT_BYTES = 32
MAX_SHUFFLE_BUFFER = 2**24
MAX_EPOCHS = 100_000
MAX_LEARNING_RATE = 10**9
MAX_K = 2**20
MAX_CLUSTER_TIMEOUT = 86_400
MAX_STEPS_PER_EXECUTION = 10_000
MAX_NAME_LENGTH = 100
# Besides letters and digits; a name is one path component, never "." or "..".
NAME_PUNCTUATION = "._+- "


def list_recipes() -> list[str]:
    """Names of the recipes shipped with towerkit."""
    folder = resources.files("towerkit") / RECIPE_DIR
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_toml(text: str, origin: str) -> dict[str, Any]:
    """Parses recipe TOML; raises ConfigError naming ``origin`` for bad syntax or absurd nesting."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin} is not valid TOML ({exc}); fix the syntax and run again.") from exc
    except RecursionError as exc:
        raise _too_deep(origin) from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{origin} holds a value TOML cannot read ({str(exc)[:80]}); fix it and run again.") from exc
    check_nesting(raw, origin)
    return raw


def _too_deep(origin: str) -> ConfigError:
    return ConfigError(
        f"{origin} nests tables or lists more than {MAX_NESTING} levels deep; a recipe needs only "
        "[section] tables of plain values and short lists."
    )


def check_nesting(value: Any, origin: str) -> None:
    """Raises ConfigError if ``value`` nests dicts or lists more than MAX_NESTING deep.

    Iterative, so a hostile depth cannot exhaust Python's stack here or later
    (deepcopy, validation and TOML writing all recurse).
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else None
        if children is None:
            continue
        if depth > MAX_NESTING:
            raise _too_deep(origin)
        stack.extend((child, depth + 1) for child in children)


def load_recipe(name_or_path: str) -> tuple[dict[str, Any], str]:
    """Reads a shipped recipe by name, or a TOML file by path; returns (raw config, origin)."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read recipe file {path} ({exc}); check the path.") from exc
        return read_toml(text, str(path)), str(path)
    names = list_recipes()
    if name_or_path not in names:
        close = difflib.get_close_matches(name_or_path, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"unknown recipe '{name_or_path}'; {hint}recipes: {', '.join(names)} (or pass a .toml path)."
        )
    text = (resources.files("towerkit") / RECIPE_DIR / f"{name_or_path}.toml").read_text(encoding="utf-8")
    return read_toml(text, f"recipe '{name_or_path}'"), f"recipe '{name_or_path}'"


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """Parses ``--set section.key=value``; the value is TOML, or a bare string.

    One assignment is one line: a newline or other control character would
    let TOML read part of it and drop the rest, so it is refused.
    """
    if not isinstance(assignment, str):
        raise ConfigError(f"--set takes a string section.key=value, got {_show(assignment)}.")
    bad = next((ch for ch in assignment if unicodedata.category(ch) == "Cc"), None)
    if bad is not None:
        raise ConfigError(
            f"--set {_show(assignment)} contains the control character {bad!r}; give one "
            "section.key=value per --set, on one line."
        )
    if "=" not in assignment:
        raise ConfigError(f"--set {_show(assignment)} has no '='; write it as section.key=value.")
    dotted, raw = assignment.split("=", 1)
    keys = [k.strip() for k in dotted.split(".")]
    if len(keys) != 2 or not all(keys):
        raise ConfigError(f"--set {_show(assignment)} must name section.key, e.g. train.epochs=5.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError as exc:
        raise _too_deep(f"--set {_show(assignment)}") from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"--set {_show(assignment)} has a value TOML cannot read ({str(exc)[:80]}).") from exc
    check_nesting(value, f"--set {_show(assignment)}")
    return keys, value


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, shortened: error messages quote user input with it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Returns a copy of a raw recipe with each ``--set section.key=value`` applied."""
    check_nesting(config, "the recipe")
    config = copy.deepcopy(config)
    for assignment in overrides:
        (section, key), value = parse_override(assignment)
        table = config.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"--set {_show(assignment)} needs [{section}] to be a table, got {_show(table)}.")
        table[key] = value
    return config


def check_export_overrides(overrides: list[str]) -> None:
    """Raises ConfigError for an ``export --set`` outside [index]: anything else would change the trained model."""
    for assignment in overrides:
        (section, key), _ = parse_override(assignment)
        if section != "index":
            raise ConfigError(
                f"export --set {_show(assignment)} would change the trained model; export may change only the "
                "index (e.g. index.name=scann or index.k=100), so train again to change anything else."
            )


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
        raise ConfigError(f"{where} must be {_type_name(expected)}, got {_show(value)}.")


def _quote(name: Any) -> str:
    """A key or name for a message: 'name' when it is short and printable, else its shortened repr."""
    if isinstance(name, str) and name.isprintable() and len(name) <= 60:
        return f"'{name}'"
    return _show(name)


def _unknown_key(key: str, allowed: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, allowed, n=1) if isinstance(key, str) else []
    hint = f"did you mean '{close[0]}'? " if close else ""
    return ConfigError(f"unknown key {_quote(key)} in {where}; {hint}allowed: {', '.join(sorted(allowed))}.")


def resolve(raw: dict[str, Any], origin: str) -> dict[str, Any]:
    """Validates a raw recipe and fills defaults; raises ConfigError naming key and origin."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin} must be a TOML table.")
    check_nesting(raw, origin)
    allowed_sections = list(FIXED_SECTIONS) + list(COMPONENT_SECTIONS)
    resolved: dict[str, Any] = {}
    for section in raw:
        if section not in allowed_sections:
            raise _unknown_key(section, allowed_sections, origin)
        if not isinstance(raw[section], dict):
            raise ConfigError(f"[{section}] in {origin} must be a table, got {_show(raw[section])}.")
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
    if not name.isprintable() or len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"{section}.name in {origin} must be a component name, got {_show(name)}; "
                          f"see `towerkit list {kind}`.")
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


def _check_positive(value: Any, where: str, most: float = math.inf) -> None:
    if not value > 0 or value == math.inf:
        raise ConfigError(f"{where} must be positive and finite, got {_show(value)}.")
    if value > most:
        raise ConfigError(f"{where} must be at most {most:,}, got {value:,}.")


def check_ks(ks: Any, name: str = "ks") -> list[int]:
    """Returns ``ks`` (the cut-offs of top-k metrics) if it is a non-empty list of sane positive ints.

    The one check of ``ks`` for recipes and components alike.
    """
    if (not isinstance(ks, (list, tuple)) or not ks
            or any(isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= MAX_K for k in ks)):
        raise ConfigError(f"{name} must be a non-empty list of positive integers up to {MAX_K:,}, "
                          f"got {_show(ks)}; e.g. [10, 100].")
    return list(ks)


def check_recipe_name(name: Any, where: str) -> str:
    """Returns ``name`` if it can name a run directory: one path component, no dot-names.

    A recipe's name becomes ``towerkit-runs/NAME``, so a separator, ``..`` or
    an absolute path would put the run somewhere the user did not ask for.
    """
    ok = (isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH and name[0].isalnum()
          and not name.endswith(" ") and ".." not in name
          and all(ch.isalnum() or ch in NAME_PUNCTUATION for ch in name))
    if not ok:
        raise ConfigError(
            f"{where} must be a plain name (letters, digits, spaces and {' '.join(NAME_PUNCTUATION.strip())}, "
            f"starting with a letter or digit, no '..', at most {MAX_NAME_LENGTH} characters), got {_show(name)}; "
            "choose the output directory with --output instead."
        )
    return name


def _is_seed_key(key: Any) -> bool:
    return isinstance(key, str) and (key == "seed" or key.endswith("_seed"))


def check_seed(value: Any, name: str = "seed") -> int:
    """Returns ``value`` if it is a usable random seed: an int from 0 to 2**32 - 1 (numpy's range)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{name} must be an integer from 0 to {MAX_SEED:,} (2**32 - 1), got {_show(value)}.")
    return value


def _check_seeds(config: dict[str, Any], origin: str) -> None:
    """Every seed, in any section (train.seed, dataset.seed, dataset.split_seed, ...), fits numpy's range."""
    for section, values in config.items():
        for key, value in values.items():
            if _is_seed_key(key):
                check_seed(value, f"{section}.{key} in {origin}")


def _check_memory(config: dict[str, Any], origin: str) -> None:
    """Refuses batch and shuffle sizes whose memory alone exceeds what the machine has free."""
    available = available_memory_bytes()
    if available is None:
        return
    batch = config["train"]["batch_size"]
    # In-batch negatives score every query of a batch against every candidate of it.
    needs = {"train.batch_size": training_bytes(batch * batch),
             "train.shuffle_buffer": config["train"]["shuffle_buffer"] * SHUFFLE_SLOT_BYTES}
    for where, size in needs.items():
        if size > available:
            section, key = where.split(".")
            raise ConfigError(
                f"{where} in {origin} is {config[section][key]:,}, which needs about {format_bytes(size)} "
                f"of memory, but only {format_bytes(available)} is available; choose a smaller value."
            )


def _check_values(config: dict[str, Any], origin: str) -> None:
    bounds = {("train", "epochs"): MAX_EPOCHS, ("train", "batch_size"): MAX_BATCH_SIZE,
              ("train", "shuffle_buffer"): MAX_SHUFFLE_BUFFER, ("train", "cluster_timeout"): MAX_CLUSTER_TIMEOUT,
              ("train", "steps_per_execution"): MAX_STEPS_PER_EXECUTION,
              ("evaluate", "batch_size"): MAX_BATCH_SIZE, ("optimizer", "learning_rate"): MAX_LEARNING_RATE,
              ("index", "k"): MAX_K}
    for (section, key), most in bounds.items():
        _check_positive(config[section][key], f"{section}.{key} in {origin}", most)
    _check_seeds(config, origin)
    if config["recipe"]["name"]:
        check_recipe_name(config["recipe"]["name"], f"recipe.name in {origin}")
    if config["optimizer"]["name"].lower() not in OPTIMIZERS:
        raise _unknown_key(config["optimizer"]["name"], list(OPTIMIZERS), f"optimizer.name of {origin}")
    from towerkit.distribute import STRATEGIES, check_partitioning

    if config["train"]["strategy"] not in STRATEGIES:
        raise _unknown_key(config["train"]["strategy"], list(STRATEGIES), f"train.strategy of {origin}")
    check_partitioning(config["train"])
    if not (config["model"]["self_score_penalty"] >= 0 and math.isfinite(config["model"]["self_score_penalty"])):
        raise ConfigError(f"model.self_score_penalty in {origin} must be 0 (off) or a positive finite weight, "
                          f"got {_show(config['model']['self_score_penalty'])}.")
    if config["model"]["self_score_penalty"] and config["train"]["strategy"] == "parameter-server":
        # Its candidate table is captured by the step function as local constants; that is untested on remote workers.
        raise ConfigError(f"model.self_score_penalty in {origin} is not supported with train.strategy "
                          "\"parameter-server\" yet; set it to 0, or train with another strategy.")
    if config["model"]["style"] not in STYLES:
        raise ConfigError(f"model.style in {origin} must be one of {', '.join(STYLES)}, "
                          f"got {_show(config['model']['style'])}.")
    check_ks(config["evaluate"]["ks"], f"evaluate.ks in {origin}")
    if config["evaluate"]["max_queries"] < 0:
        raise ConfigError(f"evaluate.max_queries in {origin} must be 0 (every test query) or a positive number "
                          f"of test queries to sample, got {config['evaluate']['max_queries']}.")
    from towerkit.baselines import check_specs

    check_specs(config["evaluate"]["baselines"], f"evaluate.baselines in {origin}")
    _check_memory(config, origin)


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
