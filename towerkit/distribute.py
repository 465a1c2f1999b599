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
from typing import TYPE_CHECKING, Any, Callable, Mapping

from towerkit.errors import ConfigError

if TYPE_CHECKING:
    import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi-worker", "parameter-server")
# Jobs that take part in the collectives; an "evaluator" only reads checkpoints.
COLLECTIVE_JOBS = ("chief", "worker")
TASK_TYPES = (*COLLECTIVE_JOBS, "evaluator")
# A parameter-server cluster: the chief coordinates, workers run steps, "ps" tasks hold the variables.
PS_JOBS = ("chief", "worker", "ps")
# How train.partitioner names TensorFlow's variable partitioners.
PARTITIONERS = ("min-size", "fixed-shards")
DEFAULT_MIN_SHARD_BYTES = 256 << 10  # TensorFlow's own default
# Seconds a worker or ps task keeps serving after its chief stopped answering.
CHIEF_GONE_SECONDS = 5.0
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
    parameter_server: bool = False

    @property
    def own_address(self) -> str:
        return self.jobs[self.task_type][self.task_index]

    @property
    def peers(self) -> list[str]:
        """The addresses that must be up before the strategy starts.

        In a parameter-server cluster only the chief waits, for every worker and ps task.
        """
        if self.parameter_server:
            if self.task_type != "chief":
                return []
            return [address for job in ("worker", "ps") for address in self.jobs[job]]
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


def _check_jobs(cluster: Any, parameter_server: bool = False) -> dict[str, list[str]]:
    if not isinstance(cluster, dict) or not cluster:
        raise _fail(f'"cluster" must map job names to lists of addresses, got {cluster!r:.60}')
    allowed = PS_JOBS if parameter_server else TASK_TYPES
    for job, addresses in cluster.items():
        if job not in allowed:
            kind = "parameter-server" if parameter_server else "multi-worker"
            hint = " (ps tasks belong to strategy parameter-server)" if job == "ps" else ""
            raise _fail(f'has job {job!r:.40}, but a {kind} run has only {", ".join(allowed)} jobs{hint}')
        if not isinstance(addresses, list) or not addresses:
            raise _fail(f'job "{job}" must be a non-empty list of "host:port" addresses, got {addresses!r:.60}')
        for index, address in enumerate(addresses):
            split_address(address, f'address {index} of job "{job}"')
    if parameter_server:
        missing = [job for job in PS_JOBS if job not in cluster]
        if missing:
            raise _fail(f'of strategy parameter-server needs "chief", "worker" and "ps" jobs; it lacks "{missing[0]}"')
    elif not any(job in cluster for job in COLLECTIVE_JOBS):
        raise _fail('"cluster" needs a "worker" (or "chief") job')
    if len(cluster.get("chief", [])) > 1:
        raise _fail('may have at most one "chief"')
    return {job: list(addresses) for job, addresses in cluster.items()}


