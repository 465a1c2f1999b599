"""Baselines: classic recommenders scored in the same exact top-k evaluation as the model.

A baseline is a registered component (kind ``baselines``, hook
``register_baselines``) built from keyword options, with one method::

    fit(data) -> scorer

``data`` is a :class:`towerkit.RetrievalDataset`; the baseline may read only
``data.train_rows`` of its interactions (never test or validation rows). The
scorer maps an array of query ids (the dataset's ``query_id_key`` values) to a
``[len(ids), num_candidates]`` float array of scores in candidate order, so
:func:`towerkit.evaluation.topk_from_scores` ranks it exactly like the model.
A query the baseline never saw in training must still get finite scores
(popularity, say), never a constant row, which would tie every candidate.

Cold start: a dataset may also have ``history_rows`` (``movielens-100k`` with
``split = "cold-start"``): the given history of queries held out of training,
such as a new user's first ratings. A baseline never learns from them, but
its scorer may read them to score those queries, as a new user's ratings
would be read at serving time, without refitting. ``train_matrix(data)``
keeps them apart (``given``), and ``query_items(ids)`` gives each query's
training items or, for a held-out query, its given history.

A recipe picks the baselines with ``evaluate.baselines``: names, or tables
with a ``name`` and the baseline's options::

    [evaluate]
    baselines = ["popularity", {name = "ease", l2 = 500.0}]

Example:
    >>> scorer = towerkit.get_registry("baselines").create("ease", l2=100.0).fit(data)
    >>> scorer(np.array(["138", "92"])).shape
    (2, 1682)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from towerkit.components import get_registry
from towerkit.errors import ConfigError
from towerkit.registry import check_config

# Query ids -> [len(ids), num_candidates] scores in candidate order.
Scorer = Callable[[np.ndarray], np.ndarray]


def baseline_name(spec: str | Mapping[str, Any]) -> str:
    """The label a baseline spec is reported under: its name, with options if any (``ease(l2=100)``)."""
    if isinstance(spec, str):
        return spec
    options = {k: v for k, v in spec.items() if k != "name"}
    return f"{spec['name']}({', '.join(f'{k}={v}' for k, v in options.items())})" if options else str(spec["name"])


def check_spec(spec: Any, where: str) -> None:
    """Raises ConfigError unless ``spec`` is a baseline name or a table with a string ``name``."""
    if isinstance(spec, str):
        return
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ConfigError(
            f"{where} must be a baseline name or a table with a 'name' (e.g. {{name = \"ease\", l2 = 500.0}}), "
            f"got {spec!r}; registered baselines: {', '.join(get_registry('baselines').names())}."
        )


def create_baseline(spec: str | Mapping[str, Any]) -> Any:
    """Builds a registered baseline from a name or ``{"name": ..., **options}``."""
    check_spec(spec, "a baseline")
    if isinstance(spec, str):
        return get_registry("baselines").create(spec)
    return get_registry("baselines").create(spec["name"], **{k: v for k, v in spec.items() if k != "name"})


def fit_baseline(spec: str | Mapping[str, Any], data: Any) -> tuple[str, Scorer]:
    """Builds and fits a baseline on the training rows; returns (label, scorer)."""
    return baseline_name(spec), create_baseline(spec).fit(data)


def check_specs(specs: Any, where: str) -> list[Any]:
    """Checks a recipe's ``evaluate.baselines`` before training: known names, accepted options.

    Raises:
        ConfigError: Not a list of specs, or an option the baseline does not take.
        UnknownComponentError: An unknown name (with close matches).
    """
    if not isinstance(specs, (list, tuple)):
        raise ConfigError(f"{where} must be a list of baseline names, e.g. [\"popularity\", \"ease\"], got {specs!r}.")
    registry = get_registry("baselines")
    for spec in specs:
        check_spec(spec, f"each entry of {where}")
        name = spec if isinstance(spec, str) else spec["name"]
        entry = registry.get(name)
        if not isinstance(spec, str):
            check_config(entry.load(), {k: v for k, v in spec.items() if k != "name"}, f"baseline '{entry.name}'")
    return list(specs)
