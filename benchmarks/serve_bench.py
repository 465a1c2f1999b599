"""`towerkit serve` under load, on 127.0.0.1 only: QPS, p50/p99 latency, errors and server RSS.

Trains a small synthetic model with ``--items`` candidates, exports it twice (brute force, and
ScaNN tuned to ``index.target_recall = 0.95``), serves each with ``towerkit serve`` and drives it
with an asyncio client at concurrency 1, 8 and 32, ``--requests`` requests per level. Every
answer is checked (status 200, k ids, descending scores); any error fails the run. The server's
resident memory is sampled throughout, to show it stays flat.

Usage:
    python benchmarks/serve_bench.py                         # full size: 100k requests per level
    python benchmarks/serve_bench.py --items 2000 --requests 300 --coalescing   # a quick check

``--coalescing`` also runs each export with ``--max-batch 1`` (no coalescing) for comparison.
Exit status 1 if any request failed or RSS grew by more than ``--rss-slack-mb`` after warm-up.
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

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # never anything else: the benchmark must not reach beyond this machine
K = 10


def cli(*args: str) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "towerkit.cli", *args], capture_output=True, text=True,
                            env=env, cwd=str(ROOT))
    if result.returncode != 0:
        raise SystemExit(f"towerkit {' '.join(args)} failed:\n{result.stderr[-3000:]}")


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
                rss: list[float]) -> dict:
    """Sends ``requests`` requests from ``concurrency`` workers; returns latency and error counts."""
    latencies: list[float] = []
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

    async def sample_rss(done: asyncio.Event) -> None:
        while not done.is_set():
            rss.append(server.rss_mb())
            await asyncio.sleep(0.5)

    done = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sampler = asyncio.create_task(sample_rss(done))
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - start
        done.set()
        await sampler
    ordered = sorted(latencies)
    return {"qps": len(latencies) / wall, "p50_ms": 1e3 * statistics.median(ordered),
            "p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], "errors": errors,
            "requests": len(latencies)}


def bench_export(name: str, export: Path, args: argparse.Namespace, max_batch: int) -> list[dict]:
    server = Server(export, max_batch)
    rows = []
    try:
        rss: list[float] = []
        asyncio.run(drive(server, 8, min(200, args.requests), args.users, args.items, []))  # warm-up
        after_warmup = server.rss_mb()
        for concurrency in args.concurrency:
            result = asyncio.run(drive(server, concurrency, args.requests, args.users, args.items, rss))
            rows.append({"export": name, "max_batch": max_batch, "concurrency": concurrency, **result})
            print(f"{name:12} max-batch {max_batch:3d}  concurrency {concurrency:3d}: {result['qps']:8.1f} QPS  "
                  f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  errors {result['errors']}  "
                  f"RSS {server.rss_mb():7.1f} MB", flush=True)
        rows[-1]["rss_after_warmup_mb"] = after_warmup
        rows[-1]["rss_max_mb"] = max(rss)
        rows[-1]["rss_end_mb"] = server.rss_mb()
    finally:
        code = server.stop()
    if code != 0:
        raise SystemExit(f"the server exited {code} on SIGTERM")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000, help="candidates (default %(default)s)")
    parser.add_argument("--users", type=int, default=10_000, help="query ids (default %(default)s)")
    parser.add_argument("--requests", type=int, default=100_000, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=lambda text: [int(c) for c in text.split(",")], default=[1, 8, 32],
                        help="comma-separated levels (default 1,8,32)")
    parser.add_argument("--coalescing", action="store_true", help="also run without coalescing (--max-batch 1)")
    parser.add_argument("--rss-slack-mb", type=float, default=50.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="towerkit-serve-bench-") as folder:
        print(f"training and exporting ({args.items:,} candidates) ...", flush=True)
        exports = build_exports(Path(folder), args.items, args.users)
        rows = []
        for name, export in exports.items():
            for max_batch in ([64, 1] if args.coalescing else [64]):
                rows += bench_export(name, export, args, max_batch)
    print("\n| export | coalescing | concurrency | QPS | p50 ms | p99 ms | errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['export']} | {'on' if row['max_batch'] > 1 else 'off'} | {row['concurrency']} | "
              f"{row['qps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['errors']} |")
    failures = [f"{r['export']} at concurrency {r['concurrency']}: {r['errors']} errors" for r in rows if r["errors"]]
    for row in rows:
        if "rss_end_mb" in row:
            growth = row["rss_end_mb"] - row["rss_after_warmup_mb"]
            print(f"RSS {row['export']} (max-batch {row['max_batch']}): {row['rss_after_warmup_mb']:.1f} MB after "
                  f"warm-up, {row['rss_max_mb']:.1f} MB max, {row['rss_end_mb']:.1f} MB at the end ({growth:+.1f} MB)")
            if growth > args.rss_slack_mb:
                failures.append(f"{row['export']}: RSS grew {growth:.1f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    for failure in failures:
        print(f"FAIL  {failure}")
    print("PASS  zero errors, flat RSS" if not failures else "")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
