"""Epoch checkpoints that know which run they belong to, so a killed run resumes exactly.

Each run directory's ``checkpoints/identity.json`` holds a hash of the parts
of the resolved recipe that decide the trained weights. A fresh run refuses a
directory whose checkpoints came from another configuration, and ``--resume``
refuses checkpoints whose configuration differs from ``config.toml`` (after a
hand edit, say). A damaged checkpoint (truncated, bit-flipped) is detected on
restore; the previous intact one is used instead, with a warning.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import tensorflow as tf

from towerkit import files
from towerkit.errors import TowerkitError

CHECKPOINT_DIR = "checkpoints"
IDENTITY_FILE = "identity.json"
# Sections that decide the trained weights; evaluation, index and export do not.
WEIGHT_SECTIONS = ("dataset", "query_tower", "candidate_tower", "task", "model", "optimizer", "train")
COMPONENT_SECTIONS = ("dataset", "query_tower", "candidate_tower", "task")
# Writes in a background thread, so training does not wait on the disk.
ASYNC = tf.train.CheckpointOptions(enable_async=True)


class CheckpointError(TowerkitError):
    """Checkpoints are missing, damaged, or belong to another configuration."""


def weight_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a resolved recipe that decide the trained weights.

    The epoch count is left out (so a run may be extended), and so are settings
    that change how training is driven but not what a step computes.
    """
    relevant = json.loads(json.dumps({section: config[section] for section in WEIGHT_SECTIONS if section in config},
                                     default=str))
    # How long to train and how often Keras calls back do not change what a step computes.
    # (TensorFlow restores sharded variables under any sharding, so the partitioner does not count either.)
    for key in ("epochs", "steps_per_execution", "cluster_timeout", "partitioner", "num_shards", "min_shard_bytes"):
        relevant.get("train", {}).pop(key, None)
    return relevant


def config_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """What identity.json records: the weight-deciding sections and their hash."""
    sections = weight_config(config)
    digest = hashlib.sha256(json.dumps(sections, sort_keys=True).encode("utf-8")).hexdigest()
    return {"config_sha256": digest, "sections": sections}


