"""The main job: load data, assemble, train, evaluate, index, export, all from a resolved recipe."""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from towerkit import config as recipe_config
from towerkit.checkpoints import checkpointing, trim_history
from towerkit.distribute import is_chief, make_strategy, worker_id
from towerkit.report import EpochEvaluation, write_markdown, write_png
from towerkit.datasets.base import to_tf_dataset
from towerkit.errors import ConfigError, TowerkitError
from towerkit.evaluation import BASELINES, embed, evaluate_topk
from towerkit.export import save_export
from towerkit.export_format import QUERY_VOCABULARY_FILE, SEEN_FILE
from towerkit.serving import load_export
from towerkit.models import assemble
from towerkit.registry import create_index, load_dataset

Log = Callable[[str], None]


@dataclass
class RunResult:
    """What a run produced."""

    metrics: dict[str, Any]
    output_dir: Path
    model: Any = None
    data: Any = None
    index: Any = None
    export_dir: Path | None = None
    history: dict[str, list[float]] = field(default_factory=dict)


def make_optimizer(name: str, learning_rate: float) -> tf.keras.optimizers.Optimizer:
    classes = {
        "adagrad": tf.keras.optimizers.Adagrad,
        "adam": tf.keras.optimizers.Adam,
        "adamw": tf.keras.optimizers.AdamW,
        "sgd": tf.keras.optimizers.SGD,
        "rmsprop": tf.keras.optimizers.RMSprop,
        "ftrl": tf.keras.optimizers.Ftrl,
    }
    try:
        return classes[name.lower()](learning_rate=learning_rate)
    except KeyError:
        raise ConfigError(f"unknown optimizer '{name}'; choose one of {', '.join(classes)}.") from None


def training_dataset(data: Any, keys: tuple[str, ...], batch_size: int, shuffle_buffer: int, seed: int) -> tf.data.Dataset:
    """The tutorial's ``train.shuffle(100_000).batch(8192).cache()``, seeded and prefetched.

    Only the features the towers read are sliced, so no time goes into
    carrying unused columns through the pipeline.
    """
    columns = data.train_features(keys)
    options = tf.data.Options()
    # In-memory data has no files to shard: under a multi-worker strategy each
    # worker takes every n-th batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return (
        to_tf_dataset(columns)
        .shuffle(shuffle_buffer, seed=seed)
        .batch(batch_size)
        .cache()
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )


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


def example_query_features(data: Any, keys: Sequence[str], query_id: str) -> dict[str, list[Any]]:
    """One query's raw features: from its first interaction, or just its id if it has none."""
    ids = data.interactions[data.query_id_key]
    rows = np.flatnonzero(ids == query_id)
    if len(rows):
        return {key: [data.interactions[key][rows[0]]] for key in keys}
    return {key: [query_id] for key in keys}


def _as_tensor(values: list[Any]) -> Any:
    if values and isinstance(values[0], list):
        return tf.ragged.constant(values, dtype=tf.int64)
    return tf.constant(values)


def build_model(config: dict[str, Any], data: Any) -> Any:
    """Assembles the model a resolved recipe describes."""
    return assemble(
        query=dict(config["query_tower"]),
        candidate=dict(config["candidate_tower"]),
        task=dict(config["task"]),
        data=data,
        style=config["model"]["style"],
        train_metrics=config["model"]["train_metrics"],
    )


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Creates the output dir and proves it writable before any work starts."""
    output = Path(path)
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".towerkit-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise TowerkitError(f"output dir {output} is not writable ({exc.strerror or exc}); pass a writable --output.") from exc
    return output


def _write_atomic_text(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def _evaluate(evaluation: dict[str, Any], model: Any, data: Any, log: Log) -> tuple[dict, dict]:
    """Exact test top-k of the model and of the dataset's baselines, logged as a small table."""
    log("evaluating on the test split (exact top-k over all candidates) ...")
    ks, exclude = evaluation["ks"], evaluation["exclude_train"]
    results = evaluate_topk(model, data, ks, exclude, evaluation["batch_size"])
    baselines = {name: BASELINES[name](data, ks, exclude) for name in getattr(data, "baselines", ("popularity",))}
    for prefix in ("", "excl_") if exclude else ("",):
        if prefix:
            log("  excluding each user's training items:")
        log(f"  {'model':<13}{_format_topk(results, ks, prefix)}")
        for name, baseline in baselines.items():
            log(f"  {name:<13}{_format_topk(baseline, ks, prefix)}")
    return results, baselines


