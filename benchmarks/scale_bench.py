"""Scale: one epoch on 1M users x 1M items x 10M interactions at d=32, on this machine.

Prints the resident and peak RSS after each stage, training examples per
second, and the time to build a ScaNN index over the 1M item embeddings.
Targets: one epoch within 24 GiB (issue 8); peak RSS at most 3 GiB (issue 19).
Issue 19 measured 7.75 GiB before the memory diet (ids as 21-digit unicode,
per-row string building, TensorFlow converting unicode arrays through Python
strings); see docs/scaling.md for the before/after table.

Usage: python benchmarks/scale_bench.py [--users 1000000] [--items 1000000]
                                         [--interactions 10000000] [--batch-size 8192]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import towerkit  # noqa: E402  (selects Keras 2)
import tensorflow as tf  # noqa: E402

from towerkit.embedding import embed  # noqa: E402
from towerkit.models import make_optimizer  # noqa: E402
from towerkit.pipeline import training_dataset  # noqa: E402


PEAK_TARGET_GIB = 3.0


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=32)
    args = parser.parse_args()

    start = time.perf_counter()
    data = towerkit.load_dataset("synthetic", num_users=args.users, num_items=args.items,
                                 num_interactions=args.interactions, genres=False)
    print(f"generate data:    {time.perf_counter() - start:8.1f} s   {memory()}")

    start = time.perf_counter()
    tf.keras.utils.set_random_seed(0)
    model = towerkit.assemble(query={"name": "user", "embedding_dim": args.dim},
                              candidate={"name": "movie", "embedding_dim": args.dim}, data=data)
    model.compile(optimizer=make_optimizer("adagrad", 0.1))
    dataset = training_dataset(data, model.feature_keys, args.batch_size, 100_000, 0)
    print(f"assemble + input: {time.perf_counter() - start:8.1f} s   {memory()}")

    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    examples = len(data.train_rows)
    print(f"one epoch:        {seconds:8.1f} s   {examples / seconds:,.0f} examples/s over {examples:,}   "
          f"{memory()}")

    start = time.perf_counter()
    items = embed(model.candidate_tower, {"movie_title": data.candidate_ids})
    embed_seconds = time.perf_counter() - start
    start = time.perf_counter()
    index = towerkit.create_index("scann", k=10).index(items, identifiers=tf.constant(data.candidate_ids))
    print(f"embed {len(data.candidate_ids):,} items: {embed_seconds:5.1f} s; ScaNN build "
          f"{time.perf_counter() - start:6.1f} s {index.parameters()}")
    print(f"peak RSS {peak_rss_gib():.2f} GiB")
    print(f"{'PASS' if peak_rss_gib() < 24 else 'FAIL'}  one epoch within 24 GiB")
    print(f"{'PASS' if peak_rss_gib() <= PEAK_TARGET_GIB else 'FAIL'}  peak RSS at most {PEAK_TARGET_GIB:g} GiB")


if __name__ == "__main__":
    main()