def recorded_identity(run_dir: Path) -> dict[str, Any] | None:
    """The identity stored beside a run's checkpoints, or None if it has none (or it is unreadable)."""
    try:
        value = json.loads((Path(run_dir) / CHECKPOINT_DIR / IDENTITY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("sections"), dict) else None


def same_weights_config(recorded: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """Whether ``config`` trains what the recorded sections trained.

    A key of a fixed section (train, model, optimizer) that the record lacks
    is one a later towerkit added with its default, and does not count.
    """
    current = weight_config(config)
    for section, values in current.items():
        stored = recorded.get(section, {})
        if section in COMPONENT_SECTIONS:
            if stored != values:
                return False
        elif any(stored[key] != value for key, value in values.items() if key in stored):
            return False
    return set(recorded) <= set(current)


def has_checkpoints(run_dir: Path) -> bool:
    return tf.train.latest_checkpoint(str(Path(run_dir) / CHECKPOINT_DIR)) is not None


def check_identity(run_dir: Path, config: Mapping[str, Any], resume: bool) -> None:
    """Refuses checkpoints in ``run_dir`` that another configuration wrote."""
    if not has_checkpoints(run_dir):
        return
    recorded = recorded_identity(run_dir)
    if recorded is None and resume:
        return
    if recorded is not None and same_weights_config(recorded["sections"], config):
        return  # (no identity: written before identities were recorded; its config.toml is all we have)
    if resume:
        raise CheckpointError(
            f"the checkpoints in {run_dir} were written under a different configuration than its "
            "config.toml (edited since?); restore the original config.toml, or train afresh into a new directory."
        )
    raise CheckpointError(
        f"{run_dir} holds checkpoints of another configuration; train into a new --output, "
        "or pass --force to move the old checkpoints aside."
    )


def set_aside(run_dir: Path) -> Path:
    """Renames a run's old checkpoints to ``checkpoints.old-N`` (they are towerkit's own), keeping them."""
    source = Path(run_dir) / CHECKPOINT_DIR
    number = 1
    while (target := source.with_name(f"{CHECKPOINT_DIR}.old-{number}")).exists():
        number += 1
    source.rename(target)
    return target


def verify(prefix: str) -> None:
    """Reads every tensor of a checkpoint, which checks its checksums; raises CheckpointError if damaged."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, OSError, IndexError) as exc:  # IndexError: a truncated data file
        raise CheckpointError(f"checkpoint {prefix} is damaged ({type(exc).__name__})") from exc


def restore_latest_intact(checkpoint: tf.train.Checkpoint, directory: Path, say: Callable[[str], None]) -> Any:
    """Restores the newest checkpoint that reads back intact; warns for each damaged one skipped.

    Returns:
        The restore status.

    Raises:
        CheckpointError: There is no checkpoint, or none is intact.
    """
    state = tf.train.get_checkpoint_state(str(directory))
    candidates = list(reversed(state.all_model_checkpoint_paths)) if state else []
    if not candidates:
        raise CheckpointError(f"{directory.parent} has no checkpoint; train it (again) with `towerkit train`.")
    for prefix in candidates:
        try:
            verify(prefix)
            return checkpoint.restore(prefix)
        except CheckpointError as exc:
            say(f"towerkit: warning: {exc}; trying the previous checkpoint.")
    raise CheckpointError(
        f"every checkpoint in {directory} is damaged; train the run again without --resume."
    )


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
            try:
                self.manager.save(checkpoint_number=done, options=ASYNC)
            except (tf.errors.OpError, OSError) as exc:
                raise self._failed(f"saving the checkpoint after epoch {done}", exc) from exc

    def on_train_end(self, logs: dict | None = None) -> None:
        try:
            self.manager.checkpoint.sync()
        except (tf.errors.OpError, OSError) as exc:
            raise self._failed("writing the last checkpoint", exc) from exc

    def _failed(self, what: str, exc: BaseException) -> CheckpointError:
        """One clear error for a failed save; TensorFlow's half-written ``*_temp`` directory is removed."""
        for partial in Path(self.manager.directory).glob("ckpt-*_temp"):
            shutil.rmtree(partial, ignore_errors=True)
        return CheckpointError(f"{what} to {self.manager.directory} failed ({files.os_reason(exc)}); "
                               "free some disk space and resume with `towerkit train --resume`.")



def checkpointing(model: Any, output: Path, every: int, epochs: int, resume: bool, identity: dict[str, Any],
                  say: Callable[[str], None] = print) -> tuple[EpochCheckpoint, int]:
    """Returns a callback that checkpoints the run, and the epoch to start from.

    With ``resume``, the latest intact checkpoint in ``output`` is restored first.
    A fresh run starts from an empty checkpoint directory stamped with ``identity``.
    """
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch)
    directory = output / CHECKPOINT_DIR
    if not resume and directory.exists():
        shutil.rmtree(directory)  # this run's own earlier checkpoints (identity checked before)
    directory.mkdir(parents=True, exist_ok=True)
    files.write_json(directory / IDENTITY_FILE, identity)
    manager = tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=3)
    start = 0
    if resume:
        restore_latest_intact(checkpoint, directory, say)
        start = int(epoch.numpy())
    return EpochCheckpoint(manager, epoch, every, epochs), start


def restore_for_inference(model: Any, run_dir: Path, say: Callable[[str], None]) -> int:
    """Restores a run's trained weights (no optimizer) and returns the epochs trained."""
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, epoch=epoch)
    # The optimizer's slots are in the checkpoint too; they are not needed here.
    restore_latest_intact(checkpoint, Path(run_dir) / CHECKPOINT_DIR, say).expect_partial()
    return int(epoch.numpy())


def trim_history(path: Path, epochs_done: int) -> None:
    """Keeps the first ``epochs_done`` rows of a CSVLogger file (rows after the last checkpoint are redone)."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    kept = [rows[0]] + [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) < epochs_done]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(kept)
    files.write_file(path, buffer.getvalue())


def discard_history(path: Path) -> None:
    """Removes a fresh run's stale history.csv (a file of this towerkit run directory)."""
    if path.is_file():
        path.unlink()

