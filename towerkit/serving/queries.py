"""Checking raw query features against an export's input specs, naming the offending field.

Shared by :meth:`LoadedExport.recommend`, ``towerkit recommend`` and ``towerkit serve``, so the
three reject the same inputs with the same words. Free of TensorFlow: the HTTP server checks a
request before it queues it for the model.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from towerkit.errors import TowerkitError


class QueryError(TowerkitError, ValueError):
    """A query is malformed: a missing or unknown feature, a value of the wrong type, a bad k.

    Attributes:
        field: The offending field, e.g. ``"user_id"``, ``"exclude"`` or ``"k"``.
    """

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class FeatureSpec:
    """What one query feature takes: its element dtype, and whether each query holds a list of them."""

    dtype: str
    ragged: bool

    @classmethod
    def from_name(cls, name: str) -> "FeatureSpec":
        """Parses a towerkit.json dtype name such as ``"string"`` or ``"ragged:int64"``."""
        if name.startswith("ragged:"):
            return cls(name[len("ragged:"):], True)
        return cls(name, False)

    def describe(self) -> str:
        element = ELEMENT_WORDS.get(self._kind(), self.dtype)
        precision = "" if self.dtype in ("string", "bool") else f" ({self.dtype})"
        return f"a list of {element}s{precision}" if self.ragged else f"{_article(element)} {element}{precision}"

    def _kind(self) -> str:
        if self.dtype == "string":
            return "string"
        if self.dtype == "bool":
            return "bool"
        if self.dtype.startswith(("int", "uint")):
            return "int"
        if self.dtype.startswith(("float", "bfloat", "double", "half")):
            return "float"
        return "other"

    def coerce_element(self, value: Any) -> Any | None:
        """The value as the model takes it, or None when it is not of this spec's element type."""
        kind = self._kind()
        if isinstance(value, np.generic):
            value = value.item()  # NumPy scalars, as data columns hold them, become plain Python values
        if kind == "string":
            if isinstance(value, str):
                return as_bytes(value)
            return bytes(value) if isinstance(value, bytes) else None
        if isinstance(value, bool):
            return value if kind == "bool" else None
        if kind == "int" and isinstance(value, int):
            return value
        if kind == "float" and isinstance(value, (int, float)):
            return float(value)
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "ragged": self.ragged}


def as_bytes(text: str) -> bytes:
    """A string as the model's bytes: UTF-8, with bytes the shell could not decode restored, and
    lone surrogates (which JSON can spell) kept rather than refused."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


ELEMENT_WORDS = {"string": "string", "int": "integer", "float": "number", "bool": "boolean"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_feature_names(given: Sequence[str], specs: Mapping[str, FeatureSpec], where: str = "") -> None:
    """Raises QueryError for the first missing or unknown feature name, suggesting close matches."""
    expected = "; ".join(f"{key}: {spec.describe()}" for key, spec in specs.items())
    for key in given:
        if key not in specs:
            close = difflib.get_close_matches(str(key), list(specs), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise QueryError(f"{where}feature '{key}' is not one this export takes; {hint}it takes {expected}.",
                             str(key))
    for key in specs:
        if key not in given:
            raise QueryError(f"{where}feature '{key}' is missing; this export takes {expected}.", key)


def coerce_column(key: str, values: Any, spec: FeatureSpec) -> list[Any]:
    """One feature's values for a batch of queries, checked and converted; QueryError names the query."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not hasattr(values, "tolist"):
        raise QueryError(f"feature '{key}' must be a list with one value per query, got {_shown(values)}.", key)
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    column = []
    for position, value in enumerate(values):
        if spec.ragged:
            if isinstance(value, np.ndarray):
                value = value.tolist()
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise _type_error(key, position, value, spec)
            elements = [spec.coerce_element(element) for element in value]
            if any(element is None for element in elements):
                raise _type_error(key, position, value, spec)
            column.append(elements)
        else:
            element = spec.coerce_element(value)
            if element is None:
                raise _type_error(key, position, value, spec)
            column.append(element)
    return column


def _type_error(key: str, position: int, value: Any, spec: FeatureSpec) -> QueryError:
    return QueryError(f"feature '{key}' of query {position} must be {spec.describe()}, got {_shown(value)}.", key)


def coerce_exclusions(exclude: Any, batch: int) -> list[list[bytes]]:
    """Per-query lists of candidate ids to leave out, checked against the batch size."""
    if isinstance(exclude, (str, bytes)) or not isinstance(exclude, Sequence):
        raise QueryError(f"exclude must be a list with one list of candidate ids per query, got {_shown(exclude)}.",
                         "exclude")
    if len(exclude) != batch:
        raise QueryError(f"exclude holds {len(exclude)} lists for {batch} queries; pass one list per query.",
                         "exclude")
    result = []
    for position, ids in enumerate(exclude):
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple)):
            raise QueryError(f"exclude of query {position} must be a list of candidate ids, got {_shown(ids)}.",
                             "exclude")
        row = []
        for item in ids:
            if isinstance(item, str):
                row.append(as_bytes(item))
            elif isinstance(item, bytes):
                row.append(item)
            else:
                raise QueryError(f"exclude of query {position} must hold candidate ids as strings, "
                                 f"got {_shown(item)}.", "exclude")
        result.append(row)
    return result


def check_requested_k(k: Any, most: int) -> int:
    """A requested number of results, between 1 and what the export returns."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= most:
        raise QueryError(f"k must be an integer from 1 to {most} (the results this export returns), got "
                         f"{_shown(k)}; ask for at most {most}, or export again with a larger index.k.", "k")
    return k
