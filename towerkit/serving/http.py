"""``towerkit serve``: an export behind TensorFlow Serving's REST predict API, on aiohttp.

A client written against TF Serving (``POST /v1/models/NAME:predict``, ``GET /v1/models/NAME``)
works unchanged here, and keeps working when the model moves to TF Serving itself. The model
runs in a thread pool, never on the event loop; while every worker is busy, requests that
arrive are coalesced into one batched model call (see :class:`Coalescer`). SIGTERM or SIGINT
stops accepting connections, lets the requests in flight finish, and exits 0.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import math
import os
import re
import signal
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from towerkit.serving.queries import QueryError, check_requested_k

DEFAULT_PORT = 8501  # TF Serving's REST port
DEFAULT_MAX_BODY = 1 << 20
DEFAULT_MAX_BATCH = 64
MODEL_VERSION = "1"
# Keys of a request instance that are not model features.
INSTANCE_OPTIONS = ("exclude", "k")
MODEL_NAME = re.compile(r"[A-Za-z0-9._-]+")
# At shutdown, how long no request must be in flight before connections are closed.
QUIET_SECONDS = 0.25


class RequestError(Exception):
    """A request the server refuses: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Batch:
    """Queries checked and waiting for the model, with the future their request awaits."""

    columns: dict[str, list[Any]]
    exclusions: list[list[bytes]] | None
    size: int
    future: asyncio.Future = field(repr=False)


