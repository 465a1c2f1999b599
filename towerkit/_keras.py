"""Makes sure TensorFlow uses Keras 2 (tf-keras), which TFRS requires."""

from __future__ import annotations

import os
import sys

LEGACY_ENV = "TF_USE_LEGACY_KERAS"


def ensure_legacy_keras() -> None:
    """Selects Keras 2 before TensorFlow is imported, or fails if it is too late.

    Raises:
        ImportError: TensorFlow was already imported and bound to Keras 3.
    """
    value = os.environ.get(LEGACY_ENV)
    if value is None:
        os.environ[LEGACY_ENV] = "1"
    elif value.strip().lower() not in ("1", "true", "yes"):
        raise ImportError(
            f"{LEGACY_ENV}={value!r} selects Keras 3, but towerkit (through TFRS) needs "
            f"Keras 2; unset it or set {LEGACY_ENV}=1."
        )
    if "tensorflow" not in sys.modules:
        return
    # tf.keras binds lazily: if nothing has touched it yet, the variable set
    # above still takes effect. Otherwise check what it was bound to.
    import tensorflow as tf

    layer_module = tf.keras.layers.Layer.__module__
    if not layer_module.startswith("tf_keras"):
        raise ImportError(
            "TensorFlow was imported with Keras 3 before towerkit, but TFRS needs Keras 2; "
            f"import towerkit before tensorflow, or set {LEGACY_ENV}=1 in the environment."
        )
