"""tf.distribute strategies by name, and what the train job needs to know about them."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from towerkit.errors import ConfigError

STRATEGIES = ("default", "mirrored", "multi-worker")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """Returns TensorFlow's strategy for a name.

    * ``default``: one device (``tf.distribute.get_strategy()``).
    * ``mirrored``: ``MirroredStrategy`` over the local GPUs, or CPUs made
      into several logical devices.
    * ``multi-worker``: ``MultiWorkerMirroredStrategy``, configured from ``TF_CONFIG``.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError(
                "strategy 'multi-worker' needs TF_CONFIG describing the cluster and this worker's task; "
                "set it (see the README's 'Scaling out') or use strategy 'mirrored' on one machine."
            )
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as exc:
            raise ConfigError(f"TF_CONFIG is not valid JSON ({exc}); fix it and run again.") from exc
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"unknown strategy '{name}'; choose one of {', '.join(STRATEGIES)}.")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the shared outputs (reports, export)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0)


def worker_id(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", 0) or 0)