def _read_history(path: Path) -> dict[str, list[float]]:
    """Per-epoch values from the CSVLogger file (all epochs, also across a resume)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    keys = [k for k in (rows[0] if rows else {}) if k != "epoch"]
    # CSVLogger writes "NA" for validation columns when there is no validation data.
    return {k: [float(row[k]) for row in rows] for k in keys if all(row[k] != "NA" for row in rows)}


def _format_topk(results: dict[str, float], ks: list[int], prefix: str = "") -> str:
    return "  ".join(f"top-{k} {results[f'{prefix}top_{k}']:.4f}" for k in ks)


def build_index(model: Any, data: Any, section: dict[str, Any]) -> Any:
    """Indexes every candidate under its id, with the query tower in front."""
    name, options = recipe_config.component_config(section)
    index = create_index(name, query_model=model.query_tower, **options)
    keys = model.candidate_tower.feature_keys
    embeddings = embed(model.candidate_tower, {k: data.candidate_features[k] for k in keys})
    index.index(embeddings, identifiers=tf.constant(data.candidate_ids.astype(str)))
    return index


def run(
    config: dict[str, Any],
    output_dir: str | os.PathLike,
    *,
    log: Log = print,
    verbose: int = 1,
    resume: bool = False,
    checkpoint_every: int = 1,
    tensorboard: bool = False,
) -> RunResult:
    """Runs a resolved recipe end to end and writes its reports into ``output_dir``.

    Args:
        config: A recipe resolved by :func:`towerkit.config.resolve`.
        output_dir: Where metrics.json, config.toml, history.csv, checkpoints and the export go.
        log: Receives one-line progress messages.
        verbose: Keras' fit verbosity (1 = progress bars, 2 = a line per epoch).
        resume: Continue from the latest checkpoint in ``output_dir``.
        checkpoint_every: Save a checkpoint every this many epochs (and after the last).
        tensorboard: Also write TensorBoard logs to ``output_dir/tensorboard``.
    """
    train = config["train"]
    strategy = make_strategy(train["strategy"])
    chief = is_chief(strategy)
    output = prepare_output_dir(output_dir)
    if chief:
        # Written first, so `train --resume` can rebuild exactly this run after a kill.
        _write_atomic_text(output / "config.toml", recipe_config.to_toml(config))
    else:
        # Other workers keep their checkpoints apart and write no reports.
        output = prepare_output_dir(output / f".worker-{worker_id(strategy)}")
    timings: dict[str, float] = {}
    started = time.perf_counter()

    name, options = recipe_config.component_config(config["dataset"])
    log(f"loading dataset {name} ...")
    data = load_dataset(name, **options)
    timings["load_seconds"] = time.perf_counter() - started
    info = data.describe()
    log(f"  {info['interactions']:,} interactions ({info['train']:,} train / {info['test']:,} test), "
        f"{info['queries']:,} queries, {info['candidates']:,} candidates")

    tf.keras.utils.set_random_seed(train["seed"])
    # Variables, optimizer slots and metrics must be created under the strategy.
    with strategy.scope():
        model = build_model(config, data)
        model.compile(optimizer=make_optimizer(config["optimizer"]["name"], config["optimizer"]["learning_rate"]))
    dataset = training_dataset(data, model.feature_keys, train["batch_size"], train["shuffle_buffer"], train["seed"])
    if strategy.num_replicas_in_sync > 1:
        log(f"  {train['strategy']} strategy: {strategy.num_replicas_in_sync} replicas, global batch {train['batch_size']}")

    saver, initial_epoch = checkpointing(model, output, checkpoint_every, train["epochs"], resume)
    history_path = output / "history.csv"
    if resume:
        trim_history(history_path, initial_epoch)
        log(f"resuming from the checkpoint after epoch {initial_epoch}")
    elif history_path.exists():
        history_path.unlink()
    curves = EpochEvaluation(data)
    # Order matters: the curve evaluation feeds the CSV logger, and the CSV row
    # is on disk before the checkpoint, so a resumed run never lacks a row.
    callbacks = [curves, tf.keras.callbacks.CSVLogger(str(history_path), append=True), saver]
    if not config["evaluate"]["every_epoch"]:
        callbacks.remove(curves)
    if not chief:
        callbacks = [saver]
    if tensorboard:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=str(output / "tensorboard")))
    log(f"training {train['epochs']} epochs, batch {train['batch_size']} ...")
    tick = time.perf_counter()
    history = model.fit(
        dataset, epochs=train["epochs"], initial_epoch=initial_epoch, verbose=verbose, callbacks=callbacks
    ).history
    timings["fit_seconds"] = time.perf_counter() - tick - curves.seconds
    timings["epoch_evaluation_seconds"] = curves.seconds
    if not chief:
        log("training done; the chief worker writes the reports and the export")
        timings["total_seconds"] = time.perf_counter() - started
        return RunResult({"timing": timings, "history": history}, output, model, data)

    tick = time.perf_counter()
    results, baselines = _evaluate(config["evaluate"], model, data, log)
    timings["evaluate_seconds"] = time.perf_counter() - tick

    log(f"building index {config['index']['name']} ...")
    tick = time.perf_counter()
    index = build_index(model, data, config["index"])
    timings["index_seconds"] = time.perf_counter() - tick
    example = config["export"]["example_query"]
    query_keys = list(model.query_tower.feature_keys)
    example_features = example_query_features(data, query_keys, example)
    _, top = index({k: _as_tensor(v) for k, v in example_features.items()})
    example_top = [t.decode("utf-8") for t in top[0].numpy() if t.decode("utf-8") != example][:3]
    log(f"  top 3 for {query_keys[0]}={example!r}: {example_top}")

    metrics: dict[str, Any] = {
        "recipe": config["recipe"]["name"],
        "dataset": info,
        "example": {"query": example, "top": example_top},
    }
    for name, values in {"test": results, **baselines}.items():
        metrics[name] = {k: v for k, v in values.items() if not k.startswith("excl_")}
        if config["evaluate"]["exclude_train"]:
            suffix = "test_excluding_train" if name == "test" else f"{name}_excluding_train"
            metrics[suffix] = {k[5:]: v for k, v in values.items() if k.startswith("excl_")}

    export_dir = None
    if config["export"]["enabled"]:
        export_dir = output / "model"
        log(f"exporting to {export_dir} ...")
        tick = time.perf_counter()
        save_export(
            index,
            export_dir,
            query_feature_keys=query_keys,
            metadata=export_metadata(config, model, metrics),
            extra_files=serving_files(data, model),
            query_specs=query_specs(data, query_keys),
        )
        reloaded = load_export(export_dir).recommend(example_features)[1]
        reloaded_top = [t.decode("utf-8") for t in reloaded[0] if t.decode("utf-8") != example][:3]
        if reloaded_top != example_top:
            raise TowerkitError(
                f"the reloaded export returns {reloaded_top} but the index returned {example_top}; "
                "the export is inconsistent, please report this."
            )
        timings["export_seconds"] = time.perf_counter() - tick
        log(f"  reloaded export agrees: {reloaded_top}")

    timings["total_seconds"] = time.perf_counter() - started
    metrics["timing"] = timings
    metrics["history"] = _read_history(history_path)
    _write_atomic_text(output / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    write_png(output / "report.png", metrics["history"], metrics)
    write_markdown(output / "report.md", metrics, _examples(index, data, query_keys, example))
    return RunResult(metrics, output, model, data, index, export_dir, history)


def _examples(index: Any, data: Any, query_keys: list[str], first: str, count: int = 3) -> dict[str, list[str]]:
    """Top 5 for the example query and a few test queries, for report.md."""
    if len(query_keys) != 1:
        return {}
    queries = [first] + [q for q in dict.fromkeys(data.interactions[query_keys[0]][data.test_rows].tolist())
                         if q != first][: count - 1]
    _, ids = index({query_keys[0]: tf.constant(queries)})
    return {f"{query_keys[0]} {q}": [i.decode("utf-8") for i in row[:6] if i.decode("utf-8") != q][:5]
            for q, row in zip(queries, ids.numpy())}


def serving_files(data: Any, model: Any) -> dict[str, bytes]:
    """What `recommend` needs beside the model: known query ids and each one's training items."""
    queries = data.interactions[data.query_id_key][data.train_rows].tolist()
    candidates = data.interactions[data.candidate_id_key][data.train_rows].tolist()
    seen: dict[str, list[str]] = {}
    for query, candidate in zip(queries, candidates):
        seen.setdefault(str(query), []).append(str(candidate))
    files = {SEEN_FILE: json.dumps(seen).encode("utf-8")}
    vocabulary = getattr(model.query_tower, "vocabulary", None)
    if vocabulary is not None:
        files[QUERY_VOCABULARY_FILE] = json.dumps(list(vocabulary)).encode("utf-8")
    return files


def export_metadata(config: dict[str, Any], model: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    from towerkit.registry import registry

    components = {}
    for section, kind in recipe_config.COMPONENT_SECTIONS.items():
        entry = registry(kind).get(config[section]["name"])
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
        "metrics": {k: v for k, v in metrics.items() if k != "history"},
        "distributions": sorted({c["source"] for c in components.values()}),
    }
