"""One training step: towerkit's against the bare in-batch softmax step, in the same process.

The bare step is the floor any two-tower trainer stands on: the logits matmul
``Q @ C^T`` of a ``[B, d]`` query and candidate batch, then
``sum(logsumexp(logits) - diag(logits))``, forward and backward (gradients
for Q and C), as a ``tf.function`` with and without XLA; the faster of the
two is the floor. towerkit's step is a real one: the recipe's model (id
lookups, embedding gathers, the retrieval task, the optimizer update, Keras'
train function) on a real batch of the same size.

Informational rows show where the rest goes: the bare step with the hand
gradient towerkit's task uses (on random, all-distinct embeddings: no column
repeats), and towerkit's forward and backward pass without the optimizer
update. On real data towerkit's task merges a batch's repeated candidates
(8,192 MovieLens ratings name at most 1,682 movies) into one softmax column
each, the same loss over a much smaller matrix, so its step can fall well
below the floor.

Usage:
    python benchmarks/step_bench.py [--batch 8192] [--dim 32] [--rounds 7] [--check]

Target (issue 18, 2): at batch 8192 and d=32, towerkit's step is within
1.5x of the floor (medians, interleaved rounds, same process).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import towerkit  # noqa: E402  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf  # noqa: E402

import benchlib  # noqa: E402
from towerkit import config as recipe_config  # noqa: E402
from towerkit.models import build_model  # noqa: E402
from towerkit.pipeline import training_dataset  # noqa: E402
from towerkit.tasks.retrieval import in_batch_softmax_loss  # noqa: E402

TARGET_RATIO = 1.5


def bare_step(queries: tf.Tensor, candidates: tf.Tensor, jit_compile: bool, hand_gradient: bool) -> Callable[[], Any]:
    """The in-batch softmax step alone: logits, loss, gradients for both embedding batches."""

    @tf.function(jit_compile=jit_compile)
    def gradients(q, c):
        with tf.GradientTape() as tape:
            tape.watch([q, c])
            if hand_gradient:
                loss = tf.reduce_sum(in_batch_softmax_loss(q, c, tf.range(tf.shape(q)[0])))
            else:
                logits = tf.linalg.matmul(q, c, transpose_b=True)
                loss = tf.reduce_sum(tf.reduce_logsumexp(logits, axis=1) - tf.linalg.diag_part(logits))
        return tape.gradient(loss, [q, c])

    def step():
        query_gradient, _ = gradients(queries, candidates)
        return query_gradient.numpy()  # waits for the step to finish

    return step


def towerkit_model(args: argparse.Namespace) -> tuple[Any, dict[str, tf.Tensor]]:
    """The recipe's compiled model at the given batch and width, and one full training batch."""
    raw, origin = recipe_config.load_recipe(args.recipe)
    overrides = [f"train.batch_size={args.batch}", f"query_tower.embedding_dim={args.dim}",
                 f"candidate_tower.embedding_dim={args.dim}", f"dataset.name={args.dataset}"]
    config = recipe_config.resolve(recipe_config.apply_overrides(raw, overrides), origin)
    data = towerkit.load_dataset(args.dataset)
    if len(data.train_rows) < args.batch:
        raise SystemExit(f"{args.dataset} has {len(data.train_rows)} training rows, fewer than one batch of {args.batch}.")
    tf.keras.utils.set_random_seed(config["train"]["seed"])
    model = build_model(config, data)
    train = config["train"]
    batch = next(iter(training_dataset(data, model.feature_keys, train["batch_size"], train["shuffle_buffer"],
                                       train["seed"])))
    return model, batch


def towerkit_step(model: Any, batch: dict[str, tf.Tensor]) -> Callable[[], Any]:
    """One call of Keras' train function (one step at steps_per_execution=1) on the same full batch."""
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    train_function = model.make_train_function()

    def step():
        return float(train_function(iterator)["loss"])

    return step


def towerkit_gradients(model: Any, batch: dict[str, tf.Tensor]) -> Callable[[], Any]:
    """towerkit's forward and backward pass (towers, task, regularization), without the optimizer update."""

    @tf.function
    def gradients(features):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(features, training=True) + tf.add_n(model.losses or [tf.constant(0.0)])
        return tape.gradient(loss, model.trainable_variables)

    def step():
        return [np.asarray(tf.convert_to_tensor(g)) for g in gradients(batch)]

    return step


def timed(step: Callable[[], Any], steps: int) -> Callable[[], tuple[float, float]]:
    """Wall and process-CPU seconds per step, averaged over ``steps`` consecutive steps.

    CPU time counts every thread of this process: on a quiet machine it is
    about cores x wall when the step keeps the cores busy, and unlike wall
    time it hardly moves when other processes load the machine.
    """

    def sample() -> tuple[float, float]:
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps, (time.process_time() - cpu_start) / steps

    return sample


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved samples of each side (at least 3)")
    parser.add_argument("--steps", type=int, default=5, help="steps averaged in each sample")
    parser.add_argument("--recipe", default="basic-retrieval")
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/step_bench.txt")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3: a median of fewer runs is not a result")
    report = benchlib.Report("step_bench", sys.argv[1:] if argv is None else argv)
    report.machine("machine (before)")

    model, batch = towerkit_model(args)
    rng = np.random.default_rng(0)
    queries, candidates = (tf.constant(rng.normal(scale=0.1, size=(args.batch, args.dim)), tf.float32)
                           for _ in range(2))
    sides = {
        "bare, autodiff": bare_step(queries, candidates, jit_compile=False, hand_gradient=False),
        "bare, autodiff, XLA": bare_step(queries, candidates, jit_compile=True, hand_gradient=False),
        "bare, hand gradient": bare_step(queries, candidates, jit_compile=False, hand_gradient=True),
        "towerkit fwd+bwd, no update": towerkit_gradients(model, batch),
        "towerkit training step": towerkit_step(model, batch),
    }
    for step in sides.values():  # traces, XLA compiles and first-call allocations stay out of the timings
        step()
        step()
    samples = benchlib.interleave({name: timed(step, args.steps) for name, step in sides.items()}, args.rounds)
    summaries = {name: benchlib.summarize([wall for wall, _ in values]) for name, values in samples.items()}
    cpu = {name: benchlib.summarize([used for _, used in values]) for name, values in samples.items()}

    floor_name = min(("bare, autodiff", "bare, autodiff, XLA"), key=lambda n: summaries[n]["median"])
    floor = summaries[floor_name]["median"]
    ours = summaries["towerkit training step"]["median"]
    report.say()
    report.say(f"batch {args.batch}, d={args.dim}, recipe {args.recipe} on {args.dataset}; "
               f"{args.rounds} interleaved rounds of {args.steps} steps each")
    report.table(["step", "wall ms, median [min-max]", "x floor", "CPU ms, median"],
                 [(name, benchlib.timing_cell(s, 1000, 1), f"{s['median'] / floor:.2f}",
                   f"{cpu[name]['median'] * 1000:.1f}") for name, s in summaries.items()], width=26)
    report.say(f"floor: {floor_name}")
    report.say()
    report.machine("machine (after)")
    checks = [benchlib.Check(f"towerkit step <= {TARGET_RATIO}x the bare step", ours / floor, "<=", TARGET_RATIO)]
    status = benchlib.finish(checks, args.check, report)
    if not args.no_write:
        print(f"written to {report.write()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
