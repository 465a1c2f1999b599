"""tf.distribute strategies by name, and what the train job needs to know about them.

A multi-worker run reads its cluster from ``TF_CONFIG``. TensorFlow's
``MultiWorkerMirroredStrategy`` waits for every peer with no deadline, and
while it waits it catches SIGTERM itself, so a missing peer used to hang a run
forever. Here the cluster is checked first, every peer is probed over TCP
(bounded by ``train.cluster_timeout``, interruptible by SIGTERM), and only
then is the strategy created, under a watchdog with the same deadline.

TensorFlow is imported only when a strategy is made, so recipe validation
(which reads :data:`STRATEGIES`) stays TensorFlow-free.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from towerkit.errors import ConfigError

if TYPE_CHECKING:
    import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi-worker")
# Jobs that take part in the collectives; an "evaluator" only reads checkpoints.
COLLECTIVE_JOBS = ("chief", "worker")
TASK_TYPES = (*COLLECTIVE_JOBS, "evaluator")
TF_CONFIG_KEYS = ("cluster", "task", "rpc_layer", "environment")
DEFAULT_CLUSTER_TIMEOUT = 120.0
PROBE_INTERVAL = 0.25
# The shell's status for a process ended by SIGTERM.
SIGTERM_STATUS = 128 + signal.SIGTERM


@dataclass(frozen=True)
class Cluster:
    """A validated ``TF_CONFIG``: every job's ``host:port`` addresses, and this process's task."""

    jobs: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def own_address(self) -> str:
        return self.jobs[self.task_type][self.task_index]

    @property
    def peers(self) -> list[str]:
        """The other collective members' addresses, which must be up before the strategy starts."""
        if self.task_type not in COLLECTIVE_JOBS:
            return []
        return [address for job in COLLECTIVE_JOBS for index, address in enumerate(self.jobs.get(job, []))
                if (job, index) != (self.task_type, self.task_index)]


def _fail(problem: str) -> ConfigError:
    return ConfigError(f"TF_CONFIG {problem}; see the README's 'Scaling out' for its form, "
                       'e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                       '"task": {"type": "worker", "index": 0}}.')


def split_address(address: Any, where: str) -> tuple[str, int]:
    """Returns (host, port) of a ``host:port`` string, or raises ConfigError naming ``where``."""
    if not isinstance(address, str) or not address.isprintable() or ":" not in address:
        raise _fail(f"{where} must be a 'host:port' string, got {address!r:.60}")
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [IPv6]:port
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail(f"{where} must be 'host:port' with a port from 1 to 65535, got {address!r:.60}")
    return host, int(port)


def _check_jobs(cluster: Any) -> dict[str, list[str]]:
    if not isinstance(cluster, dict) or not cluster:
        raise _fail(f'"cluster" must map job names to lists of addresses, got {cluster!r:.60}')
    for job, addresses in cluster.items():
        if job not in TASK_TYPES:
            raise _fail(f'has job {job!r:.40}, but a multi-worker run has only {", ".join(TASK_TYPES)} jobs')
        if not isinstance(addresses, list) or not addresses:
            raise _fail(f'job "{job}" must be a non-empty list of "host:port" addresses, got {addresses!r:.60}')
        for index, address in enumerate(addresses):
            split_address(address, f'address {index} of job "{job}"')
    if not any(job in cluster for job in COLLECTIVE_JOBS):
        raise _fail('"cluster" needs a "worker" (or "chief") job')
    if len(cluster.get("chief", [])) > 1:
        raise _fail('may have at most one "chief"')
    return {job: list(addresses) for job, addresses in cluster.items()}


