"""`towerkit serve` under load, on 127.0.0.1 only: QPS, p50/p99 latency, errors, and a memory soak.

Trains a small synthetic model with ``--items`` candidates, exports it twice (brute force, and
ScaNN tuned to ``index.target_recall = 0.95``), then:

1. **runs**: ``--runs`` interleaved rounds (brute force then ScaNN, then ScaNN then brute
   force, ...); each run starts a fresh ``towerkit serve``, warms it up and drives it with an
   asyncio client at concurrency 1, 8 and 32, ``--requests`` requests per level. QPS, p50 and
   p99 are reported as median [min-max] over the runs.
2. **soak**: a fresh server per export answers ``--soak`` requests at concurrency 32 while its
   resident memory (RSS) is sampled every ``--sample-every`` requests; first, last and largest
   sample and the least-squares slope (MB per 10k requests) are reported.

Every answer is checked (status 200, k ids, descending scores; a quarter of the requests carry
exclusions); any error fails the run. With ``--check``, exit 1 if any request failed, or the RSS
grew by more than ``--rss-bound-mb`` from the first soak sample (taken after warm-up) to the last.

Usage:
    python benchmarks/serve_bench.py --check          # full size (expected ~6 min on a quiet 2-core machine)
    python benchmarks/serve_bench.py --items 2000 --users 500 --requests 300 --soak 3000 --runs 1   # quick
    python benchmarks/serve_bench.py --coalescing     # also every run with --max-batch 1 (no coalescing)

Full-size runs (the defaults, with at least 3 runs) write their output to
benchmarks/results/serve_bench.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # never anything else: the benchmark must not reach beyond this machine
K = 10
DEFAULT_MAX_BATCH = 64  # towerkit serve's default
WARM_UP = 200  # requests at concurrency 8 before anything is measured
SOAK_CONCURRENCY = 32
# Allowed RSS growth over the soak. After warm-up, TF's allocator and Python's heap still settle
# by a few MB; a per-request leak of even 1 KB would add 100 MB over 100k requests.
RSS_BOUND_MB = 25.0


def cli(*args: str) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "towerkit.cli", *args], capture_output=True, text=True,
                            env=env, cwd=str(ROOT))
    if result.returncode != 0:
        raise SystemExit(f"towerkit {' '.join(args)} failed (exit {result.returncode}):\n"
                         f"{(result.stdout + result.stderr)[-3000:]}")


def build_exports(folder: Path, items: int, users: int) -> dict[str, Path]:
    """A trained run with brute-force and ScaNN (target recall 0.95) exports of it."""
    recipe = folder / "bench.toml"
    recipe.write_text(f"""[recipe]
