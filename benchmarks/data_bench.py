"""Loading your own data: load + split speed and peak memory of the interactions dataset.

Generates an interaction log (user id, item id, timestamp as int64 columns) in
a temporary directory, as CSV and as Parquet, then loads and splits it with
the ``interactions`` dataset (``split = "random"``) several times, each load in
a fresh process so that its peak RSS is its own. Runs alternate between the
formats (CSV, Parquet, CSV, ...) so that a change in machine load hits both.

Reports per format the median and the spread (min to max) of:

* load + split throughput in rows/s (target for Parquet: at least 2M rows/s);
* peak RSS above the process's RSS after imports, against the bytes of the
  columns used as Arrow holds them (target: at most 3x).

With ``--epoch`` it also times one training epoch of id-embedding towers from
the Parquet file. The CPU model and load average are printed, since both move
the numbers.

Usage: python benchmarks/data_bench.py [--rows 10000000] [--users 1000000] [--items 200000]
                                       [--runs 3] [--shuffle auto] [--epoch]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FORMATS = ("csv", "parquet")
COLUMNS = ("user", "item", "ts")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def generate(directory: Path, rows: int, users: int, items: int, seed: int = 0) -> dict[str, Path]:
    """Writes the log as CSV and Parquet; users are uniform, items Zipf-like, times increasing."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    cumulative = np.cumsum(popularity / popularity.sum())
    table = pa.table({
        "user": rng.integers(0, users, size=rows, dtype=np.int64),
        "item": np.minimum(np.searchsorted(cumulative, rng.random(rows)), items - 1).astype(np.int64),
        "ts": np.sort(rng.integers(1_500_000_000, 1_700_000_000, size=rows, dtype=np.int64)),
    })
    paths = {"csv": directory / "events.csv", "parquet": directory / "events.parquet"}
    pacsv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"])
    return paths


def column_bytes(path: Path) -> int:
    """Bytes of the used columns as Arrow holds them once read (ids as read: text for CSV)."""
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows * 8 * len(COLUMNS)


def child(path: str, shuffle: str) -> None:
    """One measured load in this process; prints a JSON line."""
    import pyarrow.compute  # noqa: F401  (imports are not the load's memory)
    import pyarrow.csv  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import towerkit  # noqa: F401  (selects Keras 2)
    from towerkit.datasets.interactions import InteractionsDataset

    baseline = rss_bytes()
    start = time.perf_counter()
    data = InteractionsDataset(path, query_id="user", candidate_id="item", timestamp="ts", shuffle=shuffle)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    held = sum(array.nbytes for array in data.interactions.values())
    print(json.dumps({"seconds": seconds, "rows": len(data.interactions["user"]), "baseline": baseline,
                      "peak": peak, "held": held, "train": len(data.train_rows), "test": len(data.test_rows)}))


def measure(path: Path, shuffle: str) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", str(path), "--shuffle", shuffle],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"the load of {path} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def one_epoch(path: Path, batch_size: int = 8192) -> tuple[float, int]:
    import tensorflow as tf

    import towerkit
    from towerkit.datasets.base import to_tf_dataset
    from towerkit.datasets.interactions import InteractionsDataset

    data = InteractionsDataset(path, query_id="user", candidate_id="item")
    tf.keras.utils.set_random_seed(0)
    model = towerkit.assemble(query={"name": "features", "side": "query"},
                              candidate={"name": "features", "side": "candidate"}, data=data)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    dataset = to_tf_dataset(data.train_features(model.feature_keys)).batch(batch_size).prefetch(2)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    return time.perf_counter() - start, len(data.train_rows)


def _spread(values: list[float], scale: float = 1.0, fmt: str = "{:,.0f}") -> str:
    values = [v / scale for v in values]
    return f"{fmt.format(statistics.median(values))} (min {fmt.format(min(values))}, max {fmt.format(max(values))})"


def report(paths: dict[str, Path], results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    used = column_bytes(paths["parquet"])
    print(f"\n{args.rows:,} rows; columns used: {', '.join(COLUMNS)} (int64), {used / 2**20:,.0f} MiB in Arrow; "
          f"files: CSV {paths['csv'].stat().st_size / 2**20:,.0f} MiB, Parquet "
          f"{paths['parquet'].stat().st_size / 2**20:,.0f} MiB")
    print(f"{'format':<8}{'load + split rows/s':<44}{'peak RSS above baseline, MiB':<44}{'x column bytes'}")
    verdicts = []
    for fmt in FORMATS:
        runs = results[fmt]
        speeds = [r["rows"] / r["seconds"] for r in runs]
        growth = [r["peak"] - r["baseline"] for r in runs]
        ratios = [g / used for g in growth]
        print(f"{fmt:<8}{_spread(speeds):<44}{_spread(growth, 2**20):<44}{_spread(ratios, fmt='{:.2f}')}")
        if fmt == "parquet":
            verdicts.append(("load + split >= 2M rows/s (Parquet, median)", statistics.median(speeds) >= 2e6))
        verdicts.append((f"peak RSS <= 3x column bytes ({fmt}, median)", statistics.median(ratios) <= 3))
    first = results["parquet"][0]
    held_ratios = [(r["peak"] - r["baseline"]) / r["held"] for fmt in FORMATS for r in results[fmt]]
    print(f"peak RSS above baseline vs the NumPy columns the dataset holds: {_spread(held_ratios, fmt='{:.2f}')}x")
    print(f"held after loading: {first['held'] / 2**20:,.0f} MiB of NumPy columns (ids as fixed-width text); "
          f"process baseline after imports {first['baseline'] / 2**20:,.0f} MiB; "
          f"split {first['train']:,} train / {first['test']:,} test, shuffle {args.shuffle}")
    for label, ok in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {label}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epoch", action="store_true", help="also time one training epoch from the Parquet file")
    parser.add_argument("--shuffle", default="auto", choices=("auto", "tutorial", "numpy"),
                        help="the random split's shuffle (auto: the tutorial's up to 1M rows, NumPy above)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.shuffle)
        return
    print(f"CPU: {cpu_model()} x {os.cpu_count()}; load average before: "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="towerkit-data-bench-") as directory:
        start = time.perf_counter()
        paths = generate(Path(directory), args.rows, args.users, args.items)
        print(f"generated {args.rows:,} rows as CSV and Parquet in {time.perf_counter() - start:.1f} s")
        results: dict[str, list[dict]] = {fmt: [] for fmt in FORMATS}
        for run in range(args.runs):
            for fmt in FORMATS:
                results[fmt].append(measure(paths[fmt], args.shuffle))
                last = results[fmt][-1]
                print(f"  run {run + 1} {fmt:<8} {last['seconds']:6.2f} s  {last['rows'] / last['seconds']:>12,.0f} rows/s"
                      f"  peak RSS {last['peak'] / 2**20:,.0f} MiB", flush=True)
        report(paths, results, args)
        if args.epoch:
            seconds, examples = one_epoch(paths["parquet"])
            print(f"one epoch from Parquet: {seconds:.1f} s, {examples / seconds:,.0f} examples/s over {examples:,}")
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
