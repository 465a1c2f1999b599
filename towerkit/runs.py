"""Reopening a finished (or killed) run: its config, data and trained model, from its checkpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from towerkit import config as recipe_config
from towerkit.checkpoints import CHECKPOINT_DIR
from towerkit.errors import TowerkitError
from towerkit.pipeline import build_model
from towerkit.registry import load_dataset


@dataclass
class Run:
    """A reopened run."""

    path: Path
    config: dict[str, Any]
    data: Any
    model: Any
    epochs_trained: int


def open_run(path: str | os.PathLike, overrides: list[str] | None = None) -> Run:
    """Rebuilds a run's model from ``config.toml`` and restores its latest checkpoint.

    Args:
        path: The output dir of ``towerkit train``.
        overrides: ``section.key=value`` changes, e.g. ``["index.name=scann"]``;
            only sections that do not change the trained model make sense here.

    Raises:
        TowerkitError: The directory is not a run, or has no checkpoint.
    """
    run_dir = Path(path)
    saved = run_dir / "config.toml"
    if not saved.is_file():
        raise TowerkitError(f"{run_dir} has no config.toml, so it is not a towerkit run; pass a `towerkit train` output dir.")
    raw, origin = recipe_config.load_recipe(str(saved))
    config = recipe_config.resolve(recipe_config.apply_overrides(raw, overrides or []), origin)
    name, options = recipe_config.component_config(config["dataset"])
    data = load_dataset(name, **options)
    model = build_model(config, data)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, epoch=epoch)
    latest = tf.train.latest_checkpoint(str(run_dir / CHECKPOINT_DIR))
    if latest is None:
        raise TowerkitError(f"{run_dir} has no checkpoint; train it (again) with `towerkit train`.")
    # The optimizer's slots are in the checkpoint too; they are not needed here.
    checkpoint.restore(latest).expect_partial()
    return Run(run_dir, config, data, model, int(epoch.numpy()))