def read_tf_config(text: str | None = None, strategy: str = "multi-worker") -> Cluster:
    """Parses and checks ``TF_CONFIG`` (default: the environment's) for ``strategy``.

    Raises:
        ConfigError: For any fault, in one line.
    """
    text = os.environ.get("TF_CONFIG", "") if text is None else text
    parameter_server = strategy == "parameter-server"
    if not text.strip():
        raise ConfigError(
            f"strategy '{strategy}' needs TF_CONFIG describing the cluster and this task; "
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
    jobs = _check_jobs(value.get("cluster"), parameter_server)
    task = value.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise _fail(f'needs "task": {{"type": ..., "index": ...}} naming this process, got {task!r:.60}')
    task_type, index = task["type"], task["index"]
    if task_type not in jobs:
        raise _fail(f'task type {task_type!r:.40} is not a job of "cluster" ({", ".join(jobs)})')
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(jobs[task_type]):
        raise _fail(f'task index {index!r:.20} is not an index into job "{task_type}" '
                    f"(0 to {len(jobs[task_type]) - 1})")
    return Cluster(jobs, task_type, index, parameter_server)


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
        kind = "task(s)" if cluster.parameter_server else "worker(s)"
        log(f"waiting up to {timeout:g} s for {len(pending)} other {kind} in TF_CONFIG ...")
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
                    f"{'task' if cluster.parameter_server else 'worker'} {pending[0]} in TF_CONFIG did not answer within {timeout:g} s "
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


def check_partitioning(train: Mapping[str, Any]) -> tuple[str, int, int]:
    """(partitioner, num_shards, min_shard_bytes) from a recipe's ``train`` section, checked.

    ``num_shards`` 0 means one shard per parameter server.
    """
    name = train.get("partitioner", "min-size")
    if name not in PARTITIONERS:
        raise ConfigError(f"train.partitioner must be one of {', '.join(PARTITIONERS)}, got {name!r:.40}; "
                          "min-size shards a table only where it is large, fixed-shards always.")
    values = []
    for key, default, least in (("num_shards", 0, 0), ("min_shard_bytes", DEFAULT_MIN_SHARD_BYTES, 1)):
        value = train.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= 2**40:
            raise ConfigError(f"train.{key} must be an integer of at least {least}, got {value!r:.40}"
                              f"{' (0: one shard per parameter server)' if key == 'num_shards' else ''}.")
        values.append(value)
    return name, values[0], values[1]


def make_partitioner(train: Mapping[str, Any], num_ps: int) -> Any:
    """TensorFlow's variable partitioner that ``train.partitioner`` names, for ``num_ps`` parameter servers."""
    import tensorflow as tf

    name, num_shards, min_shard_bytes = check_partitioning(train)
    shards = num_shards or num_ps
    if name == "fixed-shards":
        return tf.distribute.experimental.partitioners.FixedShardsPartitioner(shards)
    return tf.distribute.experimental.partitioners.MinSizePartitioner(min_shard_bytes=min_shard_bytes,
                                                                      max_shards=shards)


def _serve_task(cluster: Cluster, timeout: float, log: Callable[[str], None] | None) -> None:
    """Runs this worker or ps task's TensorFlow server until the chief has finished, then exits.

    The chief drives everything; this process only has to stay up. It waits
    (up to ``timeout``) for the chief to answer, then serves until the chief has
    stopped answering for :data:`CHIEF_GONE_SECONDS`.
    """
    import tensorflow as tf

    say = log or (lambda message: None)
    tf.distribute.Server(tf.train.ClusterSpec(cluster.jobs), job_name=cluster.task_type,
                         task_index=cluster.task_index, protocol="grpc", start=True)
    chief = cluster.jobs["chief"][0]
    say(f"serving as {cluster.task_type} {cluster.task_index} of the parameter-server cluster "
        f"({cluster.own_address}) until the chief ({chief}) finishes")
    deadline, last_seen, seen = time.monotonic() + timeout, 0.0, False
    with _SigtermExit(lambda: f"the chief {chief} to finish"):
        while True:
            if _reachable(chief, 1.0) is None:
                seen, last_seen = True, time.monotonic()
            elif seen and time.monotonic() - last_seen > CHIEF_GONE_SECONDS:
                break
            elif not seen and time.monotonic() > deadline:
                raise ConfigError(f"the chief {chief} in TF_CONFIG did not answer within {timeout:g} s; start "
                                  "towerkit on the chief with the same TF_CONFIG, or raise train.cluster_timeout.")
            time.sleep(PROBE_INTERVAL * 2)
    say("the chief has finished; this task stops")
    sys.stdout.flush()
    sys.stderr.flush()
    # TensorFlow's server has no clean shutdown; its threads would keep the interpreter alive.
    os._exit(0)


def _parameter_server(train: Mapping[str, Any], timeout: float,
                      log: Callable[[str], None] | None) -> "tf.distribute.Strategy":
    cluster = read_tf_config(strategy="parameter-server")
    check_partitioning(train)
    if cluster.task_type != "chief":
        _serve_task(cluster, timeout, log)
    wait_for_peers(cluster, timeout, log)
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster.jobs), task_type="chief", task_id=0, rpc_layer="grpc")
    watchdog = _start_watchdog(timeout)
    try:
        return tf.distribute.ParameterServerStrategy(
            resolver, variable_partitioner=make_partitioner(train, len(cluster.jobs["ps"])))
    finally:
        watchdog.stdin.close()
        watchdog.wait()