name = "bench"
[dataset]
name = "synthetic"
num_users = {users}
num_items = {items}
num_interactions = {max(4 * items, 20_000)}
genres = false
[query_tower]
name = "user"
embedding_dim = 32
[candidate_tower]
name = "movie"
embedding_dim = 32
[task]
name = "retrieval"
[train]
epochs = 1
batch_size = 4096
[evaluate]
# The benchmark serves; it needs no evaluation (and no users x items seen-matrix at 100k items).
every_epoch = false
exclude_train = false
ks = [10]
max_queries = 200  # the final evaluation of all 10k users at 100k items was OOM-killed (16.6 GB)
[index]
name = "brute-force"
k = {K}
[export]
example_query = "user 3"
""")
    cli("train", str(recipe), "-o", str(folder / "run"))
    # Below 20k candidates ScaNN would score exactly; the tree is forced so that small runs test it too.
    scann = ["--set", 'index.name="scann"', "--set", "index.target_recall=0.95"]
    if items < 20_000:
        scann += ["--set", "index.brute_force=false"]
    cli("export", "--model", str(folder / "run"), "-o", str(folder / "scann"), *scann)
    return {"brute-force": folder / "run" / "model", "scann": folder / "scann"}


class Server:
    """A `towerkit serve` subprocess on a free port of 127.0.0.1."""

    def __init__(self, export: Path, max_batch: int):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "towerkit.cli", "serve", str(export), "--host", HOST, "--port", "0",
             "--max-batch", str(max_batch)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT),
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        deadline = time.monotonic() + 300
        for line in self.process.stdout:
            if "ready on port" in line:
                self.port = int(line.rsplit(" ", 1)[1])
                break
            if time.monotonic() > deadline:
                break
        else:
            raise SystemExit(f"the server did not start (exit {self.process.wait()})")
        # Keep reading its output, so that a full pipe never stalls the server.
        threading.Thread(target=lambda: [None for _ in self.process.stdout], daemon=True).start()
        self.url = f"http://{HOST}:{self.port}/v1/models/bench:predict"

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=120)


def make_body(rng: random.Random, users: int, items: int) -> bytes:
    instance = {"user_id": f"user {rng.randrange(users)}", "k": K}
    if rng.random() < 0.25:  # a quarter of the requests leave out a few items, as seen-item filtering does
        instance["exclude"] = [f"item {rng.randrange(items)}" for _ in range(5)]
    return json.dumps({"instances": [instance]}).encode()


def check(status: int, answer: dict) -> bool:
    if status != 200:
        return False
    prediction = answer["predictions"][0]
    scores = prediction["scores"]
    return len(prediction["ids"]) == K and all(a >= b for a, b in zip(scores, scores[1:]))


async def drive(server: Server, concurrency: int, requests: int, users: int, items: int,
                sample_every: int = 0) -> dict:
    """Sends ``requests`` requests from ``concurrency`` workers; returns latency and error counts.

    With ``sample_every``, the server's RSS is also read after every that many answers:
    ``rss`` holds (answers so far, MB) pairs.
    """
    latencies: list[float] = []
    rss: list[tuple[int, float]] = []
    errors = 0
    remaining = iter(range(requests))
    rng = random.Random(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for _ in remaining:
            body = make_body(rng, users, items)
            start = time.perf_counter()
            try:
                async with session.post(server.url, data=body, headers={"Content-Type": "application/json"}) as reply:
                    ok = check(reply.status, await reply.json())
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError):
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok
            if sample_every and len(latencies) % sample_every == 0:
                rss.append((len(latencies), server.rss_mb()))

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"qps": len(latencies) / wall, "p50": statistics.median(ordered),
            "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], "errors": errors,
            "requests": len(latencies), "rss": rss}


def serving(export: Path, max_batch: int, args: argparse.Namespace, work: Callable[[Server], dict]) -> dict:
    """Starts a fresh server, warms it up, does ``work`` with it and stops it (which must exit 0)."""
    server = Server(export, max_batch)
    try:
        asyncio.run(drive(server, 8, WARM_UP, args.users, args.items))
        result = work(server)
    finally:
        code = server.stop()
    if code != 0:
        raise SystemExit(f"the server exited {code} on SIGTERM")
    return result


def one_run(export: Path, max_batch: int, args: argparse.Namespace) -> Callable[[], dict]:
    """A side for benchlib.interleave: a fresh server driven at each concurrency level."""
    def levels(server: Server) -> dict:
        return {concurrency: asyncio.run(drive(server, concurrency, args.requests, args.users, args.items))
                for concurrency in args.concurrency}

    return lambda: serving(export, max_batch, args, levels)


def soak(export: Path, args: argparse.Namespace) -> dict:
    """``--soak`` requests at concurrency 32 with RSS sampled every ``--sample-every``; its trend."""
    result = serving(export, DEFAULT_MAX_BATCH, args, lambda server: asyncio.run(
        drive(server, SOAK_CONCURRENCY, args.soak, args.users, args.items, args.sample_every)))
    counts = [count for count, _ in result["rss"]]
    sizes = [size for _, size in result["rss"]]
    slope = 0.0
    if len(counts) > 1:
        mean_count, mean_size = statistics.fmean(counts), statistics.fmean(sizes)
        slope = (sum((c - mean_count) * (s - mean_size) for c, s in zip(counts, sizes))
                 / sum((c - mean_count) ** 2 for c in counts))
    return {**result, "first": sizes[0], "last": sizes[-1], "max": max(sizes), "slope_per_10k": 1e4 * slope}


def report_runs(report: benchlib.Report, results: dict[str, list[dict]], concurrency: list[int]) -> list[str]:
    """The interleaved runs' table (median [min-max]); returns the runs that had errors."""
    report.say(f"\n{'export':<24}{'concurrency':>12}{'QPS':>24}{'p50 ms':>26}{'p99 ms':>26}{'errors':>8}")
    failures = []
    for side, runs in results.items():
        for level in concurrency:
            rows = [run[level] for run in runs]
            errors = sum(row["errors"] for row in rows)
            report.say(f"{side:<24}{level:>12}{cell([r['qps'] for r in rows], 1.0, 0):>24}"
                       f"{cell([r['p50'] for r in rows], 1e3):>26}{cell([r['p99'] for r in rows], 1e3):>26}"
                       f"{errors:>8}")
            if errors:
                failures.append(f"{side} at concurrency {level}: {errors} errors")
    return failures


