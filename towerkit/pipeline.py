"""The train job as named stages over one run context.

``run`` prepares the output directory, takes its lock, and runs::

    load -> build -> fit -> evaluate -> index -> export -> report

Each stage reads and fills a :class:`towerkit.runs.RunContext`, so the CLI
reuses them: ``towerkit evaluate`` runs the evaluate stage on a reopened run,
``towerkit export`` the index and export stages.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import tensorflow as tf

from towerkit import files
from towerkit import config as recipe_config
from towerkit.checkpoints import check_identity, checkpointing, config_identity, discard_history, set_aside, trim_history
from towerkit.components import load_dataset
from towerkit.datasets.base import to_tf_dataset
from towerkit.distribute import fit_input, is_chief, is_parameter_server, make_strategy, worker_id
from towerkit.errors import ConfigError, TowerkitError
from towerkit.early_stopping import ValidationEarlyStopping
from towerkit.evaluation import evaluate_all, sample_test_queries
from towerkit.export import export_model
from towerkit.indexes.base import check_k
from towerkit.models import build_index, build_model
from towerkit.report import EpochEvaluation, write_markdown, write_png
from towerkit.runs import RunContext, RunOptions, check_run_dir, prepare_run_dir
from towerkit.serving import load_export

HISTORY_FILE = "history.csv"


class TrainingDiverged(TowerkitError):
    """The training loss stopped being a finite number."""


class DivergenceGuard(tf.keras.callbacks.Callback):
    """Stops a run whose loss became NaN or infinite, before its checkpoint or export is written."""

    def __init__(self, learning_rate: float):
        super().__init__()
        self.learning_rate = learning_rate

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"the training loss became {float(loss)} in epoch {epoch + 1}, so the run stopped without "
                f"an export; lower optimizer.learning_rate (now {self.learning_rate}) or check the features "
                "for NaN values, then train again (the last good checkpoint is kept)."
            )


def training_dataset(data: Any, keys: tuple[str, ...], batch_size: int, shuffle_buffer: int, seed: int,
                     input_context: Any = None) -> tf.data.Dataset:
    """The tutorial's ``train.shuffle(100_000).batch(8192).cache()``, seeded and prefetched.

    Only the features the towers read are sliced, so no time goes into
    carrying unused columns through the pipeline. A dataset with a
    ``train_stream`` method (e.g. ``interactions`` with ``stream = true``)
    supplies its own stream instead, sharded by ``input_context``.
    """
    stream = getattr(data, "train_stream", None)
    if callable(stream):
        return stream(keys, batch_size, shuffle_buffer=shuffle_buffer, seed=seed, input_context=input_context)
    options = tf.data.Options()
    # In-memory data has no files to shard: under a multi-worker strategy each
    # worker takes every n-th batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return (
        to_tf_dataset(data.train_features(keys))
        .shuffle(min(shuffle_buffer, max(1, len(data.train_rows))), seed=seed)
        .batch(batch_size)
        .cache()
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )


def evaluation_data(ctx: RunContext) -> Any:
    """The dataset the test split is evaluated on: all of it, or ``evaluate.max_queries`` test queries."""
    max_queries = ctx.config["evaluate"].get("max_queries", 0)
    if not max_queries:
        return ctx.data
    if getattr(ctx, "sampled_data", None) is None:
        ctx.sampled_data = sample_test_queries(ctx.data, max_queries, ctx.config["train"]["seed"])
    return ctx.sampled_data


def stage_load(ctx: RunContext) -> None:
    """Loads the dataset and checks what depends on its size (the index's k) before any training."""
    name, options = recipe_config.component_config(ctx.config["dataset"])
    ctx.log(f"loading dataset {name} ...")
    ctx.data = load_dataset(name, **options)
    if getattr(ctx.data, "stream_runs_in_process", False) and is_parameter_server(ctx.strategy):
        raise ConfigError(f"dataset {name!r} streams its training rows from files in this process, which "
                          "parameter-server workers cannot run; use strategy \"multi-worker\" (each worker reads "
                          "its own shards) or load the data in memory.")
    evaluation_data(ctx)  # a streamed dataset reads its evaluation sample before the towers adapt
    check_k(ctx.config["index"]["k"], len(ctx.data.candidate_ids), ctx.config["index"]["name"])
    info = ctx.data.describe()
    ctx.log(f"  {info['interactions']:,} interactions ({info['train']:,} train / {info['test']:,} test), "
            f"{info['queries']:,} queries, {info['candidates']:,} candidates"
            + (f", streamed from {info['files']} Parquet file(s)" if info.get("stream") else ""))


def stage_build(ctx: RunContext) -> None:
    """Assembles and compiles the model under the strategy (variables, slots and metrics live there)."""
    tf.keras.utils.set_random_seed(ctx.config["train"]["seed"])
    with ctx.strategy.scope():
        ctx.model = build_model(ctx.config, ctx.data)
    if ctx.strategy.num_replicas_in_sync > 1 or ctx.config["train"]["strategy"] != "default":
        devices = ", ".join(ctx.strategy.extended.worker_devices)
        replicas = ctx.strategy.num_replicas_in_sync
        ctx.log(f"  {ctx.config['train']['strategy']} strategy: {replicas} replica{'s' * (replicas != 1)} "
                f"on {devices}; global batch {ctx.config['train']['batch_size']}")


def _callbacks(ctx: RunContext) -> tuple[list[Any], EpochEvaluation | None, int]:
    """Divergence guard, epoch curves, CSV history and checkpoints, in the order they must run."""
    options, history = ctx.options, ctx.output / HISTORY_FILE
    saver, initial_epoch = checkpointing(ctx.model, ctx.output, options.checkpoint_every,
                                         ctx.config["train"]["epochs"], options.resume,
                                         config_identity(ctx.config), ctx.log)
    if options.resume:
        trim_history(history, initial_epoch)
        ctx.log(f"resuming from the checkpoint after epoch {initial_epoch}")
    else:
        discard_history(history)
    guard = DivergenceGuard(ctx.config["optimizer"]["learning_rate"])
    if not ctx.chief:
        return [guard, saver], None, initial_epoch
    curves = EpochEvaluation(evaluation_data(ctx), ctx.config["evaluate"]["ks"]) if ctx.config["evaluate"]["every_epoch"] else None
    # The guard runs first, so a diverged epoch is never evaluated, logged or checkpointed;
    # the CSV row is on disk before the checkpoint, so a resumed run never lacks a row.
    callbacks = [guard, *([curves] if curves else []), tf.keras.callbacks.CSVLogger(str(history), append=True), saver]
    if ctx.config["train"].get("early_stopping_patience"):
        ctx.stopper = ValidationEarlyStopping(ctx.data, ctx.config["train"]["early_stopping_patience"],
                                              ctx.config["train"]["early_stopping_metric"], ctx.config["evaluate"]["batch_size"])
        callbacks.insert(1, ctx.stopper)  # before the CSV logger, so history.csv has val_top_K
    if options.tensorboard:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=str(ctx.output / "tensorboard")))
    return callbacks, curves, initial_epoch


