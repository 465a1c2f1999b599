"""`towerkit serve`: a real server subprocess on 127.0.0.1, spoken to over HTTP as a TF Serving client would."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import towerkit
from conftest import ROOT, recipe_text, run_cli, train_recipe

TIME = 880_000_100
RECIPE = recipe_text(recipe={"name": "served"}, query_tower={"timestamp": True})


class Server:
    """A `towerkit serve` subprocess on a free port of 127.0.0.1."""

    def __init__(self, export_dir: Path, *extra: str, ready: str = "ready on port "):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "towerkit.cli", "serve", str(export_dir), "--host", "127.0.0.1", "--port", "0",
             *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT),
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_for(ready)
        self.port = int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0]) if "http://" in line else \
            int(line.rsplit(" ", 1)[1])
        self.base = f"http://127.0.0.1:{self.port}/v1/models"

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line.strip())

    def wait_for(self, words: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.process.poll() is None, f"server exited: {''.join(self.output)}"
                continue
            if words in line:
                return line
        raise AssertionError(f"no '{words}' from the server within {timeout}s: {''.join(self.output)}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def call(url: str, body: object = None, *, raw: bytes | None = None, method: str | None = None,
         timeout: float = 60) -> tuple[int, dict]:
    """(status, JSON body) of one request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return train_recipe(tmp_path_factory.mktemp("http"), "served", RECIPE) / "model"


@pytest.fixture(scope="module")
def export(export_dir):
    return towerkit.load_export(export_dir)


@pytest.fixture(scope="module")
def server(export_dir):
    running = Server(export_dir, "--max-body", "200000")
    yield running
    assert running.stop() == 0


def _expected(export, users, k=10, exclude=None):
    scores, ids = export.recommend({"user_id": users, "timestamp": [TIME] * len(users)}, k=k, exclude=exclude)
    return [([i.decode() for i in row if i], [float(s) for i, s in zip(row, srow) if i]) for row, srow in zip(ids, scores)]


def _assert_same(prediction_ids, prediction_scores, expected):
    assert prediction_ids == expected[0]
    np.testing.assert_allclose(prediction_scores, expected[1], rtol=1e-5)


def test_status_answers_tf_servings_shape(server):
    status, body = call(f"{server.base}/served")
    assert status == 200
    assert body == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                              "status": {"error_code": "OK", "error_message": ""}}]}
    status, meta = call(f"{server.base}/served/metadata")
    assert status == 200 and meta["metadata"]["query_specs"]["timestamp"] == {"dtype": "int64", "ragged": False}


def test_row_format_with_per_instance_k_and_exclusions(server, export):
    full = _expected(export, ["user 3", "user 4"])
    excluded = [full[1][0][0], full[1][0][3]]
    body = {"instances": [{"user_id": "user 3", "timestamp": TIME, "k": 3},
                          {"user_id": "user 4", "timestamp": TIME, "exclude": excluded}]}
    status, answer = call(f"{server.base}/served:predict", body)
    assert status == 200 and len(answer["predictions"]) == 2
    first, second = answer["predictions"]
    _assert_same(first["ids"], first["scores"], (full[0][0][:3], full[0][1][:3]))
    _assert_same(second["ids"], second["scores"], _expected(export, ["user 4"], exclude=[excluded])[0])
    assert not set(excluded) & set(second["ids"])


def test_columnar_format_answers_outputs(server, export):
    body = {"inputs": {"user_id": ["user 5", "user 6"], "timestamp": [TIME, TIME], "k": 4}}
    status, answer = call(f"{server.base}/served:predict", body)
    assert status == 200 and set(answer) == {"outputs"}
    for n, expected in enumerate(_expected(export, ["user 5", "user 6"], k=4)):
        _assert_same(answer["outputs"]["ids"][n], answer["outputs"]["scores"][n], expected)


