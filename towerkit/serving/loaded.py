"""Loading an export for querying: TensorFlow (plus scann or the index's plugin), never the training code."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from towerkit.errors import DataError, TowerkitError
from towerkit.export_format import EXTERNAL_INDEX_DIR, FORMAT_VERSION, METADATA_FILE, QUERY_FEATURES_FILE
from towerkit.serving.queries import (
    FeatureSpec, QueryError, check_feature_names, check_requested_k, coerce_column, coerce_exclusions,
)


class LoadedExport:
    """An export loaded for querying, from Python or by ``towerkit serve``.

    Example:
        >>> export = towerkit.load_export("towerkit-runs/retrieval/model")
        >>> export.query_specs
        {'user_id': {'dtype': 'string', 'ragged': False}}
        >>> scores, ids = export.recommend({"user_id": ["42", "7"]}, k=5, exclude=[["Heat (1995)"], []])

    Attributes:
        model: The loaded SavedModel object.
        metadata: The contents of towerkit.json.
        path: The export directory.
    """

    def __init__(self, model: Any, metadata: dict[str, Any], path: str | os.PathLike = ".", index: Any = None):
        self.path = Path(path)
        self.model = model
        self.metadata = metadata
        self.signature = model.signatures["serving_default"]
        # Set for backends that save themselves: the SavedModel then only embeds queries.
        self.index = index
        self._specs = {key: FeatureSpec.from_name(metadata.get("query_feature_dtypes", {}).get(key, "string"))
                       for key in metadata["query_feature_keys"]}

    @property
    def query_feature_keys(self) -> list[str]:
        return list(self.metadata["query_feature_keys"])

    @property
    def query_specs(self) -> dict[str, dict[str, Any]]:
        """Query feature -> ``{"dtype": ..., "ragged": ...}``: what :meth:`recommend` takes per query."""
        return {key: spec.as_dict() for key, spec in self._specs.items()}

    @property
    def feature_specs(self) -> dict[str, FeatureSpec]:
        """Query feature -> its :class:`FeatureSpec` (what :attr:`query_specs` shows as dicts)."""
        return dict(self._specs)

    @property
    def k(self) -> int:
        """How many results per query the export returns (its index's k): the most ``recommend`` gives."""
        return int(self.metadata["index"].get("k", 10))

    @property
    def name(self) -> str:
        """The recipe's name, as recorded at export time ("model" if none was)."""
        return str(self.metadata.get("recipe") or "model")

    def check_query(self, features: Mapping[str, Any], exclude: Any = None, k: int | None = None
                    ) -> tuple[dict[str, list[Any]], list[list[bytes]] | None, int]:
        """Checks a batch of queries without running the model: (columns, exclusions, k).

        Raises:
            QueryError: Naming the first missing or unknown feature, wrongly typed value, or bad k.
        """
        if not isinstance(features, Mapping):
            raise QueryError(f"features must be a dict of feature -> one value per query, got "
                             f"{type(features).__name__}.", "features")
        features = self.with_known_features(features)
        check_feature_names(list(features), self._specs)
        columns = {key: coerce_column(key, features[key], spec) for key, spec in self._specs.items()}
        sizes = {len(column) for column in columns.values()}
        if len(sizes) > 1 or 0 in sizes:
            counts = ", ".join(f"{key}: {len(column)}" for key, column in columns.items())
            raise QueryError(f"every feature needs one value per query, and at least one query; got {counts}.",
                             next(iter(columns)))
        batch = sizes.pop()
        exclusions = None if exclude is None else coerce_exclusions(exclude, batch)
        return columns, exclusions, check_requested_k(self.k if k is None else k, self.k)

    @property
    def known_features(self) -> dict[str, Any] | None:
        """What the export knows of its training queries: ``{"id_feature": KEY, "features": {KEY: {ID: VALUE}}}``.

        Written by towerkit for a query tower that reads more than the query id
        (e.g. a user's latest history), so a known query can be served from its id alone.
        """
        if not hasattr(self, "_known_features"):
            known = self.read_json(QUERY_FEATURES_FILE)
            if known is not None and not (
                isinstance(known, dict) and isinstance(known.get("id_feature"), str)
                and isinstance(known.get("features"), dict)
                and all(isinstance(values, dict) for values in known["features"].values())
            ):
                raise DataError(f"{self.path / QUERY_FEATURES_FILE} is damaged (not an id feature and per-id "
                                "feature tables); export the model again.")
            self._known_features = known
        return self._known_features

    def with_known_features(self, features: Mapping[str, Any]) -> Mapping[str, Any]:
        """``features`` plus the query features the caller left out, filled in per query id.

        A query seen in training gets its features as of the end of training
        (see :attr:`known_features`); any other query gets an empty list for a
        list-valued feature (no history yet). Features the caller gives are
        never replaced, and a feature that cannot be filled stays missing.
        """
        known = self.known_features
        if not known or not isinstance(features, Mapping) or known["id_feature"] not in features:
            return features
        missing = [key for key in known["features"] if key in self._specs and key not in features]
        if not missing:
            return features
        ids = features[known["id_feature"]]
        try:
            ids = [] if isinstance(ids, (str, bytes)) else list(ids)
        except TypeError:
            ids = []
        if not ids:
            return features  # malformed or empty: check_query names the problem
        keys = [i.decode("utf-8", "replace") if isinstance(i, bytes) else str(i) for i in ids]
        filled = dict(features)
        for key in missing:
            values = known["features"][key]
            if self._specs[key].ragged or all(k in values for k in keys):
                filled[key] = [values.get(k, []) for k in keys]
        return filled

    def recommend(self, features: Mapping[str, Any], exclusions: Sequence[Sequence[str]] | None = None, *,
                  k: int | None = None, exclude: Sequence[Sequence[str]] | None = None) -> tuple[Any, Any]:
        """Top-k candidates for a batch of queries given as raw features.

        Args:
            features: Query feature -> one value per query (a list per query for a ragged feature);
                see :attr:`query_specs`.
            exclusions: The same as ``exclude`` (the older, positional name).
            k: Results per query, from 1 to :attr:`k` (default: all of them).
            exclude: Per query, candidate ids to leave out (e.g. items already seen). Where fewer
                than k candidates remain, the last slots hold id ``b""`` and score ``-inf``.

        Returns:
            ``(scores, ids)``: NumPy arrays of shape ``[queries, k]``; ids are bytes.

        Raises:
            QueryError: A missing or unknown feature, a value of the wrong type, or k out of range.
        """
        if exclusions is not None and exclude is not None:
            raise QueryError("pass exclusions either positionally or as exclude=, not both.", "exclude")
        columns, exclusions, k = self.check_query(features, exclude if exclude is not None else exclusions, k)
        scores, ids = self.run(columns, exclusions)
        return scores[:, :k], ids[:, :k]

    def run(self, columns: Mapping[str, list[Any]], exclusions: list[list[bytes]] | None) -> tuple[Any, Any]:
        """Runs the model on columns already checked by :meth:`check_query`: all k results per query."""
        inputs = {key: _as_input(columns[key], self.metadata.get("query_feature_dtypes", {}).get(key, "string"))
                  for key in self.query_feature_keys}
        if exclusions is not None and not any(exclusions):
            exclusions = None  # nothing to leave out: the plain signature is faster and gives the same
        # Exports since towerkit 0.1 carry `serve` functions that take ragged features whole;
        # older ones only have the signatures (dense features only).
        direct = getattr(self.model, "serve", None)
        if self.index is not None:
            embeddings = (direct(inputs) if direct is not None else self.signature(**inputs))["embeddings"]
            if exclusions is None:
                scores, ids = self.index(embeddings)
            else:
                scores, ids = self.index.query_with_exclusions(embeddings, _padded(exclusions))
            return np.asarray(scores), np.asarray(ids)
        if exclusions is None:
            outputs = direct(inputs) if direct is not None else self.signature(**inputs)
        elif direct is not None:
            outputs = self.model.serve_excluding(inputs, _padded(exclusions))
        else:
            outputs = self.model.signatures["serving_exclusions"](exclusions=_padded(exclusions), **inputs)
        return outputs["scores"].numpy(), outputs["ids"].numpy()

    def read_json(self, name: str) -> Any:
        """Reads an extra JSON file written beside the model, or None if there is none."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{path} is corrupt ({exc}); export the model again.") from exc


def _as_input(values: Sequence[Any], dtype_name: str) -> Any:
    if dtype_name.startswith("ragged:"):
        return tf.ragged.constant([list(v) for v in values], dtype=tf.as_dtype(dtype_name[len("ragged:"):]))
    return tf.constant(list(values), dtype=tf.as_dtype(dtype_name))


def _padded(exclusions: Sequence[Sequence[Any]]) -> tf.Tensor:
    """Ragged per-query exclusion lists as one ``[batch, width]`` string tensor ("" never matches an id)."""
    width = max(1, max((len(row) for row in exclusions), default=1))
    return tf.constant([list(row) + [""] * (width - len(row)) for row in exclusions], tf.string)


# Key -> (type, what it must be) of every key a reader relies on.
REQUIRED_KEYS = {
    "format_version": (int, "an integer"),
    "query_feature_keys": (list, "a list of feature names"),
    "index": (dict, "a table of index parameters"),
}


def check_metadata(metadata: Any, where: Path) -> None:
    """Raises DataError naming the first key of towerkit.json that is missing or of the wrong type."""
    if not isinstance(metadata, dict):
        raise DataError(f"{where} holds {type(metadata).__name__}, not a JSON object; export the model again.")
    for key, (expected, what) in REQUIRED_KEYS.items():
        value = metadata.get(key)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise DataError(f"{where} is damaged: '{key}' must be {what}, got {value!r}; export the model again.")
    version = metadata["format_version"]
    if version > FORMAT_VERSION:
        raise DataError(
            f"{where.parent} was written by towerkit {metadata.get('towerkit_version', '?')} in export format "
            f"{version}, newer than this towerkit reads ({FORMAT_VERSION}); upgrade towerkit."
        )
    if version < 1 or not all(isinstance(k, str) and k for k in metadata["query_feature_keys"]):
        raise DataError(f"{where} is damaged (format_version {version}, query_feature_keys "
                        f"{metadata['query_feature_keys']!r}); export the model again.")
    dtypes = metadata.get("query_feature_dtypes", {})
    if not isinstance(dtypes, dict) or not all(isinstance(v, str) for v in dtypes.values()):
        raise DataError(f"{where} is damaged: 'query_feature_dtypes' must map features to type names; export again.")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks an export's towerkit.json."""
    path = Path(path)
    meta_path = path / METADATA_FILE
    if not path.is_dir():
        raise DataError(f"{path} is not an export directory; pass the directory that `towerkit train` wrote.")
    if not meta_path.is_file() or not (path / "saved_model.pb").is_file():
        raise DataError(
            f"{path} is not a complete towerkit export (missing {METADATA_FILE} or saved_model.pb); "
            "export the model again."
        )
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_path} is corrupt ({exc}); export the model again.") from exc
    check_metadata(metadata, meta_path)
    return metadata


