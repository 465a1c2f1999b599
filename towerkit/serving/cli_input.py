"""Queries as ``towerkit recommend`` takes them: ``--user``, ``--feature KEY=VALUE`` or ``--query-json``."""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any, Mapping, Sequence

from towerkit.serving.queries import FeatureSpec, QueryError, check_feature_names

# A query in --query-json may carry its own exclusions under this key, as an HTTP instance does.
EXCLUDE_KEY = "exclude"


def parse_feature_value(key: str, text: str, spec: FeatureSpec) -> Any:
    """One ``--feature KEY=VALUE`` value, typed by the export's spec.

    A string feature takes the text as typed (as bytes, so ids that are not UTF-8 reach the model
    unchanged); numbers and booleans are read as JSON; a list (``[1, 4]`` or ``["a", "b"]``) as
    JSON or TOML.
    """
    if spec.dtype == "string" and not spec.ragged:
        return os.fsencode(text)
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        raise QueryError(f"--feature {key}={text} is not {spec.describe()}; write e.g. "
                         f"{key}={_example(spec)}.", key) from None


def _example(spec: FeatureSpec) -> str:
    element = {"string": '"a"', "bool": "true"}.get(spec.dtype, "1.5" if "float" in spec.dtype else "3")
    return f"[{element},{element}]" if spec.ragged else element.strip('"')


def query_from_features(pairs: Sequence[str], specs: Mapping[str, FeatureSpec]) -> dict[str, Any]:
    """One query from repeated ``KEY=VALUE`` options."""
    query: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise QueryError(f"--feature takes KEY=VALUE, got {pair!r}; write e.g. --feature "
                             f"{next(iter(specs))}=...", "feature")
        if key in query:
            raise QueryError(f"--feature {key} is given twice; pass each feature once.", key)
        check_feature_names([key], {key: specs[key]} if key in specs else specs, where="--feature: ")
        query[key] = parse_feature_value(key, text, specs[key])
    check_feature_names(list(query), specs, where="--feature: ")
    return query


def queries_from_json(source: str) -> list[dict[str, Any]]:
    """Queries from a JSON file (or ``-`` for stdin): one object, or a list of objects."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise QueryError(f"cannot read --query-json {source} ({exc.strerror or exc}); pass a readable JSON file "
                         "or - for standard input.", "query-json") from None
    except UnicodeDecodeError:
        raise QueryError(f"--query-json {source} is not UTF-8 text; pass a JSON file.", "query-json") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise QueryError(f"--query-json {source} is not valid JSON ({exc}); pass one object per query, "
                         'or a list of them, e.g. {"user_id": "42"}.', "query-json") from None
    queries = value if isinstance(value, list) else [value]
    if not queries or not all(isinstance(query, dict) for query in queries):
        raise QueryError(f"--query-json {source} must hold a JSON object per query (or a non-empty list of "
                         'them), e.g. {"user_id": "42"}.', "query-json")
    return queries


def split_exclusions(queries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any] | None]:
    """Takes each query's optional "exclude" list out of its features."""
    if not any(EXCLUDE_KEY in query for query in queries):
        return queries, None
    features = [{k: v for k, v in query.items() if k != EXCLUDE_KEY} for query in queries]
    return features, [query.get(EXCLUDE_KEY, []) for query in queries]


def columns(queries: list[dict[str, Any]], specs: Mapping[str, FeatureSpec]) -> dict[str, list[Any]]:
    """Per-query dicts as one column per feature, naming the first query that lacks a feature."""
    for position, query in enumerate(queries):
        check_feature_names(list(query), specs, where=f"query {position}: ")
    return {key: [query[key] for query in queries] for key in specs}
