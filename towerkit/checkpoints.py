"""Epoch checkpoints, so a killed training run resumes where it stopped."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import tensorflow as tf

from towerkit.errors import TowerkitError

CHECKPOINT_DIR = "checkpoints"
# Writes in a background thread, so training does not wait on the disk.
ASYNC = tf.train.CheckpointOptions(enable_async=True)


class EpochCheckpoint(tf.keras.callbacks.Callback):
    """Saves model, optimizer and the epoch count every ``every`` epochs (and after the last).

    ``tf.train.CheckpointManager`` writes each checkpoint completely before
    updating its index file, so a kill mid-save leaves the previous one in use.
    """

    def __init__(self, manager: tf.train.CheckpointManager, epoch: tf.Variable, every: int, epochs: int):
        super().__init__()
        self.manager, self.epoch, self.every, self.epochs = manager, epoch, every, epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        done = epoch + 1
        if done % self.every == 0 or done == self.epochs:
            self.epoch.assign(done)
            self.manager.save(checkpoint_number=done, options=ASYNC)


def checkpointing(model: Any, output: Path, every: int, epochs: int, resume: bool) -> tuple[EpochCheckpoint, int]:
    """Returns a callback that checkpoints the run, and the epoch to start from.

    With ``resume``, the latest checkpoint in ``output`` is restored first.
    """
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch)
    manager = tf.train.CheckpointManager(checkpoint, str(output / CHECKPOINT_DIR), max_to_keep=2)
    start = 0
    if resume:
        if manager.latest_checkpoint is None:
            raise TowerkitError(
                f"{output} has no checkpoint to resume from; train it again without --resume."
            )
        checkpoint.restore(manager.latest_checkpoint)
        start = int(epoch.numpy())
    return EpochCheckpoint(manager, epoch, every, epochs), start


def trim_history(path: Path, epochs_done: int) -> None:
    """Keeps the first ``epochs_done`` rows of a CSVLogger file (rows after the last checkpoint are redone)."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    kept = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) < epochs_done]
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(kept)
    os.replace(staging, path)