def cell(values: list[float], unit: float, digits: int = 2) -> str:
    return benchlib.timing_cell(benchlib.summarize(values), unit, digits)


def report_soak(report: benchlib.Report, name: str, result: dict, bound: float) -> list[benchlib.Check]:
    samples = " ".join(f"{size:.1f}" for _, size in result["rss"])
    report.say(f"soak {name}: {result['requests']:,} requests at concurrency {SOAK_CONCURRENCY}, "
               f"{result['qps']:.0f} QPS, {result['errors']} errors; RSS first {result['first']:.1f} MB, "
               f"last {result['last']:.1f} MB, max {result['max']:.1f} MB, slope "
               f"{result['slope_per_10k']:+.2f} MB per 10k requests")
    report.say(f"  RSS samples (MB): {samples}")
    return [benchlib.Check(f"soak {name}: zero errors", result["errors"], "<=", 0),
            benchlib.Check(f"soak {name}: RSS growth in MB from first to last sample <= {bound:g}",
                           result["last"] - result["first"], "<=", bound)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000, help="candidates (default %(default)s)")
    parser.add_argument("--users", type=int, default=10_000, help="query ids (default %(default)s)")
    parser.add_argument("--requests", type=int, default=3_000, help="requests per concurrency level and run "
                                                                     "(default %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per export (default %(default)s)")
    parser.add_argument("--concurrency", type=lambda text: [int(c) for c in text.split(",")], default=[1, 8, 32],
                        help="comma-separated levels (default 1,8,32)")
    parser.add_argument("--soak", type=int, default=100_000, help="soak requests per export (default %(default)s)")
    parser.add_argument("--sample-every", type=int, default=5_000, help="soak requests between RSS samples")
    parser.add_argument("--rss-bound-mb", type=float, default=RSS_BOUND_MB,
                        help="allowed RSS growth over the soak (default %(default)s)")
    parser.add_argument("--coalescing", action="store_true", help="also run without coalescing (--max-batch 1)")
    parser.add_argument("--check", action="store_true", help="exit 1 on any error or RSS growth over the bound")
    args = parser.parse_args()
    args.sample_every = max(1, min(args.sample_every, args.soak // 4 or 1))
    return args


def main() -> int:
    args = parse_args()
    report = benchlib.Report("serve_bench", sys.argv[1:])
    report.machine("machine before")
    report.say(f"request counts: {args.requests:,} per concurrency level {args.concurrency} x {args.runs} runs "
               f"per export; soak {args.soak:,} per export at concurrency {SOAK_CONCURRENCY}, RSS every "
               f"{args.sample_every:,}; warm-up {WARM_UP} per server")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="towerkit-serve-bench-") as folder:
        report.say(f"training and exporting ({args.items:,} candidates) ...")
        exports = build_exports(Path(folder), args.items, args.users)
        report.say(f"  done in {time.perf_counter() - start:.0f} s")
        sides = {f"{name}{' (no coalescing)' if max_batch == 1 else ''}": one_run(export, max_batch, args)
                 for name, export in exports.items() for max_batch in ([DEFAULT_MAX_BATCH, 1] if args.coalescing
                                                                       else [DEFAULT_MAX_BATCH])}
        failures = report_runs(report, benchlib.interleave(sides, args.runs), args.concurrency) if args.runs else []
        report.say()
        checks = [benchlib.Check(f"runs: zero errors ({failure})", 1, "<=", 0) for failure in failures]
        checks += [check for name, export in exports.items() if args.soak
                   for check in report_soak(report, name, soak(export, args), args.rss_bound_mb)]
    report.say()
    report.machine("machine after")
    report.say(f"wall time {time.perf_counter() - start:.0f} s")
    if args.runs and not failures:
        report.say(f"PASS  runs: zero errors in {len(sides) * args.runs * len(args.concurrency) * args.requests:,} "
                   "requests")
    status = benchlib.finish(checks, args.check, report)
    full_size = (args.items, args.users, args.requests, args.soak) == (100_000, 10_000, 3_000, 100_000)
    if full_size and args.runs >= 3 and not args.coalescing:
        report.say(f"wrote {report.write()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