class Coalescer:
    """Runs model calls in a thread pool; requests that queue while all workers are busy share one call.

    At low load a request runs at once (no waiting window, so no added latency); under load,
    up to ``max_batch`` queued queries go to the model together, which costs far less per query
    than one call each. Queries with exclusions and without are never mixed in one call, so
    each gets exactly the answer it would get alone.
    """

    def __init__(self, run: Callable[[dict, Any], tuple[Any, Any]], workers: int, max_batch: int):
        self._run = run
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="towerkit-model")
        self._workers = workers
        self._max_batch = max_batch
        self._queue: collections.deque[Batch] = collections.deque()
        self._busy = 0
        self.calls = 0

    async def submit(self, columns: dict[str, list[Any]], exclusions: list[list[bytes]] | None, size: int):
        """(scores, ids) for these queries: all of the export's k results per query."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append(Batch(columns, exclusions, size, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and self._busy < self._workers:
            group = self._take_group()
            self._busy += 1
            self.calls += 1
            task = loop.run_in_executor(self._executor, self._run_group, group)
            task.add_done_callback(lambda done, group=group: self._finish(group, done))

    def _take_group(self) -> list[Batch]:
        first = self._queue.popleft()
        group, rows, kept = [first], first.size, collections.deque()
        while self._queue:
            item = self._queue.popleft()
            same_kind = (item.exclusions is None) == (first.exclusions is None)
            if same_kind and rows + item.size <= self._max_batch:
                group.append(item)
                rows += item.size
            else:
                kept.append(item)
        self._queue.extendleft(reversed(kept))
        return group

    def _run_group(self, group: list[Batch]) -> tuple[Any, Any]:
        columns = {key: [value for item in group for value in item.columns[key]] for key in group[0].columns}
        exclusions = None
        if group[0].exclusions is not None:
            exclusions = [row for item in group for row in item.exclusions]
        return self._run(columns, exclusions)

    def _finish(self, group: list[Batch], done: asyncio.Future) -> None:
        self._busy -= 1
        error = done.exception()
        start = 0
        for item in group:
            if item.future.done():  # its client went away
                start += item.size
                continue
            if error is not None:
                item.future.set_exception(error)
            else:
                scores, ids = done.result()
                item.future.set_result((scores[start:start + item.size], ids[start:start + item.size]))
            start += item.size
        self._dispatch()

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request JSON object, or a 400 that says what is wrong with it."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise RequestError(400, "the request body nests JSON too deeply; send "
                                '{"instances": [...]} or {"inputs": {...}}.') from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the request body is not valid JSON ({exc}); send "
                                '{"instances": [...]} or {"inputs": {...}}.') from None
    if not isinstance(body, dict):
        raise RequestError(400, 'the request body must be a JSON object, {"instances": [...]} or {"inputs": {...}}.')
    formats = [key for key in ("instances", "inputs") if key in body]
    if len(formats) != 1:
        raise RequestError(400, 'the request must hold exactly one of "instances" (row format) or "inputs" '
                                f"(columnar format), got {'both' if formats else 'neither'}.")
    unknown = sorted(set(body) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise RequestError(400, f"unknown request field(s) {', '.join(unknown)}; a request holds "
                                '"instances" or "inputs", and optionally "signature_name".')
    signature = body.get("signature_name", "serving_default")
    if signature != "serving_default":
        raise RequestError(400, f'signature_name {signature!r} is not served; use "serving_default" or leave it out.')
    return body


def instances_to_columns(instances: Any, keys: list[str], most: int, max_instances: int,
                         bare_key: str | None = None) -> tuple[dict[str, list[Any]], list[Any] | None, list[int]]:
    """Row format to columns: (features, exclusions or None, k per instance).

    A bare value (TF Serving's shorthand for a single-input model) feeds ``bare_key``: by default
    the only feature; an export that fills a known query's other features from its id names the id.
    """
    bare_key = bare_key or (keys[0] if len(keys) == 1 else None)
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, '"instances" must be a non-empty list of instances, e.g. '
                                f'[{{"{keys[0]}": ...}}].')
    if len(instances) > max_instances:
        raise RequestError(400, f'"instances" holds {len(instances)} instances, more than the {max_instances} '
                                "one request may; split it into several requests.")
    columns: dict[str, list[Any]] = {}
    exclusions, ks = [], []
    for position, instance in enumerate(instances):
        if not isinstance(instance, dict):
            if bare_key is None:
                raise RequestError(400, f"instances[{position}] must be an object of features ({', '.join(keys)}).")
            instance = {bare_key: instance}
        for key, value in instance.items():
            if key not in INSTANCE_OPTIONS:
                columns.setdefault(key, [])
        for key in columns:
            if key not in instance:
                raise RequestError(400, f"instances[{position}] lacks feature '{key}'; every instance needs "
                                        f"{', '.join(keys)}.")
        for key in columns:
            columns[key].append(instance[key])
        if len(columns) != len([k for k in instance if k not in INSTANCE_OPTIONS]):
            extra = sorted(set(instance) - set(columns) - set(INSTANCE_OPTIONS))
            raise RequestError(400, f"instances[{position}] has feature(s) {', '.join(extra)} that instance 0 "
                                    "lacks; every instance needs the same features.")
        exclusions.append(instance.get("exclude", []))
        ks.append(_instance_k(instance.get("k", most), most, f"instances[{position}].k"))
    has_exclusions = any("exclude" in instance for instance in instances if isinstance(instance, dict))
    return columns, exclusions if has_exclusions else None, ks


def _instance_k(value: Any, most: int, where: str) -> int:
    try:
        return check_requested_k(value, most)
    except QueryError as exc:
        raise RequestError(400, f"{where}: {exc}") from None


def inputs_to_columns(inputs: Any, keys: list[str], most: int, max_instances: int,
                      bare_key: str | None = None) -> tuple[dict[str, list[Any]], list[Any] | None, int]:
    """Columnar format to columns: (features, exclusions or None, k); a bare list feeds ``bare_key``
    (as in :func:`instances_to_columns`)."""
    bare_key = bare_key or (keys[0] if len(keys) == 1 else None)
    if not isinstance(inputs, dict):
        if bare_key is None:
            raise RequestError(400, f'"inputs" must be an object of feature -> list of values ({", ".join(keys)}).')
        inputs = {bare_key: inputs}
    columns = {key: value for key, value in inputs.items() if key not in INSTANCE_OPTIONS}
    for key, value in columns.items():
        if isinstance(value, list) and len(value) > max_instances:
            raise RequestError(400, f'"inputs.{key}" holds {len(value)} values, more than the {max_instances} '
                                    "one request may; split it into several requests.")
    return columns, inputs.get("exclude"), _instance_k(inputs.get("k", most), most, '"inputs.k"')


def _unpadded(scores: Any, ids: Any, k: int) -> tuple[list[str], list[float]]:
    """One query's top k as JSON-ready lists, without the empty slots left where exclusions emptied them."""
    kept = [(i, float(s)) for i, s in zip(ids[:k].tolist(), scores[:k].tolist()) if i != b"" and math.isfinite(s)]
    return ([i.decode("utf-8", "backslashreplace") if isinstance(i, bytes) else i for i, _ in kept],
            [s for _, s in kept])


class ModelServer:
    """The aiohttp application around one export: status, metadata and predict routes.

    Args:
        path: The export directory.
        name: The model name in URLs.
        max_body: The largest request body accepted, in bytes (a larger one gets 413).
        workers: Model calls that may run at once.
        max_batch: The most queries coalesced into one model call (1: no coalescing).
        log: Where to write one-line progress messages.
    """

    def __init__(self, path: str | os.PathLike, name: str, *, max_body: int = DEFAULT_MAX_BODY,
                 workers: int = 2, max_batch: int = DEFAULT_MAX_BATCH, log: Callable[[str], None] = print):
        self.path, self.name, self.max_body, self.log = path, name, max_body, log
        self.export: Any = None
        self.state = "LOADING"
        self.in_flight = 0
        self.coalescer = Coalescer(self._run, workers, max_batch)
        self.max_instances = max(max_batch, 1024)
        self.app = web.Application(client_max_size=max_body, middlewares=[self._errors_as_json])
        self.app.router.add_get("/v1/models/{target}", self.status)
        self.app.router.add_get("/v1/models/{model}/versions/{target}", self.status)
        self.app.router.add_get("/v1/models/{model}/metadata", self.model_metadata)
        self.app.router.add_post("/v1/models/{target}", self.predict)
        self.app.router.add_post("/v1/models/{model}/versions/{target}", self.predict)

    def _run(self, columns: dict[str, list[Any]], exclusions: list[list[bytes]] | None) -> tuple[Any, Any]:
        return self.export.run(columns, exclusions)

    def load(self) -> None:
        """Loads the export (in a worker thread: status answers 503 LOADING meanwhile)."""
        from towerkit.serving.loaded import load_export

        self.export = load_export(self.path)
        self.state = "AVAILABLE"

    @web.middleware
    async def _errors_as_json(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        self.in_flight += 1
        try:
            return await handler(request)
        except RequestError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": f"the request body is larger than the {self.max_body:,} bytes this "
                                               "server accepts (--max-body); send fewer instances per request."},
                                     status=413)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return web.json_response({"error": f"{exc.reason}: {request.method} {request.path} is not an endpoint "
                                               f"of this server; use POST /v1/models/{self.name}:predict or "
                                               f"GET /v1/models/{self.name}."}, status=exc.status)
        except Exception as exc:  # noqa: BLE001 - one bad request never takes the server down
            self.log(f"towerkit serve: internal error on {request.method} {request.path}: {type(exc).__name__}: {exc}")
            return web.json_response({"error": f"internal error ({type(exc).__name__}); see the server's log."},
                                     status=500)
        finally:
            self.in_flight -= 1

    async def drain(self, timeout: float) -> None:
        """Waits (at most ``timeout`` s) until no request has been in flight for a quiet period.

        Called once the listening socket is closed: a connection accepted just before may still
        be sending its request, so a moment without requests is awaited, not merely zero now.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet_since = loop.time()
        while loop.time() < deadline:
            if self.in_flight:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= QUIET_SECONDS:
                return
            await asyncio.sleep(0.02)

    def _check_model(self, name: str, version: str | None) -> None:
        if name != self.name:
            raise RequestError(404, f"Servable not found for request: Latest({name}); this server serves model "
                                    f"'{self.name}' (POST /v1/models/{self.name}:predict).")
        if version is not None and version != MODEL_VERSION:
            raise RequestError(404, f"Servable not found for request: Specific({name}, {version}); "
                                    f"this server holds version {MODEL_VERSION} only.")

    def _target(self, request: web.Request, verb: str | None) -> None:
        target = request.match_info["target"]
        model = request.match_info.get("model")
        if verb is not None:
            base, sep, found = target.rpartition(":")
            if not sep or found != verb:
                raise RequestError(404, f"unknown method in {request.path}; POST to /v1/models/{self.name}:{verb}.")
            target = base
        self._check_model(model or target, target if model else None)

    async def status(self, request: web.Request) -> web.Response:
        self._target(request, None)
        ok = self.state == "AVAILABLE"
        body = {"model_version_status": [{
            "version": MODEL_VERSION, "state": self.state,
            "status": {"error_code": "OK" if ok else "UNAVAILABLE",
                       "error_message": "" if ok else f"model {self.name} is {self.state.lower()}"},
        }]}
        return web.json_response(body, status=200 if ok else 503)

    async def model_metadata(self, request: web.Request) -> web.Response:
        self._check_model(request.match_info["model"], None)
        self._require_loaded()
        return web.json_response({
            "model_spec": {"name": self.name, "version": MODEL_VERSION, "signature_name": "serving_default"},
            "metadata": {"query_specs": self.export.query_specs, "k": self.export.k,
                         "towerkit": self.export.metadata},
        })

    def _require_loaded(self) -> None:
        if self.state != "AVAILABLE":
            raise RequestError(503, f"model {self.name} is still loading; retry once GET /v1/models/{self.name} "
                                    "answers 200.")

    async def predict(self, request: web.Request) -> web.Response:
        self._target(request, "predict")
        self._require_loaded()
        if request.content_length is not None and request.content_length > self.max_body:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_body, actual_size=request.content_length)
        body = parse_body(await request.read())
        keys, most = self.export.query_feature_keys, self.export.k
        known = self.export.known_features
        bare_key = known["id_feature"] if known and known["id_feature"] in keys else None
        if "instances" in body:
            columns, exclude, ks = instances_to_columns(body["instances"], keys, most, self.max_instances, bare_key)
        else:
            columns, exclude, k = inputs_to_columns(body["inputs"], keys, most, self.max_instances, bare_key)
        try:
            columns, exclusions, _ = self.export.check_query(columns, exclude)
        except QueryError as exc:
            raise RequestError(400, f"{'instances' if 'instances' in body else 'inputs'}: {exc}") from None
        size = len(next(iter(columns.values())))
        scores, ids = await self.coalescer.submit(columns, exclusions, size)
        if "instances" in body:
            rows = [_unpadded(scores[n], ids[n], ks[n]) for n in range(size)]
            return _json({"predictions": [{"ids": i, "scores": s} for i, s in rows]})
        rows = [_unpadded(scores[n], ids[n], k) for n in range(size)]
        return _json({"outputs": {"ids": [i for i, _ in rows], "scores": [s for _, s in rows]}})


def _json(value: Any) -> web.Response:
    return web.Response(body=json.dumps(value, separators=(",", ":")).encode("utf-8"), content_type="application/json")


async def _serve(server: ModelServer, host: str, port: int, drain_seconds: float) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(server.app, handle_signals=False, access_log=None, shutdown_timeout=drain_seconds)
    await runner.setup()
    try:
        sock = _listening_socket(host, port)
    except OSError as exc:
        await runner.cleanup()
        raise RequestError(0, f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port "
                              "or stop what is using it.") from None
    site = web.SockSite(runner, sock)
    await site.start()
    bound = sock.getsockname()[1]
    server.log(f"towerkit serve: model {server.name} on http://{host}:{bound}/v1/models/{server.name} (loading)")
    loading = loop.run_in_executor(None, server.load)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([loading, stopped], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if loading.done() and loading.exception() is not None:
        server.log(f"towerkit: error: {loading.exception()}")
        code = 2
    elif loading.done():
        server.log(f"towerkit serve: model {server.name} loaded; ready on port {bound}")
        await stopped
    server.log("towerkit serve: stopping; finishing requests in flight")
    await site.stop()  # no new connections; requests on open ones are still answered
    await server.drain(drain_seconds)
    await runner.cleanup()
    server.coalescer.close()
    server.log("towerkit serve: stopped")
    return code


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound socket, so that port 0 (any free port) can be reported once known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def serve(path: str | os.PathLike, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, name: str | None = None,
          max_body: int = DEFAULT_MAX_BODY, workers: int = 2, max_batch: int = DEFAULT_MAX_BATCH,
          drain_seconds: float = 30.0, log: Callable[[str], None] = print) -> int:
    """Serves an export until SIGTERM or SIGINT; returns the exit code (0 after a clean drain).

    Raises:
        DataError: The directory is not a readable export (checked before listening).
    """
    from towerkit.errors import TowerkitError
    from towerkit.serving.loaded import read_metadata

    metadata = read_metadata(path)
    if name is None:  # the recipe's name, made fit for a URL
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(metadata.get("recipe") or "")).strip("-") or "model"
    if not MODEL_NAME.fullmatch(name):
        raise TowerkitError(f"model name {name!r} cannot appear in a /v1/models/NAME URL; pass --name with letters, "
                            "digits, '.', '_' or '-' only.")
    server = ModelServer(path, name, max_body=max_body,
                         workers=workers, max_batch=max_batch, log=log)
    try:
        return asyncio.run(_serve(server, host, port, drain_seconds))
    except RequestError as exc:
        raise TowerkitError(str(exc)) from None
