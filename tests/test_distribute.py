"""tf.distribute: mirrored over two logical CPUs, and two workers on 127.0.0.1."""

import json
import os


from conftest import recipe_text, run_python, train_on_two_workers

RECIPE = recipe_text(
    dataset={"num_users": 300, "num_items": 100, "num_interactions": 8000},
    task={"global_negatives": True},
    train={"epochs": 3},
    evaluate={"ks": [10, 50], "exclude_train": False},
    export={"example_query": "user 1"},
)

# Tolerance for mirrored vs default: the same model, loss and data, but the two
# replicas' variables are initialised under the strategy and sums run in another
# order, so metrics agree closely rather than bit for bit.
TOLERANCE = 0.03


def test_mirrored_matches_default_within_tolerance(tmp_path):
    (tmp_path / "recipe.toml").write_text(RECIPE)
    code = f"""
import json, tempfile
import towerkit, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from towerkit import config as rc
from towerkit.pipeline import run
out = {{}}
for strategy in ("default", "mirrored"):
    raw = rc.apply_overrides(rc.load_recipe({str(tmp_path / "recipe.toml")!r})[0],
                             [f'train.strategy="{{strategy}}"', "export.enabled=false"])
    metrics = run(rc.resolve(raw, "t"), tempfile.mkdtemp(), log=lambda m: None, verbose=0).metrics
    out[strategy] = metrics["test"]["model"]["all"]
out["replicas"] = tf.distribute.MirroredStrategy().num_replicas_in_sync
print(json.dumps(out))
"""
    result = run_python(code, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    for k in ("top_10", "top_50"):
        assert abs(out["default"][k] - out["mirrored"][k]) <= TOLERANCE, out


def test_two_workers_on_localhost_train_and_the_chief_exports(tmp_path):
    (tmp_path / "recipe.toml").write_text(RECIPE.replace("global_negatives = true", "global_negatives = false"))
    assert "global_negatives = false" in (tmp_path / "recipe.toml").read_text()
    output = tmp_path / "run"
    results = train_on_two_workers(tmp_path / "recipe.toml", output)
    assert "2 replicas" in results[0][0]
    assert "the chief worker writes the reports" in results[1][0]
    from towerkit.serving import load_export

    _, ids = load_export(output / "model").recommend({"user_id": ["user 1"]})
    assert ids.shape == (1, 10)
    assert json.loads((output / "metrics.json").read_text())["test"]["model"]["all"]["top_10"] > 0


def test_multi_worker_without_tf_config_is_a_clear_error(tmp_path):
    from conftest import run_cli

    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = run_cli("train", "--strategy", "multi-worker", "-o", str(tmp_path / "o"), env={**env, "TF_CONFIG": ""})
    assert result.returncode == 2 and "needs TF_CONFIG" in result.stderr