def epoch_rows(data: Any) -> int:
    """How many rows one training epoch has: all of them, even where a streamed dataset holds only a sample."""
    rows = getattr(data, "num_train_rows", None)
    if rows is not None:
        return int(rows)
    return int(data.describe()["train"]) if callable(getattr(data, "train_stream", None)) else len(data.train_rows)


def stage_fit(ctx: RunContext) -> None:
    """Trains for the recipe's epochs (from the last checkpoint when resuming)."""
    train = ctx.config["train"]
    # Under parameter-server, each worker builds its share of the input; elsewhere this is the dataset.
    streamed = callable(getattr(ctx.data, "train_stream", None))
    dataset, fit_options = fit_input(ctx.strategy, lambda context=None: training_dataset(
        ctx.data, ctx.model.feature_keys, train["batch_size"], train["shuffle_buffer"], train["seed"], context),
        epoch_rows(ctx.data), train["batch_size"],
        shards_itself=streamed)
    callbacks, curves, initial_epoch = _callbacks(ctx)
    ctx.log(f"training {train['epochs']} epochs, batch {train['batch_size']} ...")
    tick = time.perf_counter()
    ctx.model.fit(dataset, epochs=train["epochs"], initial_epoch=initial_epoch,
                  verbose=ctx.options.verbose, callbacks=callbacks, **fit_options)
    curve_seconds = (curves.seconds if curves else 0.0) + (ctx.stopper.seconds if getattr(ctx, "stopper", None) else 0.0)
    if getattr(ctx, "stopper", None):
        ctx.metrics["validation"] = ctx.stopper.summary()
        ctx.log(f"  kept epoch {ctx.stopper.best_epoch} (validation {ctx.stopper.metric} {ctx.stopper.best_value:.4f})")
    ctx.timings["fit_seconds"] = time.perf_counter() - tick - curve_seconds
    ctx.timings["epoch_evaluation_seconds"] = curve_seconds


