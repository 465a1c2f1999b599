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
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from towerkit import files
from towerkit.errors import TowerkitError

from towerkit.export_format import (
    EXTERNAL_INDEX_DIR, FORMAT_VERSION, METADATA_FILE, QUERY_FEATURES_FILE, QUERY_VOCABULARY_FILE, SEEN_FILE,
)

EXPORT_KIND = "export"


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
    files.recover(target)
    # Refuse before spending time on a SavedModel that could not be put in place.
    files.check_replaceable(target, EXPORT_KIND, legacy_files=(METADATA_FILE,))
    specs = {key: (query_specs or {}).get(key, tf.TensorSpec([None], tf.string, name=key)) for key in query_feature_keys}
    record = {
        "format_version": FORMAT_VERSION,
        "towerkit_version": _towerkit_version(),
        "tensorflow_version": tf.__version__,
        "query_feature_keys": list(query_feature_keys),
        "query_feature_dtypes": {key: _spec_name(spec) for key, spec in specs.items()},
        # "external" tells the loader to load the index through its plugin (see serving.loaded).
        "index": {**index.parameters(), "external": bool(getattr(index, "saves_itself", False))},
        **metadata,
    }
    with files.staging_dir(target, EXPORT_KIND) as staging:
        try:
            _save_model(index, staging, specs)
        except (OSError, tf.errors.OpError) as exc:
            raise TowerkitError(f"writing the export to {target} failed ({files.os_reason(exc)}); "
                                "the previous export, if any, is unchanged.") from exc
        files.write_json(staging / METADATA_FILE, record)
        for name, data in (extra_files or {}).items():
            files.write_file(staging / name, data)
        files.replace_dir(staging, target, EXPORT_KIND, legacy_files=(METADATA_FILE,))
    return target


def _save_model(index: Any, staging: Path, specs: dict[str, Any]) -> None:
    """The SavedModel itself: the index's own, or the query tower's for an index that saves itself."""
    logger = tf.get_logger()
    level = logger.level
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


def _save_index_model(index: Any, staging: Path, specs: dict[str, tf.TensorSpec]) -> None:
    """A TF index (brute force, ScaNN) is the SavedModel itself: query features in, top-k out."""

    @tf.function(input_signature=[specs])
    def serve(features):
        scores, ids = index(features)
        return {"scores": scores, "ids": ids}

    @tf.function(input_signature=[specs, tf.TensorSpec([None, None], tf.string, name="exclusions")])
    def serve_excluding(features, exclusions):
        scores, ids = index.search_excluding(features, exclusions, index.k)
        return {"scores": scores, "ids": ids}

    # The same functions as attributes take ragged features as ragged tensors (a signature
    # flattens them into anonymous parts); towerkit's loader calls these, TF Serving the signatures.
    root = tf.Module()
    root.index, root.serve, root.serve_excluding = index, serve, serve_excluding
    is_scann = getattr(index, "backend", "") == "scann"
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if is_scann else None)
    signatures = {"serving_default": serve, "serving_exclusions": serve_excluding}
    tf.saved_model.save(root, str(staging), signatures=signatures, options=options)


def _save_query_model(index: Any, staging: Path, specs: dict[str, tf.TensorSpec]) -> None:
    """For an index that saves itself in its own format: the SavedModel maps query features to embeddings."""
    module = tf.Module()
    module.query_model = index.query_model

    @tf.function(input_signature=[specs])
    def serve(features):
        return {"embeddings": module.query_model(features)}

    module.serve = serve
    tf.saved_model.save(module, str(staging), signatures={"serving_default": serve})


def _towerkit_version() -> str:
    import towerkit

    return towerkit.__version__


def _spec_name(spec: Any) -> str:
    name = spec.dtype.name
    return f"ragged:{name}" if isinstance(spec, tf.RaggedTensorSpec) else name


def query_specs(data: Any, keys: Sequence[str]) -> dict[str, Any]:
    """The serving signature's input spec for each query feature, from the data's column types."""
    specs = {}
    for key in keys:
        column = data.interactions[key]
        if column.dtype == object:
            specs[key] = tf.RaggedTensorSpec([None, None], tf.int64)
        elif column.dtype.kind in "US":
            specs[key] = tf.TensorSpec([None], tf.string, name=key)
        else:
            specs[key] = tf.TensorSpec([None], tf.as_dtype(column.dtype), name=key)
    return specs


def serving_files(data: Any, model: Any) -> dict[str, bytes]:
    """What `recommend` needs beside the model: known query ids and each one's training items."""
    queries = data.column(data.query_id_key, data.train_rows).tolist()
    candidates = data.column(data.candidate_id_key, data.train_rows).tolist()
    seen: dict[str, list[str]] = {}
    for query, candidate in zip(queries, candidates):
        seen.setdefault(str(query), []).append(str(candidate))
    result = {SEEN_FILE: json.dumps(seen).encode("utf-8")}
    keys = list(model.query_tower.feature_keys)
    current = getattr(data, "current_query_features", None)
    features = current(keys[1:]) if callable(current) and len(keys) > 1 else {}
    if features:
        result[QUERY_FEATURES_FILE] = json.dumps({"id_feature": keys[0], "features": features}).encode("utf-8")
    vocabulary = getattr(model.query_tower, "vocabulary", None)
    if vocabulary is not None:
        result[QUERY_VOCABULARY_FILE] = json.dumps(list(vocabulary)).encode("utf-8")
    return result


def export_metadata(config: Mapping[str, Any], model: Any, data: Any, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What towerkit.json records about the run: recipe, components and their sources, sizes, metrics."""
    from towerkit.components import get_registry
    from towerkit.config import COMPONENT_SECTIONS

    components = {}
    for section, kind in COMPONENT_SECTIONS.items():
        entry = get_registry(kind).get(config[section]["name"])
        components[section] = {**config[section], "source": entry.source, "version": entry.version}
    vocabulary_sizes = {}
    for role in ("query_tower", "candidate_tower"):
        tower = getattr(model, role)
        if getattr(tower, "vocabulary", None) is not None:
            vocabulary_sizes[role] = len(tower.vocabulary)
    return {
        "recipe": config["recipe"]["name"],
        "components": components,
        "vocabulary_sizes": vocabulary_sizes,
        # `similar` answers only models whose query is itself a candidate (item-to-item).
        "query_is_candidate": bool(getattr(data, "exclude_query_from_candidates", False)),
        "metrics": dict(metrics),
        "distributions": sorted({c["source"] for c in components.values()}),
    }


def example_query_features(data: Any, keys: Sequence[str], query_id: str) -> dict[str, list[Any]]:
    """One query's raw features, from its first interaction.

    An id the data does not have is fed as it is to a tower that reads only the
    id (it gets the out-of-vocabulary answer); a tower that reads more features
    gets the first training query's, since the id alone cannot fill them.
    """
    rows = np.flatnonzero(data.interactions[data.query_id_key] == query_id)
    if not len(rows) and list(keys) == [data.query_id_key]:
        return {key: [query_id] for key in keys}
    row = rows[0] if len(rows) else data.train_rows[0]
    return {key: [data.column(key, row)] for key in keys}


def export_model(index: Any, target: str | os.PathLike, config: Mapping[str, Any], model: Any, data: Any,
                 metrics: Mapping[str, Any]) -> Path:
    """Exports a trained model's index with everything `recommend` and `serve` read beside it."""
    keys = list(model.query_tower.feature_keys)
    return save_export(index, target, query_feature_keys=keys,
                       metadata=export_metadata(config, model, data, metrics),
                       extra_files=serving_files(data, model), query_specs=query_specs(data, keys))
