"""strategy "parameter-server": a chief, 2 workers and 2 ps tasks as separate processes on 127.0.0.1.

The workers and ps tasks are started the way a user starts them (``towerkit
train ... --strategy parameter-server`` with their own TF_CONFIG); the chief
runs the same train job in a Python process, so the test can also look at
where its variables live.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, free_ports, recipe_text, run_python
from towerkit import distribute
from towerkit.errors import ConfigError

DATASET = {"num_users": 300, "num_items": 120, "num_interactions": 12000}
# Small batches make enough steps for a worker to be killed and restarted mid-run.
TRAIN = {"epochs": 12, "batch_size": 64, "partitioner": "fixed-shards"}
RECIPE = recipe_text(dataset=DATASET, train=TRAIN, evaluate={"ks": [10, 50], "exclude_train": False},
                     export={"example_query": "user 1"})
# Asynchronous updates from two workers against synchronous single-process steps:
# the same model and data, but not the same sequence of updates.
TOLERANCE = 0.08

CHIEF_CODE = """
import json, sys
import towerkit, tensorflow as tf
tf.get_logger().setLevel("INFO")  # the coordinator logs worker failures and recoveries
from towerkit import config as rc, distribute
from towerkit.pipeline import run
config = rc.resolve(rc.apply_overrides(rc.load_recipe(sys.argv[1])[0], sys.argv[3:]), "t")
ctx = run(config, sys.argv[2], log=lambda m: print(m, flush=True), verbose=0)
top = ctx.index({"user_id": tf.constant(["user 1"])})
print(json.dumps({"test": ctx.metrics["test"]["model"]["all"], "placement": distribute.variable_placement(ctx.model),
                  "history_rows": len(ctx.metrics["history"].get("loss", [])),
                  "top_ids": [i.decode() for i in top[1][0].numpy()],
                  "top_scores": top[0][0].numpy().tolist()}))
"""


def _env(cluster, task_type, index):
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}


def _start_task(cluster, task_type, index, recipe, output, log):
    return subprocess.Popen(
        [sys.executable, "-m", "towerkit.cli", "train", str(recipe), "--strategy", "parameter-server",
         "-o", str(output)],
        stdout=log, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT), env=_env(cluster, task_type, index))


def _history_rows(path):
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except OSError:
        return 0


def _single_process_quality(recipe):
    code = f"""