def load_export(path: str | os.PathLike) -> LoadedExport:
    """Loads an export directory written by :func:`save_export`.

    Raises:
        DataError: The directory is missing, incomplete, corrupt, or from a newer towerkit.
    """
    metadata = read_metadata(path)
    if metadata.get("index", {}).get("external"):
        return _load_external(path, metadata)
    if metadata.get("index", {}).get("backend") == "scann":
        try:
            from scann.scann_ops.py import scann_ops  # noqa: F401 - registers the Scann ops
        except ImportError as exc:
            raise TowerkitError(
                f"{path} holds a ScaNN index, which needs the scann package; `pip install scann==1.4.2`."
            ) from exc
    return LoadedExport(_load_saved_model(path), metadata, path)


def _load_saved_model(path: str | os.PathLike) -> Any:
    try:
        return tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001 - TF raises many types for a broken SavedModel
        raise DataError(f"cannot load the SavedModel in {path} ({type(exc).__name__}); export the model again.") from exc


def _load_external(path: str | os.PathLike, metadata: dict[str, Any]) -> LoadedExport:
    """Loads the query SavedModel plus an index that saved itself, through its plugin."""
    from towerkit.errors import UnknownComponentError
    from towerkit.components import get_registry

    backend = metadata["index"]["backend"]
    source = metadata.get("components", {}).get("index", {}).get("source", backend)
    from towerkit.plugins import missing_distribution_advice

    # The qualified name finds the exporting distribution's index even where another plugin shadows the name.
    qualified = f"{source}:{backend}" if source != backend else backend
    try:
        factory = get_registry("indexes").get(qualified).load()
    except UnknownComponentError:
        raise TowerkitError(
            f"{path} uses index '{backend}' from {source}, but {missing_distribution_advice(source)}."
        ) from None
    return LoadedExport(_load_saved_model(path), metadata, path, index=factory.load(Path(path) / EXTERNAL_INDEX_DIR))