def read_tf_config(text: str | None = None) -> Cluster:
    """Parses and checks ``TF_CONFIG`` (default: the environment's); raises ConfigError for any fault."""
    text = os.environ.get("TF_CONFIG", "") if text is None else text
    if not text.strip():
        raise ConfigError(
            "strategy 'multi-worker' needs TF_CONFIG describing the cluster and this worker's task; "
            "set it (see the README's 'Scaling out') or use strategy 'mirrored' on one machine."
        )
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({str(exc)[:80]}); fix it and run again.") from exc
    if not isinstance(value, dict):
        raise _fail(f"must be a JSON object, got {type(value).__name__}")
    unknown = [key for key in value if key not in TF_CONFIG_KEYS]
    if unknown:
        raise _fail(f"has unknown key {unknown[0]!r:.40} (keys: {', '.join(TF_CONFIG_KEYS)})")
    jobs = _check_jobs(value.get("cluster"))
    task = value.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise _fail(f'needs "task": {{"type": ..., "index": ...}} naming this process, got {task!r:.60}')
    task_type, index = task["type"], task["index"]
    if task_type not in jobs:
        raise _fail(f'task type {task_type!r:.40} is not a job of "cluster" ({", ".join(jobs)})')
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(jobs[task_type]):
        raise _fail(f'task index {index!r:.20} is not an index into job "{task_type}" '
                    f"(0 to {len(jobs[task_type]) - 1})")
    return Cluster(jobs, task_type, index)


def check_cluster_timeout(timeout: Any) -> float:
    """Returns ``timeout`` (seconds) as a float if it is positive and finite."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ConfigError(f"train.cluster_timeout must be a positive number of seconds, got {timeout!r:.40}.")
    return float(timeout)


class _SigtermExit:
    """While active, SIGTERM ends the process at once with one line saying what it was waiting for."""

    def __init__(self, waiting_for: Callable[[], str]):
        self.waiting_for = waiting_for
        self.previous: Any = None
        self.installed = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> "_SigtermExit":
        if self.installed:
            self.previous = signal.signal(signal.SIGTERM, self._exit)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)

    def _exit(self, signum: int, frame: Any) -> None:
        print(f"towerkit: stopped by SIGTERM while waiting for {self.waiting_for()}", file=sys.stderr, flush=True)
        # SystemExit unwinds normally, so locks and staging directories are released.
        raise SystemExit(SIGTERM_STATUS)


def _placeholder_listener(cluster: Cluster) -> socket.socket:
    """Listens on this task's own port, so that peers probing it now succeed.

    Without it, every worker would wait for the others' servers, which start
    only once the waiting is over.
    """
    _, port = split_address(cluster.own_address, "this task's address")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
    except OSError as exc:
        listener.close()
        reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be opened ({exc.strerror})"
        raise ConfigError(f"this task's port {port} (TF_CONFIG {cluster.task_type} {cluster.task_index}, "
                          f"{cluster.own_address}) {reason}; free it or give this task another port.") from exc
    listener.listen(64)
    listener.setblocking(False)
    return listener


def _drain(listener: socket.socket) -> None:
    """Accepts and closes the peers' probe connections, so the backlog never fills."""
    while True:
        try:
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        connection.close()


def _reachable(address: str, seconds: float) -> str | None:
    """None if a TCP connection to ``address`` opens within ``seconds``, else why not."""
    host, port = split_address(address, "a peer address")
    try:
        with socket.create_connection((host, port), timeout=max(0.05, seconds)):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def wait_for_peers(cluster: Cluster, timeout: float, log: Callable[[str], None] | None = None) -> None:
    """Waits until every peer in ``cluster`` accepts TCP connections, for at most ``timeout`` seconds.

    Raises:
        ConfigError: A peer is still unreachable at the deadline (named in the message).
        SystemExit: SIGTERM arrived while waiting (status 143, after a one-line message).
    """
    timeout = check_cluster_timeout(timeout)
    pending = list(cluster.peers)
    if not pending:
        return
    if log:
        log(f"waiting up to {timeout:g} s for {len(pending)} other worker(s) in TF_CONFIG ...")
    reasons: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    listener = _placeholder_listener(cluster)
    with _SigtermExit(lambda: f"worker(s) {', '.join(pending)} of TF_CONFIG"), listener:
        while pending:
            _drain(listener)
            for address in list(pending):
                reason = _reachable(address, min(1.0, deadline - time.monotonic()))
                if reason is None:
                    pending.remove(address)
                else:
                    reasons[address] = reason
            if pending and time.monotonic() >= deadline:
                raise ConfigError(
                    f"worker {pending[0]} in TF_CONFIG did not answer within {timeout:g} s "
                    f"({reasons[pending[0]]}){f' (and {len(pending) - 1} more)' if len(pending) > 1 else ''}; "
                    "start towerkit on every worker with the same TF_CONFIG, or raise train.cluster_timeout."
                )
            time.sleep(PROBE_INTERVAL if pending else 0)