def stage_evaluate(ctx: RunContext) -> None:
    """Exact test top-k of the model and of the dataset's baselines, logged as a small table."""
    evaluation = ctx.config["evaluate"]
    ctx.log("evaluating on the test split (exact top-k over all candidates) ...")
    data = evaluation_data(ctx)
    sample = getattr(data, "evaluation_sample", None)
    if sample:
        ctx.log(f"  on a sample of {sample['queries']:,} of {sample['test_queries']:,} test queries "
                f"(evaluate.max_queries = {evaluation.get('max_queries') or 'all'})")
        ctx.metrics["test_sample"] = {**sample, "test_rows": int(len(data.test_rows))}
    ctx.results = evaluate_all(ctx.model, data, evaluation["ks"], evaluation["exclude_train"], evaluation["batch_size"],
                               evaluation.get("baselines"))
    for excluding in (False, True) if evaluation["exclude_train"] else (False,):
        if excluding:
            ctx.log("  excluding each user's training items:")
        for name, result in ctx.results.items():
            ctx.log(f"  {name:<13}{result.format(excluding)}")
    ctx.metrics["test"] = {name: result.to_json() for name, result in ctx.results.items()}


def stage_index(ctx: RunContext) -> None:
    """Builds the recipe's index over every candidate and shows the example query's top 3."""
    ctx.log(f"building index {ctx.config['index']['name']} ...")
    ctx.index = build_index(ctx.model, ctx.data, ctx.config["index"])
    params = ctx.index.parameters()
    if "reached_recall" in params:
        ctx.log(f"  tuned to recall@{params['k']} {params['reached_recall']:.3f} (target {params['target_recall']}): "
                f"num_leaves_to_search={params.get('num_leaves_to_search')}, "
                f"num_reordering_candidates={params.get('num_reordering_candidates')}")
        ctx.metrics["index"] = params
    query = ctx.config["export"]["example_query"]
    ctx.example_top = _top_ids(ctx.index, ctx.example_features(), query)
    ctx.log(f"  top 3 for {ctx.query_keys[0]}={query!r}: {ctx.example_top}")
    ctx.metrics["example"] = {"query": query, "top": ctx.example_top}


def _top_ids(index_or_ids: Any, features: dict[str, list[Any]] | None, query: str, count: int = 3) -> list[str]:
    """The first ``count`` result ids, leaving out the query itself (item-to-item)."""
    ids = index_or_ids({k: _as_tensor(v) for k, v in features.items()})[1][0].numpy() if features is not None else index_or_ids
    decoded = [i.decode("utf-8") for i in ids]
    return [i for i in decoded if i != query][:count]


def _as_tensor(values: list[Any]) -> Any:
    if values and isinstance(values[0], list):
        return tf.ragged.constant(values, dtype=tf.int64)
    return tf.constant(values)


def stage_export(ctx: RunContext) -> None:
    """Exports the index and checks that the export, reloaded, answers as the index did."""
    if not ctx.config["export"]["enabled"]:
        return
    target = ctx.export_target or ctx.output / "model"
    ctx.log(f"exporting to {target} ...")
    recorded = {key: ctx.metrics[key] for key in ("recipe", "dataset", "example", "test") if key in ctx.metrics}
    ctx.export_dir = export_model(ctx.index, target, ctx.config, ctx.model, ctx.data, recorded)
    query = ctx.config["export"]["example_query"]
    reloaded = _top_ids(load_export(target).recommend(ctx.example_features())[1][0], None, query)
    if reloaded != ctx.example_top:
        raise TowerkitError(f"the reloaded export returns {reloaded} but the index returned {ctx.example_top}; "
                            "the export is inconsistent, please report this.")
    ctx.log(f"  reloaded export agrees: {reloaded}")


