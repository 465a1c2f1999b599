"""Loading your own data: load + split speed, peak memory, and one training epoch of the interactions dataset.

Generates an interaction log (user id, item id, timestamp as int64 columns) in
a temporary directory, as CSV and as Parquet, then loads and splits it with
the ``interactions`` dataset (``split = "random"``) several times, each load in
a fresh process so that its peak RSS is its own. Runs alternate between the
formats (CSV, Parquet; then Parquet, CSV; ...) so that a change in machine
load hits both.

Reports per format the median [min-max] of:

* load + split throughput in rows/s (target for Parquet: at least 2M rows/s);
* peak RSS above the process's RSS after imports, against the bytes of the
  columns used as Arrow holds them, 8 bytes per int64 cell (target: at most 3x).

Then it times one training epoch of ``features`` towers (user id, item id) from
the Parquet file, each run in a fresh process (with its peak RSS: load, model build and epoch): in memory, and (with
``--stream``) streamed from the file with ``stream = true``. The CPU model and
load average are printed, since both move the numbers; a full-size run (the
defaults) writes what it printed to benchmarks/results/data_bench.txt.

Usage: python benchmarks/data_bench.py [--rows 10000000] [--users 1000000] [--items 200000]
                                       [--runs 3] [--epoch-runs 1] [--stream] [--check]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

FORMATS = ("csv", "parquet")
COLUMNS = ("user", "item", "ts")
DEFAULT_ROWS = 10_000_000
TARGET_ROWS_PER_SECOND = 2_000_000
TARGET_MEMORY_RATIO = 3.0


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
    """Bytes of the used columns as Arrow holds them once read from Parquet (int64: 8 bytes a cell)."""
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows * 8 * len(COLUMNS)


def load_worker(path: str) -> dict:
    """One measured load + split in this (fresh) process."""
    import pyarrow.compute  # noqa: F401  (imports are not the load's memory)
    import pyarrow.csv  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import towerkit  # noqa: F401  (selects Keras 2)
    from towerkit.datasets.interactions import InteractionsDataset

    baseline = rss_bytes()
    start = time.perf_counter()
    data = InteractionsDataset(path, query_id="user", candidate_id="item", timestamp="ts")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    held = held_bytes(data.interactions)
    return {"seconds": seconds, "rows": len(data.interactions["user"]), "baseline": baseline, "peak": peak,
            "held": held, "train": len(data.train_rows), "test": len(data.test_rows)}


def held_bytes(columns) -> int:
    """Bytes of the interaction columns as held: a coded column's codes plus its table of distinct values."""
    coded = getattr(columns, "coded", {})
    plain = getattr(columns, "plain", columns)
    tables = {id(table): table.nbytes for table, _ in coded.values()}
    codes = {id(codes): codes.nbytes for _, codes in coded.values()}
    return sum(tables.values()) + sum(codes.values()) + sum(array.nbytes for array in plain.values())


