"""Loading an export for querying: TensorFlow (plus scann or the index's plugin), never the training code."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from towerkit.errors import DataError, TowerkitError
from towerkit.export_format import EXTERNAL_INDEX_DIR, FORMAT_VERSION, METADATA_FILE


class LoadedExport:
    """An export loaded for querying.

    Attributes:
        model: The loaded SavedModel object.
        metadata: The contents of towerkit.json.
    """

    def __init__(self, model: Any, metadata: dict[str, Any], path: str | os.PathLike = ".", index: Any = None):
        self.path = Path(path)
        self.model = model
        self.metadata = metadata
        self.signature = model.signatures["serving_default"]
        # Set for backends that save themselves: the SavedModel then only embeds queries.
        self.index = index

    @property
    def query_feature_keys(self) -> list[str]:
        return list(self.metadata["query_feature_keys"])

    def recommend(
        self, features: dict[str, Sequence[str]], exclusions: Sequence[Sequence[str]] | None = None
    ) -> tuple[Any, Any]:
        """Returns (scores, ids) for a batch of raw query features.

        Args:
            features: Query feature key -> one string per query.
            exclusions: Per query, candidate ids to leave out (e.g. seen items).
        """
        missing = [k for k in self.query_feature_keys if k not in features]
        if missing:
            raise TowerkitError(
                f"this export needs query feature(s) {', '.join(missing)}; pass them "
                f"(expected keys: {', '.join(self.query_feature_keys)})."
            )
        dtypes = self.metadata.get("query_feature_dtypes", {})
        try:
            inputs = {k: _as_input(features[k], dtypes.get(k, "string")) for k in self.query_feature_keys}
        except (TypeError, ValueError) as exc:
            raise TowerkitError(
                f"query features do not match this export's inputs {dtypes or 'strings'} ({exc}); pass values of those types."
            ) from exc
        if self.index is not None:
            embeddings = self.signature(**inputs)["embeddings"]
            if exclusions is None:
                scores, ids = self.index(embeddings)
            else:
                scores, ids = self.index.query_with_exclusions(embeddings, _padded(exclusions))
            return np.asarray(scores), np.asarray(ids)
        if exclusions is None:
            outputs = self.signature(**inputs)
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


def _padded(exclusions: Sequence[Sequence[str]]) -> tf.Tensor:
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
