"""Faults: a training run killed with SIGKILL resumes from its last checkpoint."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, recipe_text, run_cli

RECIPE = recipe_text(
    recipe={"name": "resumable"},
    dataset={"num_users": 300, "num_items": 100, "num_interactions": 30000},
    train={"epochs": 40, "batch_size": 128},
    evaluate={"ks": [10]},
    export={"example_query": "user 1"},
)


def test_sigkill_during_training_then_resume_finishes_all_epochs(tmp_path):
    recipe = tmp_path / "resumable.toml"
    recipe.write_text(RECIPE)
    output = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "towerkit.cli", "train", str(recipe), "-o", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT), env=os.environ.copy(),
    )
    index = output / "checkpoints" / "checkpoint"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None:
            if index.exists() and "ckpt-3" in index.read_text():
                break
            time.sleep(0.05)
        assert process.poll() is None, "training ended before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert not (output / "metrics.json").exists()

    result = run_cli("train", "--resume", str(output))
    assert result.returncode == 0, result.stderr
    resumed_from = int(result.stdout.split("resuming from the checkpoint after epoch ")[1].split()[0])
    assert 3 <= resumed_from < 40
    with open(output / "history.csv") as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == list(range(40))
    metrics = json.loads((output / "metrics.json").read_text())
    assert len(metrics["history"]["loss"]) == 40


def test_resume_needs_a_run_dir(tmp_path):
    result = run_cli("train", "--resume", str(tmp_path))
    assert result.returncode == 2 and "is not a towerkit run" in result.stderr