def epoch_worker(path: str, streamed: bool, batch_size: int = 8192) -> dict:
    """One training epoch of features towers (user id, item id) from the Parquet file, in this process."""
    import tensorflow as tf

    import towerkit
    from towerkit.pipeline import training_dataset

    baseline = rss_bytes()
    start = time.perf_counter()
    data = towerkit.load_dataset("interactions", path=path, query_id="user", candidate_id="item",
                                 stream=streamed)
    if streamed:
        data.sample_test_queries(100)
    tf.keras.utils.set_random_seed(0)
    model = towerkit.assemble(query={"name": "features", "side": "query"},
                              candidate={"name": "features", "side": "candidate"}, data=data)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    dataset = training_dataset(data, model.feature_keys, batch_size, shuffle_buffer=100_000, seed=0)
    ready = time.perf_counter()
    history = model.fit(dataset, epochs=1, verbose=0)
    examples = data.describe()["train"]
    return {"load_and_build": ready - start, "seconds": time.perf_counter() - ready, "examples": examples,
            "loss": float(history.history["loss"][-1]), "baseline": baseline,
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def measure_loads(paths: dict[str, Path], runs: int, report: benchlib.Report) -> dict[str, list[dict]]:
    def side(fmt: str):
        def run() -> dict:
            result = benchlib.run_worker(__file__, ["load", str(paths[fmt])])
            report.say(f"  load {fmt:<8} {result['seconds']:6.2f} s  {result['rows'] / result['seconds']:>12,.0f} rows/s"
                       f"  peak RSS {(result['peak'] - result['baseline']) / 2**20:,.0f} MiB above baseline")
            return result
        return run

    return benchlib.interleave({fmt: side(fmt) for fmt in FORMATS}, runs)


def measure_epochs(path: Path, runs: int, streamed: bool, report: benchlib.Report) -> dict[str, list[dict]]:
    def side(mode: str):
        def run() -> dict:
            result = benchlib.run_worker(__file__, ["epoch", str(path), mode])
            report.say(f"  epoch {mode:<9} {result['seconds']:6.1f} s  "
                       f"{result['examples'] / result['seconds']:>10,.0f} examples/s"
                       f"  (load + build {result['load_and_build']:.1f} s, loss {result['loss']:.1f}, "
                       f"peak RSS {(result['peak'] - result['baseline']) / 2**20:,.0f} MiB above baseline)")
            return result
        return run

    modes = ["in-memory", *(["streamed"] if streamed else [])]
    return benchlib.interleave({mode: side(mode) for mode in modes}, runs)


def _cell(values: list[float], fmt: str = "{:,.0f}") -> str:
    summary = benchlib.summarize(values)
    return f"{fmt.format(summary['median'])} [{fmt.format(summary['min'])}-{fmt.format(summary['max'])}]"


def report_loads(paths: dict[str, Path], results: dict[str, list[dict]], args, report: benchlib.Report) -> list:
    used = column_bytes(paths["parquet"])
    report.say()
    report.say(f"{args.rows:,} rows; columns used: {', '.join(COLUMNS)} (int64), {used / 2**20:,.0f} MiB in Arrow; "
               f"files: CSV {paths['csv'].stat().st_size / 2**20:,.0f} MiB, Parquet "
               f"{paths['parquet'].stat().st_size / 2**20:,.0f} MiB; {args.runs} runs per format, interleaved")
    report.say(f"{'format':<9}{'load + split, rows/s':<36}{'peak RSS above baseline, MiB':<32}{'x column bytes'}")
    checks = []
    for fmt in FORMATS:
        runs = results[fmt]
        speeds = [r["rows"] / r["seconds"] for r in runs]
        ratios = [(r["peak"] - r["baseline"]) / used for r in runs]
        report.say(f"{fmt:<9}{_cell(speeds):<36}{_cell([(r['peak'] - r['baseline']) / 2**20 for r in runs]):<32}"
                   f"{_cell(ratios, '{:.2f}')}")
        if fmt == "parquet":
            checks.append(benchlib.Check("Parquet load + split rows/s, median >= 2M",
                                         benchlib.summarize(speeds)["median"], ">=", TARGET_ROWS_PER_SECOND))
        checks.append(benchlib.Check(f"{fmt} peak RSS / column bytes, median <= 3",
                                     benchlib.summarize(ratios)["median"], "<=", TARGET_MEMORY_RATIO))
    first = results["parquet"][0]
    report.say(f"held after loading: {first['held'] / 2**20:,.0f} MiB of NumPy columns (ids as int32 codes plus "
               f"their distinct values as text); process baseline after imports {first['baseline'] / 2**20:,.0f} "
               f"MiB; split {first['train']:,} train / {first['test']:,} test")
    return checks


def report_epochs(results: dict[str, list[dict]], runs: int, report: benchlib.Report) -> None:
    report.say()
    report.say(f"one epoch from the Parquet file, features towers (user id, item id), batch 8192; {runs} run(s) "
               "per mode, interleaved, each in a fresh process")
    report.say(f"{'mode':<11}{'epoch seconds':<28}{'examples/s':<32}{'load + build seconds':<24}"
               "peak RSS above baseline, MiB (load, build, epoch)")
    for mode, rows in results.items():
        report.say(f"{mode:<11}{_cell([r['seconds'] for r in rows], '{:.1f}'):<28}"
                   f"{_cell([r['examples'] / r['seconds'] for r in rows]):<32}"
                   f"{_cell([r['load_and_build'] for r in rows], '{:.1f}'):<24}"
                   f"{_cell([(r['peak'] - r['baseline']) / 2**20 for r in rows])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3, help="loads per format (interleaved)")
    parser.add_argument("--epoch-runs", type=int, default=1,
                        help="training epochs per mode, each in a fresh process (0: none; one epoch of 8M rows takes minutes)")
    parser.add_argument("--stream", action="store_true", help="also time an epoch streamed with stream = true")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, path, *rest = args.worker
        benchlib.emit_result(load_worker(path) if kind == "load" else epoch_worker(path, rest[0] == "streamed"))
        return 0
    command = [a for a in sys.argv[1:]]
    report = benchlib.Report("data_bench", command)
    report.machine("machine before")
    with tempfile.TemporaryDirectory(prefix="towerkit-data-bench-") as directory:
        start = time.perf_counter()
        paths = generate(Path(directory), args.rows, args.users, args.items)
        report.say(f"generated {args.rows:,} rows ({args.users:,} users, {args.items:,} items) as CSV and Parquet "
                   f"in {time.perf_counter() - start:.1f} s")
        checks = report_loads(paths, measure_loads(paths, args.runs, report), args, report)
        if args.epoch_runs:
            report_epochs(measure_epochs(paths["parquet"], args.epoch_runs, args.stream, report), args.epoch_runs,
                          report)
    report.say(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    status = benchlib.finish(checks, args.check, report)
    if args.rows == DEFAULT_ROWS and args.runs >= 3:
        report.say(f"written to {report.write()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