# Run in a separate process: while TensorFlow sets up the cluster it holds the GIL and
# catches SIGTERM, so no thread of this process could act on a deadline.
_WATCHDOG = """
import os, select, signal, sys
ready, _, _ = select.select([sys.stdin], [], [], float(sys.argv[1]))
if not ready:
    sys.stderr.write(sys.argv[3] + "\\n")
    sys.stderr.flush()
    os.kill(int(sys.argv[2]), signal.SIGKILL)
"""


def _start_watchdog(timeout: float) -> subprocess.Popen:
    """A child process that ends this one after ``timeout`` seconds, unless its stdin closes first."""
    message = (f"towerkit: error: the workers in TF_CONFIG did not all join within {timeout:g} s "
               "(train.cluster_timeout); check that each runs towerkit with the same TF_CONFIG.")
    return subprocess.Popen([sys.executable, "-I", "-c", _WATCHDOG, repr(timeout), str(os.getpid()), message],
                            stdin=subprocess.PIPE)


def _multi_worker(timeout: float, log: Callable[[str], None] | None) -> "tf.distribute.Strategy":
    wait_for_peers(read_tf_config(), timeout, log)
    import tensorflow as tf

    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    watchdog = _start_watchdog(timeout)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    finally:
        watchdog.stdin.close()  # the watchdog exits at once when its stdin closes
        watchdog.wait()
    if threading.current_thread() is threading.main_thread():
        # TensorFlow's preemption notifier swallows SIGTERM from here on; towerkit
        # does not use it, and a run must stop when asked (resume picks it up).
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return strategy


def make_strategy(name: str, cluster_timeout: float = DEFAULT_CLUSTER_TIMEOUT,
                  log: Callable[[str], None] | None = None) -> "tf.distribute.Strategy":
    """Returns TensorFlow's strategy for a name.

    * ``default``: one device (``tf.distribute.get_strategy()``).
    * ``mirrored``: ``MirroredStrategy`` over the local GPUs, or CPUs made
      into several logical devices.
    * ``multi-worker``: ``MultiWorkerMirroredStrategy``, configured from
      ``TF_CONFIG``, once every peer answers (see :func:`wait_for_peers`).

    Args:
        name: One of :data:`STRATEGIES`.
        cluster_timeout: Seconds to wait for multi-worker peers (``train.cluster_timeout``).
        log: Receives a line before a multi-worker run starts waiting.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r:.40}; choose one of {', '.join(STRATEGIES)}.")
    timeout = check_cluster_timeout(cluster_timeout)
    if name == "multi-worker":
        return _multi_worker(timeout, log)
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: "tf.distribute.Strategy") -> bool:
    """Whether this process writes the shared outputs (reports, export)."""
    import tensorflow as tf

    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    # Worker 0 writes only in a cluster without a chief (TensorFlow's convention).
    has_chief = "chief" in resolver.cluster_spec().jobs
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and not has_chief)


def worker_id(strategy: "tf.distribute.Strategy") -> int:
    """This worker's index in its job (0 outside a multi-worker run)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", 0) or 0)
