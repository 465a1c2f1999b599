"""A run directory and its context: creating one safely, and reopening a finished (or killed) run.

A run directory is towerkit's own once it holds the ``.towerkit`` marker of
kind ``run``. towerkit trains only into a new or empty directory, or into one
of its own runs, so it never writes among files it did not create.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from towerkit import config as recipe_config
from towerkit import files
from towerkit.checkpoints import check_identity, restore_for_inference
from towerkit.components import load_dataset
from towerkit.errors import TowerkitError

RUN_KIND = "run"
CONFIG_FILE = "config.toml"


def _say(message: str) -> None:
    print(message, flush=True)


@dataclass
class RunOptions:
    """How the train job runs, as opposed to what it trains (the recipe)."""

    log: Callable[[str], None] = _say
    verbose: int = 1
    resume: bool = False
    force: bool = False
    checkpoint_every: int = 1
    tensorboard: bool = False


@dataclass
class RunContext:
    """Everything the stages of a run share; each stage fills in its part.

    Attributes:
        config: The resolved recipe.
        output: The run directory.
        data, model, index: The dataset, the trained model and its index.
        results: Top-k of the model and each baseline, by name.
        metrics: What metrics.json will hold.
        export_target: Where the export stage writes (default ``output/model``).
        export_dir: Where it wrote, once it has.
    """

    config: dict[str, Any]
    output: Path
    options: RunOptions = field(default_factory=RunOptions)
    strategy: Any = None
    chief: bool = True
    data: Any = None
    model: Any = None
    index: Any = None
    results: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    example_top: list[str] = field(default_factory=list)
    export_target: Path | None = None
    export_dir: Path | None = None
    epochs_trained: int = 0
    started: float = field(default_factory=time.perf_counter)

    def log(self, message: str) -> None:
        self.options.log(message)

    @property
    def output_dir(self) -> Path:
        return self.output

    @property
    def query_keys(self) -> list[str]:
        return list(self.model.query_tower.feature_keys)

    def example_features(self) -> dict[str, list[Any]]:
        from towerkit.export import example_query_features

        return example_query_features(self.data, self.query_keys, self.config["export"]["example_query"])


def _is_legacy_run(path: Path) -> bool:
    """A run written before run directories were marked: config.toml beside checkpoints or metrics."""
    return (path / CONFIG_FILE).is_file() and ((path / "checkpoints").is_dir() or (path / "metrics.json").is_file())


def _is_towerkit_entry(path: Path) -> bool:
    """towerkit's own marker, lock and their temporary files, or another worker's directory.

    (A worker creates ``.worker-N`` inside the chief's directory, possibly while the chief checks it.)
    """
    return path.name.startswith(files.MARKER) or (path.name.startswith(".worker-") and path.is_dir())


def check_run_dir(path: str | os.PathLike) -> None:
    """Refuses, without writing anything, an output path that holds what towerkit did not create.

    Raises:
        OwnershipError: ``path`` is a file, a towerkit directory of another kind, or a
            non-empty directory that is not a towerkit run.
    """
    output = Path(path)
    if output.exists() and not output.is_dir():
        raise files.OwnershipError(f"{output} is a file, not a run directory; pass a directory as --output.")
    if not output.is_dir():
        return
    kind = files.marker_kind(output)
    if kind not in (None, RUN_KIND):
        raise files.OwnershipError(f"{output} is a towerkit {kind} directory, not a run; pass another --output.")
    try:
        contents = [p.name for p in output.iterdir() if not _is_towerkit_entry(p)]
    except OSError as exc:
        raise TowerkitError(f"output dir {output} is not readable ({exc.strerror or exc}); pass another --output.") from exc
    if kind is None and contents and not _is_legacy_run(output):
        raise files.OwnershipError(
            f"{output} already holds files that towerkit did not write; pass a new or empty --output."
        )


def prepare_run_dir(path: str | os.PathLike) -> Path:
    """Creates (or adopts) a run directory after :func:`check_run_dir`, and marks it as towerkit's.

    Raises:
        OwnershipError: As :func:`check_run_dir`.
        TowerkitError: It cannot be created or written.
    """
    output = Path(path)
    check_run_dir(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TowerkitError(f"output dir {output} is not writable ({exc.strerror or exc}); pass a writable --output.") from exc
    try:
        files.mark(output, RUN_KIND)
    except TowerkitError as exc:
        raise TowerkitError(f"output dir {output} is not writable; pass a writable --output.") from exc
    return output


def load_run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved recipe a run was trained with, from its config.toml."""
    saved = run_dir / CONFIG_FILE
    if files.marker_kind(run_dir) != RUN_KIND and not _is_legacy_run(run_dir):
        raise TowerkitError(f"{run_dir} is not a towerkit run (no {CONFIG_FILE}); pass a `towerkit train` output dir.")
    raw, origin = recipe_config.load_recipe(str(saved))
    return recipe_config.resolve(raw, origin)


def open_run(path: str | os.PathLike, say: Callable[[str], None] = _say) -> RunContext:
    """Rebuilds a run's model from ``config.toml`` and restores its latest intact checkpoint.

    Raises:
        TowerkitError: The directory is not a run, has no intact checkpoint, or its
            checkpoints were written under another configuration.
    """
    from towerkit.models import build_model

    run_dir = Path(path)
    config = load_run_config(run_dir)
    check_identity(run_dir, config, resume=True)
    name, options = recipe_config.component_config(config["dataset"])
    data = load_dataset(name, **options)
    ctx = RunContext(config=config, output=run_dir, options=RunOptions(log=say), data=data)
    ctx.model = build_model(config, data)
    ctx.epochs_trained = restore_for_inference(ctx.model, run_dir, say)
    return ctx
