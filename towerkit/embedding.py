"""Running a tower over a table of features, in batches, without retracing."""

from __future__ import annotations

import weakref
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from towerkit.datasets.base import to_tf_dataset

# Set by the CLI: long embedding and ranking passes show a Keras progress bar.
_progress = {"enabled": False}
# One traced function per tower, kept as long as the tower lives: a new
# tf.function per call would retrace at every epoch's evaluation.
_traced: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def show_progress(enabled: bool) -> None:
    """Turns progress bars for long embedding and evaluation passes on or off."""
    _progress["enabled"] = bool(enabled)


def progress_bar(steps: int, label: str) -> Any:
    """A progress bar for more than a few steps when enabled, else None."""
    if not _progress["enabled"] or steps <= 10:
        return None
    print(label, flush=True)
    return tf.keras.utils.Progbar(steps)


def traced(tower: Any) -> Any:
    """The tower wrapped in one ``tf.function`` that is reused for every later call."""
    call = _traced.get(tower)
    if call is None:
        call = tf.function(tower, reduce_retracing=True)
        _traced[tower] = call
    return call


def embed(tower: Any, columns: Mapping[str, np.ndarray], batch_size: int = 8192) -> tf.Tensor:
    """Runs a tower over column arrays in batches and returns ``[n, dim]``.

    Example:
        >>> items = embed(model.candidate_tower, {"movie_title": data.candidate_ids})
    """
    dataset = to_tf_dataset(columns).batch(batch_size)
    call = traced(tower)
    # One trace for any batch size: traced first for [None] rows, the full batches and the
    # smaller last one reuse it (otherwise each tower traces twice, at every evaluation's start).
    call.get_concrete_function(dataset.element_spec)
    rows = len(next(iter(columns.values())))
    bar = progress_bar(-(-rows // batch_size), f"  embedding {rows:,} rows with {tower.name}")
    outputs = []
    for step, batch in enumerate(dataset, start=1):
        outputs.append(call(batch))
        if bar is not None:
            bar.update(step)
    return tf.concat(outputs, axis=0)


def candidate_columns(data: Any, keys: Any) -> dict[str, np.ndarray]:
    """The candidate set's columns that a candidate tower reads."""
    return {key: data.candidate_features[key] for key in keys}


def embed_candidates(tower: Any, data: Any, batch_size: int = 8192) -> tf.Tensor:
    """Every candidate of ``data`` through the candidate tower: ``[num_candidates, dim]``."""
    return embed(tower, candidate_columns(data, tower.feature_keys), batch_size)