import json, tempfile, sys
import towerkit
from towerkit import config as rc
from towerkit.pipeline import run
config = rc.resolve(rc.apply_overrides(rc.load_recipe({str(recipe)!r})[0], ["export.enabled=false"]), "t")
print(json.dumps(run(config, tempfile.mkdtemp(), log=lambda m: None, verbose=0).metrics["test"]["model"]["all"]))
"""
    result = run_python(code, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_chief_two_workers_two_ps_shard_tables_survive_a_killed_worker_and_export(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    single = _single_process_quality(recipe)

    ports = free_ports(5)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{p}" for p in ports[1:3]],
               "ps": [f"127.0.0.1:{p}" for p in ports[3:5]]}
    output = tmp_path / "run"
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("ps0", "ps1", "worker0", "worker1", "worker1b")}
    tasks = {}
    chief = None
    try:
        for index in range(2):
            tasks[f"ps{index}"] = _start_task(cluster, "ps", index, recipe, output, logs[f"ps{index}"])
            tasks[f"worker{index}"] = _start_task(cluster, "worker", index, recipe, output, logs[f"worker{index}"])
        chief = subprocess.Popen([sys.executable, "-c", CHIEF_CODE, str(recipe), str(output),
                                  'train.strategy="parameter-server"'],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                                 env=_env(cluster, "chief", 0))
        # Once the first epoch is on record, kill worker 1 and bring it back a little later.
        deadline = time.monotonic() + 150
        while _history_rows(output / "history.csv") < 1 and chief.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert chief.poll() is None, "the chief ended before a worker could be killed"
        tasks["worker1"].send_signal(signal.SIGKILL)
        tasks["worker1"].wait()
        tasks["worker1b"] = _start_task(cluster, "worker", 1, recipe, output, logs["worker1b"])
        stdout, stderr = chief.communicate(timeout=240)
        assert chief.returncode == 0, stderr[-4000:]
        # Workers and ps tasks notice the chief is gone and end by themselves.
        for name in ("ps0", "ps1", "worker0", "worker1b"):
            assert tasks[name].wait(timeout=60) == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
    finally:
        for process in [*tasks.values(), *([chief] if chief else [])]:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs.values():
            log.close()

    result = json.loads(stdout.strip().splitlines()[-1])
    # 1. The tables really are split: each embedding table has one part on each ps task.
    tables = {name: devices for name, devices in result["placement"].items() if "embedding" in name}
    assert len(tables) == 2, result["placement"]
    for devices in tables.values():
        assert sorted(d.split("/device")[0] for d in devices) == [
            "/job:ps/replica:0/task:0", "/job:ps/replica:0/task:1"], tables
    # 2. Quality is that of single-process training, within a tolerance.
    for k in ("top_10", "top_50"):
        assert abs(result["test"][k] - single[k]) <= TOLERANCE, (result["test"], single)
    # 3. The killed worker was tolerated: its steps were retried and it rejoined; all epochs ran.
    assert result["history_rows"] == TRAIN["epochs"]
    assert "Putting back a closure after it failed" in stderr or "as worker failure" in stderr, stderr[-3000:]
    assert "Worker /job:worker/replica:0/task:1 has been recovered" in stderr, stderr[-3000:]
    # The export gathered the shards into a plain SavedModel that serves here, with no cluster:
    # the query table is saved whole (every user plus the OOV row), not as two parts.
    import tensorflow as tf
    from towerkit.serving import load_export

    saved = dict(tf.train.list_variables(str(output / "model" / "variables" / "variables")))
    tables = [shape for name, shape in saved.items() if "query_model/" in name and "embedding" in name]
    assert tables and tables[0][0] > DATASET["num_users"] * 0.95, saved

    scores, ids = load_export(output / "model").recommend({"user_id": ["user 1"]})
    assert [i.decode() for i in ids[0]] == result["top_ids"]
    assert list(scores[0]) == pytest.approx(result["top_scores"], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("tf_config, match", [
    ('{"cluster": {"worker": ["h:1"], "ps": ["h:2"]}, "task": {"type": "worker", "index": 0}}', '"chief"'),
    ('{"cluster": {"chief": ["h:1"], "worker": ["h:2"]}, "task": {"type": "chief", "index": 0}}', '"ps"'),
    ('{"cluster": {"chief": ["h:1"], "worker": ["h:2"], "ps": ["h:3"], "evaluator": ["h:4"]}, '
     '"task": {"type": "chief", "index": 0}}', "evaluator"),
])
def test_parameter_server_tf_config_needs_chief_worker_and_ps(tf_config, match):
    with pytest.raises(ConfigError, match=match) as caught:
        distribute.read_tf_config(tf_config, strategy="parameter-server")
    assert "\n" not in str(caught.value)


def test_multi_worker_refuses_a_ps_job():
    with pytest.raises(ConfigError, match="parameter-server"):
        distribute.read_tf_config('{"cluster": {"worker": ["h:1"], "ps": ["h:2"]}, '
                                  '"task": {"type": "worker", "index": 0}}')


def test_only_the_chief_waits_for_the_parameter_server_cluster():
    cluster = distribute.read_tf_config(
        '{"cluster": {"chief": ["h:1"], "worker": ["h:2", "h:3"], "ps": ["h:4"]}, "task": {"type": "chief", "index": 0}}',
        strategy="parameter-server")
    assert cluster.peers == ["h:2", "h:3", "h:4"]
    worker = distribute.read_tf_config(
        '{"cluster": {"chief": ["h:1"], "worker": ["h:2", "h:3"], "ps": ["h:4"]}, "task": {"type": "worker", "index": 1}}',
        strategy="parameter-server")
    assert worker.peers == []


@pytest.mark.parametrize("train, match", [
    ({"partitioner": "min_size"}, "min-size"),
    ({"num_shards": -1}, "num_shards"),
    ({"min_shard_bytes": 0}, "min_shard_bytes"),
    ({"num_shards": True}, "num_shards"),
])
def test_bad_partitioning_is_one_config_error(train, match):
    with pytest.raises(ConfigError, match=match):
        distribute.check_partitioning(train)


def test_partitioners_shard_as_configured():
    import tensorflow as tf

    spec = tf.TensorSpec([1000, 32], tf.float32)
    shape = tf.TensorShape([1000, 32])
    fixed = distribute.make_partitioner({"partitioner": "fixed-shards"}, num_ps=3)
    assert fixed(shape, spec.dtype) == [3, 1]
    # 1000 x 32 floats = 128,000 bytes: at least 64,000 bytes a shard gives 2 shards, though 4 are allowed.
    small = distribute.make_partitioner({"partitioner": "min-size", "min_shard_bytes": 64_000, "num_shards": 4}, 2)
    assert small(shape, spec.dtype) == [2, 1]
