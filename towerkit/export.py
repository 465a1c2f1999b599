"""SavedModel exports of a query tower plus index, written atomically, with towerkit.json.

An export directory is a plain SavedModel: TensorFlow alone (plus ``scann`` for a
ScaNN index) loads it, and its ``serving_default`` signature takes raw query
features as strings and returns ``scores`` and candidate ``ids``. Beside it,
``towerkit.json`` records versions, components, vocabulary sizes, metrics and
index parameters.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from towerkit.datasets.fetch import make_staging_dir
from towerkit.errors import TowerkitError

from towerkit.export_format import EXTERNAL_INDEX_DIR, FORMAT_VERSION, METADATA_FILE  # noqa: F401


def _replace_directory(staging: Path, target: Path) -> None:
    """Moves a finished directory into place, keeping the old one until the new one is there."""
    backup = None
    if target.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(backup)
        os.replace(target, backup)
    try:
        os.replace(staging, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def save_export(
    index: Any,
    path: str | os.PathLike,
    *,
    query_feature_keys: Sequence[str],
    metadata: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
    query_specs: dict[str, Any] | None = None,
) -> Path:
    """Saves an index (with its query model) as a SavedModel directory, atomically.

    The export is built in a temporary sibling directory and renamed into
    place, so a failure or kill midway leaves any previous export intact.

    Args:
        index: A towerkit index with a query model and indexed candidates.
        path: The export directory.
        query_feature_keys: The raw query features the signature takes.
        metadata: Recorded in towerkit.json (components, metrics, ...).
        extra_files: More files to write into the export (e.g. seen items), by name.
        query_specs: The signature's input spec per query feature; strings by default.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = make_staging_dir(target)
    except OSError as exc:
        raise TowerkitError(f"cannot write the export to {target} ({exc}); choose a writable --output.") from exc
    specs = {key: (query_specs or {}).get(key, tf.TensorSpec([None], tf.string, name=key)) for key in query_feature_keys}
    logger = tf.get_logger()
    level = logger.level
    try:
        # Keras warns that TFRS' index layers have no get_config; SavedModel does not need one.
        logger.setLevel("ERROR")
        try:
            if getattr(index, "saves_itself", False):
                _save_query_model(index, staging, specs)
                index.save(staging / EXTERNAL_INDEX_DIR)
            else:
                _save_index_model(index, staging, specs)
        finally:
            logger.setLevel(level)
        record = {
            "format_version": FORMAT_VERSION,
            "towerkit_version": _towerkit_version(),
            "tensorflow_version": tf.__version__,
            "query_feature_keys": list(query_feature_keys),
            "query_feature_dtypes": {key: _spec_name(spec) for key, spec in specs.items()},
            "index": index.parameters(),
            **metadata,
        }
        with open(staging / METADATA_FILE, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        for name, data in (extra_files or {}).items():
            (staging / name).write_bytes(data)
        _replace_directory(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise TowerkitError(f"writing the export to {target} failed ({exc}); the previous export, if any, is unchanged.") from exc
        raise
    return target




def _save_index_model(index: Any, staging: Path, specs: dict[str, tf.TensorSpec]) -> None:
    """A TF index (brute force, ScaNN) is the SavedModel itself: query features in, top-k out."""

    @tf.function(input_signature=[specs])
    def serve(features):
        scores, ids = index(features)
        return {"scores": scores, "ids": ids}

    @tf.function(input_signature=[specs, tf.TensorSpec([None, None], tf.string, name="exclusions")])
    def serve_excluding(features, exclusions):
        scores, ids = index.search_excluding(features, exclusions, index._k)
        return {"scores": scores, "ids": ids}

    is_scann = getattr(index, "backend", "") == "scann"
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if is_scann else None)
    signatures = {"serving_default": serve, "serving_exclusions": serve_excluding}
    tf.saved_model.save(index, str(staging), signatures=signatures, options=options)


def _save_query_model(index: Any, staging: Path, specs: dict[str, tf.TensorSpec]) -> None:
    """For an index that saves itself in its own format: the SavedModel maps query features to embeddings."""
    module = tf.Module()
    module.query_model = index.query_model

    @tf.function(input_signature=[specs])
    def serve(features):
        return {"embeddings": module.query_model(features)}

    tf.saved_model.save(module, str(staging), signatures={"serving_default": serve})


def _towerkit_version() -> str:
    import towerkit

    return towerkit.__version__


def _spec_name(spec: Any) -> str:
    name = spec.dtype.name
    return f"ragged:{name}" if isinstance(spec, tf.RaggedTensorSpec) else name
