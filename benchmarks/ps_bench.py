"""Parameter-server step cost: a chief, N workers and M ps tasks on 127.0.0.1, one synthetic run.

Starts the workers and ps tasks as ``towerkit train ... --strategy
parameter-server`` processes (as on a real cluster), runs the chief's train
job, and prints its fit time, steps per second, examples per second and where
the embedding tables' shards live. All processes share this machine's cores,
so the figures are a floor for step overhead, not a cluster's throughput.

Usage: python benchmarks/ps_bench.py [--users 100000] [--items 100000]
                                     [--interactions 1000000] [--batch-size 8192] [--dim 32]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHIEF = """
import json, sys
import towerkit
from towerkit import config as rc, distribute
from towerkit.pipeline import run
config = rc.resolve(rc.load_recipe(sys.argv[1])[0], "bench")
ctx = run(config, sys.argv[2], log=lambda m: None, verbose=0)
print(json.dumps({"fit_seconds": ctx.timings["fit_seconds"], "train_rows": len(ctx.data.train_rows),
                  "placement": distribute.variable_placement(ctx.model)}))
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def recipe(args: argparse.Namespace) -> str:
    from towerkit.config import to_toml

    return to_toml({
        "dataset": {"name": "synthetic", "num_users": args.users, "num_items": args.items,
                    "num_interactions": args.interactions, "genres": False},
        "query_tower": {"name": "user", "embedding_dim": args.dim},
        "candidate_tower": {"name": "movie", "embedding_dim": args.dim},
        "task": {"name": "retrieval"},
        "train": {"epochs": 1, "batch_size": args.batch_size, "strategy": "parameter-server",
                  "partitioner": "fixed-shards"},
        "evaluate": {"every_epoch": False, "ks": [10], "exclude_train": False},
        "index": {"name": "brute-force", "k": 10},
        "export": {"enabled": False, "example_query": "user 1"},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ps", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ps_bench_"))
    (work / "recipe.toml").write_text(recipe(args))
    ports = free_ports(1 + args.workers + args.ps)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"],
               "worker": [f"127.0.0.1:{p}" for p in ports[1:1 + args.workers]],
               "ps": [f"127.0.0.1:{p}" for p in ports[1 + args.workers:]]}

    def env(task_type: str, index: int) -> dict[str, str]:
        return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}

    tasks = []
    try:
        for task_type in ("ps", "worker"):
            for index in range(len(cluster[task_type])):
                tasks.append(subprocess.Popen(
                    [sys.executable, "-m", "towerkit.cli", "train", str(work / "recipe.toml"), "-o", str(work / "run")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT), env=env(task_type, index)))
        chief = subprocess.run([sys.executable, "-c", CHIEF, str(work / "recipe.toml"), str(work / "run")],
                               capture_output=True, text=True, cwd=str(ROOT), env=env("chief", 0), timeout=3600)
    finally:
        for task in tasks:
            if task.poll() is None:
                task.kill()
                task.wait()
    if chief.returncode != 0:
        sys.exit(chief.stderr[-3000:])
    result = json.loads(chief.stdout.strip().splitlines()[-1])
    steps = -(-result["train_rows"] // args.batch_size)
    seconds = result["fit_seconds"]
    print(f"{args.workers} workers, {args.ps} ps, {args.users:,} users x {args.items:,} items, "
          f"{result['train_rows']:,} train rows, batch {args.batch_size}, d={args.dim}")
    print(f"one epoch: {seconds:.1f} s, {steps} steps, {steps / seconds:.2f} steps/s, "
          f"{result['train_rows'] / seconds:,.0f} examples/s, {1000 * seconds / steps:.0f} ms/step")
    for name, devices in result["placement"].items():
        print(f"  {name}: {len(devices)} part(s) on {', '.join(sorted(set(d.split('/device')[0] for d in devices)))}")


if __name__ == "__main__":
    main()
