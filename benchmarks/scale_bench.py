"""Scale: one epoch on 1M users x 1M items x 10M interactions at d=32, on this machine.

Prints the resident and peak RSS after each stage, training examples per
second, and the time to build a ScaNN index over the 1M item embeddings.
Targets: one epoch within 24 GiB (issue 8); peak RSS at most 3 GiB (issue 19).
Issue 19 measured 7.75 GiB before the memory diet; see docs/scaling.md for
the before/after table.

``--input stream`` (the default) trains from ``SyntheticDataset.train_stream``,
which ``pipeline.training_dataset`` calls for a dataset that has it;
``--input slices`` from the older slice-and-cache pipeline
(``to_tf_dataset(train_features).shuffle.batch.cache``), for comparison.

After the epoch it does what the train job (``towerkit.pipeline``) does next, minus the
evaluation: drops the training input (local to the fit stage there), builds the index with
``towerkit.models.build_index`` (the index stage's call), and answers one query through it.

``--streamed`` runs issue 19's second target instead: 10M users x 10M items x
100M interactions generated on the fly (never held), ``--steps`` steps of the
epoch (each ``--batch-size`` rows), with the epoch's time extrapolated from the
measured examples per second. RSS is printed after the first 10% of the
steps and at the end, so a growing footprint would show.

Usage: python benchmarks/scale_bench.py [--users 1000000] [--items 1000000]
                                         [--interactions 10000000] [--batch-size 8192]
                                         [--input stream|slices] [--check]
       python benchmarks/scale_bench.py --streamed [--steps 300] [--check]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import towerkit  # noqa: E402  (selects Keras 2)
import tensorflow as tf  # noqa: E402

from towerkit.datasets.base import to_tf_dataset  # noqa: E402
from towerkit.models import build_index, make_optimizer  # noqa: E402

PEAK_TARGET_GIB = 3.0
STREAMED_TARGET_GIB = 24.0
SHUFFLE_BUFFER = 100_000


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def rss_gib() -> float:
    """The resident set now (peak_rss_gib is the most it has been)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def memory() -> str:
    return f"RSS {rss_gib():5.2f} GiB, peak {peak_rss_gib():5.2f} GiB"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="utf-8")
                if line.startswith("model name")), "unknown CPU")
    return f"{cpu}, {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"


def build(data, dim: int):
    tf.keras.utils.set_random_seed(0)
    model = towerkit.assemble(query={"name": "user", "embedding_dim": dim},
                              candidate={"name": "movie", "embedding_dim": dim}, data=data)
    model.compile(optimizer=make_optimizer("adagrad", 0.1))
    return model


def slices_input(data, keys, batch_size: int) -> tf.data.Dataset:
    """The pipeline before train_stream: the training columns sliced, made tensors, shuffled and cached."""
    return (to_tf_dataset(data.train_features(keys)).shuffle(min(SHUFFLE_BUFFER, len(data.train_rows)), seed=0)
            .batch(batch_size).cache().prefetch(tf.data.AUTOTUNE))


def in_memory(args) -> float:
    start = time.perf_counter()
    data = towerkit.load_dataset("synthetic", num_users=args.users, num_items=args.items,
                                 num_interactions=args.interactions, genres=False)
    print(f"generate data:    {time.perf_counter() - start:8.1f} s   {memory()}")

    start = time.perf_counter()
    model = build(data, args.dim)
    if args.input == "stream":
        dataset = data.train_stream(model.feature_keys, args.batch_size, shuffle_buffer=SHUFFLE_BUFFER, seed=0)
    else:
        dataset = slices_input(data, model.feature_keys, args.batch_size)
    print(f"assemble + input: {time.perf_counter() - start:8.1f} s   {memory()}   (input: {args.input})")

    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    examples = len(data.train_rows)
    print(f"one epoch:        {seconds:8.1f} s   {examples / seconds:,.0f} examples/s over {examples:,}   "
          f"{memory()}")
    # The train job drops its input once fit returns (it is local to the fit stage); so does this.
    del dataset
    gc.collect()

    # The train job's index stage: build_index embeds every candidate and builds the index over
    # them under their ids; then the example query goes through the index, raw features in.
    start = time.perf_counter()
    index = build_index(model, data, {"name": "scann", "k": 10})
    print(f"embed {len(data.candidate_ids):,} items + ScaNN build: {time.perf_counter() - start:6.1f} s   "
          f"{memory()}   {index.parameters()}")
    user = data.column("user_id", data.test_rows[:1])
    top = index({"user_id": tf.constant(user)})[1][0, :3].numpy()
    print(f"top 3 for test user {user[0]!r}: {[t.decode() for t in top]}   {memory()}")
    return PEAK_TARGET_GIB


def streamed(args) -> float:
    start = time.perf_counter()
    data = towerkit.load_dataset("synthetic", num_users=args.users, num_items=args.items,
                                 num_interactions=args.interactions, genres=False, streamed=True)
    print(f"latent structure + {len(data.train_rows) + len(data.test_rows):,} materialised rows: "
          f"{time.perf_counter() - start:8.1f} s   {memory()}")

    start = time.perf_counter()
    model = build(data, args.dim)
    dataset = data.train_stream(model.feature_keys, args.batch_size, shuffle_buffer=SHUFFLE_BUFFER, seed=0)
    print(f"assemble ({args.users:,} + {args.items:,} ids) + input: {time.perf_counter() - start:8.1f} s   "
          f"{memory()}")

    warmup = max(1, args.steps // 10)
    start = time.perf_counter()
    model.fit(dataset.take(warmup), epochs=1, verbose=0)
    print(f"first {warmup} steps (incl. tracing): {time.perf_counter() - start:8.1f} s   {memory()}")
    rest = args.steps - warmup
    start = time.perf_counter()
    model.fit(dataset.skip(warmup).take(rest), epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    rate = rest * args.batch_size / seconds
    epoch_steps = -(-data.num_train_rows // args.batch_size)
    print(f"next {rest} steps: {seconds:8.1f} s   {rate:,.0f} examples/s   {memory()}")
    print(f"ran {args.steps} of the epoch's {epoch_steps:,} steps (batch {args.batch_size}, "
          f"{args.steps * args.batch_size:,} of {data.num_train_rows:,} training rows); epoch extrapolated at "
          f"{rate:,.0f} examples/s: {data.num_train_rows / rate / 3600:.1f} h")
    return STREAMED_TARGET_GIB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streamed", action="store_true", help="10M x 10M x 100M generated on the fly")
    parser.add_argument("--users", type=int)
    parser.add_argument("--items", type=int)
    parser.add_argument("--interactions", type=int)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--input", choices=("stream", "slices"), default="stream")
    parser.add_argument("--steps", type=int, default=300, help="streamed: steps of the epoch to run")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    size = 10_000_000 if args.streamed else 1_000_000
    args.users, args.items = args.users or size, args.items or size
    args.interactions = args.interactions or size * 10
    print(f"machine: {machine()}")
    print(f"command: {' '.join(sys.argv)}")
    target = streamed(args) if args.streamed else in_memory(args)
    peak = peak_rss_gib()
    print(f"peak RSS {peak:.2f} GiB   (load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    passed = peak <= target
    print(f"{'PASS' if passed else 'FAIL'}  peak RSS at most {target:g} GiB")
    return 0 if passed or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
