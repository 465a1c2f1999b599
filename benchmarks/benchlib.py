"""Shared measuring helpers for towerkit's benchmarks: runs that can be trusted on a shared machine.

A speed claim is only worth something if someone else can reproduce it. So
every benchmark here:

* runs each side at least three times, interleaved (A B, B A, A B, ...), so a
  burst of load from elsewhere hits both sides alike;
* reports the median and the spread (min, max), never the best run alone;
* prints the machine it ran on: CPU model, its AVX-512 and AMX flags, the
  core count, the thread settings and the load average before and after;
* with ``--check``, exits 1 when a target is missed, so a claim can be
  verified with one command;
* writes what it printed to ``benchmarks/results/<name>.txt``.

Heavy sides run in fresh worker processes (:func:`run_worker`), as a user's
``towerkit train`` would, so no side inherits another's traced functions,
caches or allocator state.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
# Thread-related environment variables worth recording: each changes what TensorFlow,
# oneDNN or a BLAS does with the two cores.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                    "TF_ENABLE_ONEDNN_OPTS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "KMP_AFFINITY",
                    "KMP_BLOCKTIME", "TF_XLA_FLAGS")
# Marks the line of a worker's stdout that carries its result.
RESULT_PREFIX = "BENCH-RESULT "


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and relative spread ``(max - min) / median`` of repeated measurements."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize needs at least one value")
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values), "runs": len(values),
            "spread": (max(values) - min(values)) / median if median else 0.0, "values": values}


def interleave(sides: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, list[Any]]:
    """Runs every side ``repeats`` times, alternating which one goes first in each round.

    Returns:
        Each side's results, in the order they were taken.
    """
    names = list(sides)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for round_number in range(repeats):
        for name in names if round_number % 2 == 0 else reversed(names):
            results[name].append(sides[name]())
    return results


def run_worker(script: Path | str, args: Iterable[str], env: Mapping[str, str] | None = None,
               timeout: float = 1800) -> dict[str, Any]:
    """Runs ``python script --worker ARGS`` in a fresh process and returns the JSON result it printed.

    Raises:
        RuntimeError: The worker failed or printed no result (its output's tail is in the message).
    """
    command = [sys.executable, str(script), "--worker", *args]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment,
                               cwd=str(ROOT), check=False)
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (completed.stdout + completed.stderr)[-3000:]
    raise RuntimeError(f"worker {' '.join(command[1:])} exited {completed.returncode} without a result:\n{tail}")


def emit_result(result: Mapping[str, Any]) -> None:
    """A worker's last act: its result as one JSON line on stdout, for :func:`run_worker`."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _cpu_info() -> tuple[str, list[str]]:
    """The CPU model name and its AVX-512 / AMX / bf16 flags, from /proc/cpuinfo."""
    model, flags = platform.processor() or "unknown", []
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model in ("unknown", "", "x86_64"):
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = sorted(f for f in value.split() if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    return model, flags


def _tensorflow_threads() -> dict[str, Any]:
    """TensorFlow's version and thread pools, if TensorFlow is already imported (0 means one per core)."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return {"tensorflow": "not imported"}
    def pool(size: int) -> str:
        return str(size) if size else "0 (one per core)"

    return {"tensorflow": tf.__version__,
            "intra-op threads": pool(tf.config.threading.get_intra_op_parallelism_threads()),
            "inter-op threads": pool(tf.config.threading.get_inter_op_parallelism_threads())}


def describe_machine() -> dict[str, Any]:
    """What a reader needs to judge a timing: CPU, flags, cores, thread settings, load, versions."""
    model, flags = _cpu_info()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    tf_threads = _tensorflow_threads()
    threads = {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ}
    threads.update({k: v for k, v in tf_threads.items() if k != "tensorflow"})
    return {
        "cpu model": model,
        "cpu flags": " ".join(flags) or "(none of avx2/fma/avx512*/amx*)",
        "cores": cores,
        "threads": ", ".join(f"{k}={v}" for k, v in threads.items()) or "defaults",
        "load average": "%.2f %.2f %.2f" % os.getloadavg(),
        "tensorflow": tf_threads["tensorflow"],
        "python": platform.python_version(),
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


@dataclass(frozen=True)
class Check:
    """One target: ``value OP target`` (``>=`` or ``<=``), e.g. a speed-up of at least 5."""

    name: str
    value: float
    op: str
    target: float

    @property
    def ok(self) -> bool:
        if self.op == ">=":
            return self.value >= self.target
        if self.op == "<=":
            return self.value <= self.target
        raise ValueError(f"unknown comparison {self.op!r}")

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name} ({self.value:.3g})"


class Report:
    """Lines printed as they come and kept, to be written to ``benchmarks/results/<name>.txt``."""

    def __init__(self, name: str, command: Sequence[str]):
        self.name = name
        self.lines: list[str] = []
        self.say(f"$ python benchmarks/{name}.py {' '.join(command)}".rstrip())

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def machine(self, label: str = "machine") -> None:
        self.say(f"{label}:")
        for key, value in describe_machine().items():
            self.say(f"  {key:<14}{value}")

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]], width: int = 14) -> None:
        """Rows of a label then cells, right-aligned."""
        self.say(f"{header[0]:<30}" + "".join(f"{h:>{width}}" for h in header[1:]))
        for label, *cells in rows:
            self.say(f"{label:<30}" + "".join(f"{c:>{width}}" for c in cells))

    def write(self) -> Path:
        """Writes the report (atomically, through towerkit.files) and returns its path."""
        from towerkit import files  # the project rule: every write goes through towerkit.files

        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        return files.write_file(RESULTS_DIR / f"{self.name}.txt", "\n".join(self.lines) + "\n")


def timing_cell(summary: Mapping[str, Any], unit: float = 1.0, digits: int = 2) -> str:
    """``median [min-max]`` of a summary, scaled by ``unit`` (1000 for milliseconds)."""
    return (f"{summary['median'] * unit:.{digits}f} "
            f"[{summary['min'] * unit:.{digits}f}-{summary['max'] * unit:.{digits}f}]")


def finish(checks: Sequence[Check], check: bool, report: Report | None = None) -> int:
    """Prints PASS/FAIL for each target (into ``report`` if given); the exit status is 1 if ``check`` and one was missed."""
    for item in checks:
        if report is not None:
            report.say(item.line())
        else:
            print(item.line(), flush=True)
    return 1 if check and not all(item.ok for item in checks) else 0
