"""Exports: fresh-process loading, atomic replacement, kills midway, damaged and newer exports."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

import towerkit
from towerkit.errors import DataError
from towerkit.export import save_export
from towerkit.export_format import FORMAT_VERSION, METADATA_FILE
from towerkit.serving import load_export

from conftest import ROOT, run_python


def _trained_index(data, name):
    tf.keras.utils.set_random_seed(0)
    model = towerkit.assemble(data=data)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    model.fit(tf.data.Dataset.from_tensor_slices(data.train_features(model.feature_keys)).batch(1024), epochs=1, verbose=0)
    from towerkit.models import build_index

    return model, build_index(model, data, {"name": name, "k": 10})


@pytest.mark.parametrize("name", ["brute-force", "scann"])
def test_export_loads_in_a_fresh_process_with_only_tensorflow(synthetic, tmp_path, name):
    _, index = _trained_index(synthetic, name)
    users = ["user 1", "user 7", "nobody"]
    _, expected = index({"user_id": tf.constant(users)})
    target = save_export(index, tmp_path / "model", query_feature_keys=["user_id"], metadata={"recipe": "t"})
    metadata = json.loads((target / METADATA_FILE).read_text())
    assert metadata["index"]["backend"] == name and metadata["format_version"] == FORMAT_VERSION
    code = f"""
import os, sys, json
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
{"from scann.scann_ops.py import scann_ops" if name == "scann" else ""}
loaded = tf.saved_model.load({str(target)!r})
out = loaded.signatures["serving_default"](user_id=tf.constant({users!r}))
print(json.dumps([[x.decode() for x in row] for row in out["ids"].numpy()]))
print("towerkit" in sys.modules)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert json.loads(lines[-2]) == [[x.decode() for x in row] for row in expected.numpy()]
    assert lines[-1] == "False"


def test_new_export_replaces_old_atomically_and_failures_keep_the_old(synthetic, tmp_path, monkeypatch):
    _, index = _trained_index(synthetic, "brute-force")
    target = tmp_path / "model"
    save_export(index, target, query_feature_keys=["user_id"], metadata={"round": 1})
    save_export(index, target, query_feature_keys=["user_id"], metadata={"round": 2})
    assert load_export(target).metadata["round"] == 2
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", disk_full)
    with pytest.raises(towerkit.TowerkitError, match="previous export, if any, is unchanged"):
        save_export(index, target, query_feature_keys=["user_id"], metadata={"round": 3})
    assert load_export(target).metadata["round"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_kill_during_export_leaves_previous_export_loadable(synthetic, tmp_path):
    _, index = _trained_index(synthetic, "brute-force")
    target = tmp_path / "model"
    save_export(index, target, query_feature_keys=["user_id"], metadata={"round": "first"})
    code = f"""
import towerkit, tensorflow as tf, time
from towerkit.models import build_index
from towerkit.export import save_export
data = towerkit.load_dataset("synthetic", num_users=200, num_items=80, num_interactions=6000, seed=3)
model = towerkit.assemble(data=data)
index = build_index(model, data, {{"name": "brute-force", "k": 10}})
real_save = tf.saved_model.save
def slow_save(*args, **kwargs):
    real_save(*args, **kwargs)
    print("saved-to-staging", flush=True)
    time.sleep(60)
tf.saved_model.save = slow_save
save_export(index, {str(target)!r}, query_feature_keys=["user_id"], metadata={{"round": "second"}})
"""
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=str(ROOT),
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    seen = False
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not seen:
            line = process.stdout.readline()
            if not line:
                break
            seen = "saved-to-staging" in line
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert seen, "the exporting process never reached the kill point"
    assert load_export(target).metadata["round"] == "first"
    # The half-written export stays in a hidden staging sibling, never under the final name.
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["model"]


def test_broken_and_newer_exports_are_clear_errors(tmp_path, synthetic):
    with pytest.raises(DataError, match="is not an export directory"):
        load_export(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(DataError, match="not a complete towerkit export"):
        load_export(tmp_path / "half")
    _, index = _trained_index(synthetic, "brute-force")
    target = save_export(index, tmp_path / "model", query_feature_keys=["user_id"], metadata={})
    meta = json.loads((target / METADATA_FILE).read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (target / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(DataError, match="upgrade towerkit"):
        load_export(target)
    (target / METADATA_FILE).write_text("{not json")
    with pytest.raises(DataError, match="is corrupt"):
        load_export(target)