def is_parameter_server(strategy: Any) -> bool:
    """Whether ``strategy`` is TensorFlow's ParameterServerStrategy (steps go through its coordinator)."""
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.ParameterServerStrategy)


def fit_input(strategy: Any, make_dataset: Callable[..., Any], rows: int,
              batch_size: int, shards_itself: bool = False) -> tuple[Any, dict[str, Any]]:
    """What ``model.fit`` takes under ``strategy``: (x, extra keyword arguments).

    Under a parameter-server strategy each worker builds its own input: a
    ``DatasetCreator`` whose function runs on every worker, keeps that worker's
    share of the batches (every n-th) and repeats, and ``steps_per_epoch``
    makes one epoch the size of the training data, shared by all workers.
    Elsewhere the dataset is passed as it is.

    With ``shards_itself``, ``make_dataset`` takes a ``tf.distribute.InputContext``
    (or None) and reads only that input pipeline's share (e.g. its files). Under
    a multi-replica or multi-worker strategy it goes through
    ``strategy.distribute_datasets_from_function``, so each worker calls it
    once with its own pipeline id and repeats its share, and
    ``steps_per_epoch`` makes an epoch the training rows' worth of global
    batches; under parameter-server each worker calls it with its own context
    instead of taking every n-th batch.
    """
    import tensorflow as tf

    steps = max(1, -(-rows // batch_size))
    if not is_parameter_server(strategy):
        if not shards_itself:
            return make_dataset(), {}
        several = strategy.num_replicas_in_sync > 1 or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        if not several:
            return make_dataset(None), {}
        # Keras needs a step count for a distributed dataset; workers' shares differ in size,
        # so each repeats its own and an epoch is the training rows' worth of global batches.
        return (strategy.distribute_datasets_from_function(lambda context: make_dataset(context).repeat()),
                {"steps_per_epoch": steps})

    def per_worker(context: "tf.distribute.InputContext") -> "tf.data.Dataset":
        if shards_itself:
            return make_dataset(context).repeat()
        return make_dataset().shard(context.num_input_pipelines, context.input_pipeline_id).repeat()

    return tf.keras.utils.experimental.DatasetCreator(per_worker), {"steps_per_epoch": steps}


def variable_placement(model: Any) -> dict[str, list[str]]:
    """Each trainable variable's name (shards gathered under one name) and the devices holding it."""
    placement: dict[str, list[str]] = {}
    for variable in model.trainable_variables:
        name = variable.name.split(":")[0]
        base = name.rsplit("/part_", 1)[0] if "/part_" in name else name
        placement.setdefault(base, []).append(variable.device)
    return placement


def make_strategy(name: str, cluster_timeout: float = DEFAULT_CLUSTER_TIMEOUT,
                  log: Callable[[str], None] | None = None,
                  train: Mapping[str, Any] | None = None) -> "tf.distribute.Strategy":
    """Returns TensorFlow's strategy for a name.

    * ``default``: one device (``tf.distribute.get_strategy()``).
    * ``mirrored``: ``MirroredStrategy`` over the local GPUs, or CPUs made
      into several logical devices.
    * ``multi-worker``: ``MultiWorkerMirroredStrategy``, configured from
      ``TF_CONFIG``, once every peer answers (see :func:`wait_for_peers`).
    * ``parameter-server``: ``ParameterServerStrategy`` from ``TF_CONFIG``
      with chief, worker and ps jobs; variables are sharded over the ps tasks
      by ``train.partitioner``. On the chief it returns the strategy once every
      worker and ps task answers. On a worker or ps task it does not return:
      the process serves TensorFlow's server until the chief finishes, then exits 0.

    Args:
        name: One of :data:`STRATEGIES`.
        cluster_timeout: Seconds to wait for the cluster's peers (``train.cluster_timeout``).
        log: Receives a line before a cluster run starts waiting.
        train: The recipe's ``train`` section, for the parameter-server partitioner
            (``partitioner``, ``num_shards``, ``min_shard_bytes``).
    """
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r:.40}; choose one of {', '.join(STRATEGIES)}.")
    timeout = check_cluster_timeout(cluster_timeout)
    if name == "multi-worker":
        return _multi_worker(timeout, log)
    if name == "parameter-server":
        return _parameter_server(train or {}, timeout, log)
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