def read_history(path: Any) -> dict[str, list[float]]:
    """Per-epoch values from the CSVLogger file (all epochs, also across a resume)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    keys = [k for k in (rows[0] if rows else {}) if k != "epoch"]
    # CSVLogger writes "NA" for validation columns when there is no validation data.
    return {k: [float(row[k]) for row in rows] for k in keys if all(row[k] != "NA" for row in rows)}


def _examples(ctx: RunContext, count: int = 3) -> dict[str, list[str]]:
    """Top 5 for the example query and a few test queries, for report.md."""
    if len(ctx.query_keys) != 1 or ctx.data.column(ctx.query_keys[0], ctx.data.test_rows[:1]).dtype == object:
        return {}  # several features, or a list-valued one (a history): no single id to show
    key, first = ctx.query_keys[0], ctx.config["export"]["example_query"]
    test_queries = dict.fromkeys(ctx.data.column(key, ctx.data.test_rows).tolist())
    queries = [first] + [q for q in test_queries if q != first][: count - 1]
    _, ids = ctx.index({key: tf.constant(queries)})
    return {f"{key} {q}": _top_ids(row, None, q, 5) for q, row in zip(queries, ids.numpy())}


def stage_report(ctx: RunContext) -> None:
    """metrics.json, report.png and report.md."""
    ctx.timings["total_seconds"] = time.perf_counter() - ctx.started
    ctx.metrics["timing"] = dict(ctx.timings)
    ctx.metrics["history"] = read_history(ctx.output / HISTORY_FILE)
    files.write_json(ctx.output / "metrics.json", ctx.metrics)
    has_png = write_png(ctx.output / "report.png", ctx.metrics["history"], ctx.metrics)
    write_markdown(ctx.output / "report.md", ctx.metrics, _examples(ctx), has_png)


Stage = Callable[[RunContext], None]
STAGES: tuple[tuple[str, Stage], ...] = (
    ("load", stage_load), ("build", stage_build), ("fit", stage_fit), ("evaluate", stage_evaluate),
    ("index", stage_index), ("export", stage_export), ("report", stage_report),
)
# Only the chief writes what all workers share.
CHIEF_ONLY = {"evaluate", "index", "export", "report"}


def _claim_output(ctx: RunContext) -> None:
    """Creates (or adopts) the run directory, then checks checkpoint identity and snapshots the config.

    Runs after the data loaded and the model built, so a bad recipe or dataset writes nothing.
    Only the chief writes the shared directory; other workers keep their checkpoints apart.
    """
    if not ctx.chief:
        ctx.output = prepare_run_dir(ctx.output / f".worker-{worker_id(ctx.strategy)}")
        return
    ctx.output = prepare_run_dir(ctx.output)


def _snapshot_config(ctx: RunContext) -> None:
    if not ctx.chief:
        return
    try:
        check_identity(ctx.output, ctx.config, ctx.options.resume)
    except TowerkitError:
        if ctx.options.resume or not ctx.options.force:
            raise
        ctx.log(f"moved the old checkpoints aside to {set_aside(ctx.output)}")
    # Written before training, so `train --resume` can rebuild exactly this run after a kill.
    files.write_file(ctx.output / "config.toml", recipe_config.to_toml(ctx.config))


def _run_stage(ctx: RunContext, name: str, stage: Stage) -> None:
    if ctx.chief or name not in CHIEF_ONLY:
        tick = time.perf_counter()
        stage(ctx)
        ctx.timings.setdefault(f"{name}_seconds", time.perf_counter() - tick)
    if name == "load":
        ctx.metrics["dataset"] = ctx.data.describe()


def run(config: dict[str, Any], output_dir: str | os.PathLike, *, log: Callable[[str], None] = print,
        verbose: int = 1, resume: bool = False, force: bool = False, checkpoint_every: int = 1,
        tensorboard: bool = False) -> RunContext:
    """Runs a resolved recipe end to end and writes its reports into ``output_dir``.

    Args:
        config: A recipe resolved by :func:`towerkit.config.resolve`.
        output_dir: Where metrics.json, config.toml, history.csv, checkpoints and the export go.
            It must be new, empty, or an earlier towerkit run.
        log: Receives one-line progress messages.
        verbose: Keras' fit verbosity (1 = progress bars, 2 = a line per epoch).
        resume: Continue from the latest intact checkpoint in ``output_dir``.
        force: Move another configuration's checkpoints aside instead of refusing.
        checkpoint_every: Save a checkpoint every this many epochs (and after the last).
        tensorboard: Also write TensorBoard logs to ``output_dir/tensorboard``.

    Returns:
        The run context: ``metrics``, ``model``, ``data``, ``index``, ``export_dir``.
    """
    options = RunOptions(log=log, verbose=verbose, resume=resume, force=force,
                         checkpoint_every=checkpoint_every, tensorboard=tensorboard)
    train = config["train"]
    strategy = make_strategy(train["strategy"], train["cluster_timeout"], log=log, train=train)
    ctx = RunContext(config=config, output=Path(output_dir), options=options,
                     strategy=strategy, chief=is_chief(strategy))
    if ctx.chief:
        check_run_dir(output_dir)  # before any work, so a wrong --output costs nothing
    ctx.metrics.update(recipe=config["recipe"]["name"])
    for name, stage in STAGES[:2]:  # load and build write nothing
        _run_stage(ctx, name, stage)
    _claim_output(ctx)
    with files.run_lock(ctx.output):
        _snapshot_config(ctx)
        for name, stage in STAGES[2:]:
            _run_stage(ctx, name, stage)
    if not ctx.chief:
        ctx.metrics["timing"] = {**ctx.timings, "total_seconds": time.perf_counter() - ctx.started}
        log("training done; the chief worker writes the reports and the export")
    return ctx