def test_odd_strings_get_the_out_of_vocabulary_answer(server, export):
    bodies = [{"instances": [{"user_id": user, "timestamp": TIME}]} for user in ("\ud800", "", "no such user")]
    answers = [call(f"{server.base}/served:predict", body) for body in bodies]
    assert [status for status, _ in answers] == [200, 200, 200]
    assert answers[0][1] == answers[1][1] == answers[2][1]


def test_a_version_path_and_the_signature_name_are_accepted(server, export):
    body = {"signature_name": "serving_default", "instances": [{"user_id": "user 7", "timestamp": TIME}]}
    status, answer = call(f"{server.base}/served/versions/1:predict", body)
    assert status == 200
    _assert_same(answer["predictions"][0]["ids"], answer["predictions"][0]["scores"], _expected(export, ["user 7"])[0])


GOOD = {"user_id": "user 3", "timestamp": TIME}
BAD_REQUESTS = {
    "not JSON": (None, b"{instances", 400, "not valid JSON"),
    "not an object": ([GOOD], None, 400, "must be a JSON object"),
    "neither format": ({"rows": [GOOD]}, None, 400, "exactly one of \"instances\""),
    "both formats": ({"instances": [GOOD], "inputs": {}}, None, 400, "got both"),
    "empty instances": ({"instances": []}, None, 400, "non-empty list"),
    "int for a string": ({"instances": [{**GOOD, "user_id": 3}]}, None, 400, "'user_id' of query 0 must be a string"),
    "string for an int": ({"instances": [GOOD, {**GOOD, "timestamp": "x"}]}, None, 400,
                          "'timestamp' of query 1 must be an integer"),
    "missing feature": ({"instances": [{"user_id": "u"}]}, None, 400, "'timestamp' is missing"),
    "uneven instances": ({"instances": [GOOD, {"user_id": "u"}]}, None, 400, "instances[1] lacks feature 'timestamp'"),
    "misspelt feature": ({"instances": [{**GOOD, "user_idd": "u"}]}, None, 400, "did you mean 'user_id'"),
    "k too large": ({"instances": [{**GOOD, "k": 11}]}, None, 400, "instances[0].k"),
    "k zero": ({"instances": [{**GOOD, "k": 0}]}, None, 400, "instances[0].k"),
    "k a string": ({"inputs": {"user_id": ["u"], "timestamp": [TIME], "k": "5"}}, None, 400, "\"inputs.k\""),
    "exclude a string": ({"instances": [{**GOOD, "exclude": "item 1"}]}, None, 400, "exclude of query 0"),
    "uneven columns": ({"inputs": {"user_id": ["a", "b"], "timestamp": [TIME]}}, None, 400, "one value per query"),
    "other signature": ({"signature_name": "x", "instances": [GOOD]}, None, 400, "signature_name"),
    "too large": (None, json.dumps({"instances": [GOOD] * 5000}).encode(), 413, "--max-body"),
    "nested too deeply": (None, b"[" * 100_000 + b"]" * 100_000, 400, "nests JSON too deeply"),
    "not UTF-8": (None, b'{"instances": [{"user_id": "\xff"}]}', 400, "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_json_error_naming_the_field(server, case):
    body, raw, expected_status, words = BAD_REQUESTS[case]
    status, answer = call(f"{server.base}/served:predict", body, raw=raw)
    assert status == expected_status and set(answer) == {"error"} and words in answer["error"]
    # ... and the server is still up and right.
    assert call(f"{server.base}/served:predict", {"instances": [GOOD]})[0] == 200


@pytest.mark.parametrize("path, method, expected_status", [
    ("/other:predict", "POST", 404), ("/other", "GET", 404), ("/served/versions/2:predict", "POST", 404),
    ("/served:classify", "POST", 404), ("/served", "PUT", 405),
])
def test_unknown_models_and_endpoints(server, path, method, expected_status):
    body = {"instances": [GOOD]} if method != "GET" else None
    status, answer = call(f"{server.base}{path}", body, method=method)
    assert status == expected_status and "error" in answer


def test_fifty_concurrent_requests_all_answer_correctly(server, export):
    users = [f"user {n}" for n in range(50)]
    expected = _expected(export, users, k=5)

    def ask(n):
        return call(f"{server.base}/served:predict",
                    {"instances": [{"user_id": users[n], "timestamp": TIME, "k": 5}]}, timeout=120)

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(ask, range(50)))
    for n, (status, answer) in enumerate(answers):
        assert status == 200
        _assert_same(answer["predictions"][0]["ids"], answer["predictions"][0]["scores"], expected[n])


def test_status_is_503_loading_until_the_model_is_loaded_then_200(export_dir):
    server = Server(export_dir, ready="(loading)")
    try:
        status, body = call(f"{server.base}/served")
        assert status == 503 and body["model_version_status"][0]["state"] == "LOADING"
        status, body = call(f"{server.base}/served:predict", {"instances": [GOOD]})
        assert status == 503 and "still loading" in body["error"]
        server.wait_for("ready on port ")
        assert call(f"{server.base}/served")[0] == 200
        assert call(f"{server.base}/served:predict", {"instances": [GOOD]})[0] == 200
    finally:
        assert server.stop() == 0


def test_sigterm_lets_requests_in_flight_finish_then_exits_0(export_dir, export):
    server = Server(export_dir, "--max-body", "16000000")
    try:
        # Slow requests (many instances, long exclusion lists), so that they are in flight at SIGTERM.
        exclude = [f"item {n}" for n in range(40, 60)] + [f"nothing {n}" for n in range(300)]
        users = [f"user {n % 150}" for n in range(1000)]
        body = {"instances": [{"user_id": u, "timestamp": TIME, "exclude": exclude, "k": 3} for u in users]}
        started = time.monotonic()
        assert call(f"{server.base}/served:predict", body, timeout=120)[0] == 200
        duration = time.monotonic() - started
        finished: list[float] = []

        def ask(_):
            answer = call(f"{server.base}/served:predict", body, timeout=120)
            finished.append(time.monotonic())
            return answer

        with ThreadPoolExecutor(4) as pool:
            answers = pool.map(ask, range(4))
            time.sleep(max(0.05, min(0.3, duration / 4)))
            killed = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            answers = list(answers)
        assert server.process.wait(timeout=120) == 0
        assert min(finished) > killed  # every request was still in flight when SIGTERM arrived
        expected = _expected(export, users[:5], k=3, exclude=[exclude] * 5)
        for status, answer in answers:
            assert status == 200 and len(answer["predictions"]) == 1000
            for n in range(5):
                _assert_same(answer["predictions"][n]["ids"], answer["predictions"][n]["scores"], expected[n])
        assert "finishing requests in flight" in "".join(server.output)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def test_serve_refuses_a_bad_export_or_name_in_one_line(export_dir, tmp_path):
    for args, words in (([str(tmp_path / "missing")], "is not an export directory"),
                        ([str(export_dir), "--name", "a/b"], "cannot appear in a /v1/models/NAME URL"),
                        ([str(export_dir), "--port", "70000"], "--port must be an integer")):
        result = run_cli("serve", *args, timeout=120)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and words in result.stderr


def test_single_feature_models_take_bare_values_as_tf_serving_does():
    from towerkit.serving.http import RequestError, inputs_to_columns, instances_to_columns

    columns, exclude, ks = instances_to_columns(["42", {"user_id": "7", "k": 2, "exclude": ["a"]}], ["user_id"], 10, 100)
    assert columns == {"user_id": ["42", "7"]} and exclude == [[], ["a"]] and ks == [10, 2]
    columns, exclude, k = inputs_to_columns(["42", "7"], ["user_id"], 10, 100)
    assert columns == {"user_id": ["42", "7"]} and exclude is None and k == 10
    with pytest.raises(RequestError, match=r"instances\[0\] must be an object of features \(user_id, timestamp\)"):
        instances_to_columns(["42"], ["user_id", "timestamp"], 10, 100)
    with pytest.raises(RequestError, match="more than the 100"):
        instances_to_columns(["42"] * 101, ["user_id"], 10, 100)
