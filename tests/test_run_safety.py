"""Nothing lost, nothing silently wrong: run directories, exports, checkpoints and divergence.

Each test sets up a hostile situation a user can get into (an output path that
already holds something, two runs at once, an edited config, a damaged
checkpoint, a learning rate that diverges) and checks for one clear error and
untouched data, or for the documented recovery.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, recipe_text, run_cli
from towerkit import files
from towerkit.evaluation import count_ranks
from towerkit.export_format import METADATA_FILE, QUERY_VOCABULARY_FILE, SEEN_FILE
from towerkit.serving import load_export

RECIPE = recipe_text(recipe={"name": "safety"}, train={"epochs": 2, "batch_size": 512},
                     evaluate={"ks": [1, 10], "every_epoch": False})


def _one_error_line(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip() and "warning" not in line]
    assert len(lines) == 1 and lines[0].startswith("towerkit: error:"), result.stderr
    assert fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("safety")
    recipe = folder / "safety.toml"
    recipe.write_text(RECIPE)
    result = run_cli("train", str(recipe), "-o", str(folder / "run"))
    assert result.returncode == 0, result.stderr
    return folder / "run"


@pytest.fixture()
def run_copy(run_dir, tmp_path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


# --- Exports never replace what towerkit did not write --------------------------------------------

def test_export_over_a_directory_of_user_files_refuses_and_touches_nothing(run_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    result = run_cli("export", "--model", str(run_dir), "-o", str(mine))
    _one_error_line(result, "towerkit did not create")
    assert _tree(mine) == {"thesis.tex": b"years of work"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_export_into_the_run_directory_itself_refuses(run_copy):
    before = _tree(run_copy)
    result = run_cli("export", "--model", str(run_copy), "-o", str(run_copy))
    _one_error_line(result, "will not replace it")
    assert _tree(run_copy).keys() >= {k for k in before if not k.endswith(files.LOCK_FILE)}


def test_export_over_a_users_file_refuses_without_hiding_it(run_dir, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    result = run_cli("export", "--model", str(run_dir), "-o", str(notes))
    _one_error_line(result, "is a file")
    assert notes.read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no hidden .notes.txt.old-*


def test_export_replaces_its_own_earlier_export(run_copy, tmp_path):
    target = tmp_path / "serving"
    for k in ("3", "5"):
        result = run_cli("export", "--model", str(run_copy), "-o", str(target), "--set", f"index.k={k}")
        assert result.returncode == 0, result.stderr
        assert json.loads((target / METADATA_FILE).read_text())["index"]["k"] == int(k)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "serving"]  # no leftovers


def test_a_stranded_old_export_is_restored_by_the_next_command(run_dir, tmp_path):
    """Where the file system cannot swap atomically, two renames are used; a kill between them is recovered."""
    target = tmp_path / "model"
    shutil.copytree(run_dir / "model", tmp_path / ".model.old-abc123")  # what a kill would leave
    files.recover(target)
    assert (target / METADATA_FILE).is_file() and not (tmp_path / ".model.old-abc123").exists()
    assert load_export(target).recommend({"user_id": ["user 3"]})[1].shape[1] == 10


def test_recover_leaves_directories_it_did_not_make(tmp_path):
    (tmp_path / ".model.old-mine").mkdir()
    (tmp_path / ".model.old-mine" / "keep.txt").write_text("x")
    files.recover(tmp_path / "model")
    assert (tmp_path / ".model.old-mine" / "keep.txt").read_text() == "x" and not (tmp_path / "model").exists()


def test_sigkill_at_any_moment_of_an_export_leaves_an_export(run_copy, tmp_path):
    """Kill the export at increasing delays: the path always holds a loadable export, old or new."""
    target = run_copy / "model"
    command = [sys.executable, "-m", "towerkit.cli", "export", "--model", str(run_copy), "--set", "index.k=7"]
    for delay in (4.0, 6.0, 8.0, 10.0):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT))
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert json.loads((target / METADATA_FILE).read_text())["index"]["k"] in (7, 10)
        assert load_export(target).recommend({"user_id": ["user 3"]})[1].shape[0] == 1


# --- Run directories: owned, locked, and tied to their configuration ------------------------------

def test_training_into_a_directory_of_user_files_refuses(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "data.csv").write_text("a,b")
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    _one_error_line(run_cli("train", str(recipe), "-o", str(tmp_path / "out")), "towerkit did not write")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data.csv"]


def test_a_second_train_into_a_locked_run_directory_refuses(run_copy, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    before = (run_copy / "metrics.json").read_bytes()
    with files.run_lock(run_copy):
        _one_error_line(run_cli("train", str(recipe), "-o", str(run_copy)), "is writing to")
    assert (run_copy / "metrics.json").read_bytes() == before


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from towerkit import files\n"
        f"with files.run_lock({str(tmp_path)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
    assert holder.stdout.readline().strip() == "locked"
    assert files.is_locked(tmp_path)
    holder.kill()
    holder.wait()
    assert (tmp_path / files.LOCK_FILE).exists() and not files.is_locked(tmp_path)
    with files.run_lock(tmp_path):
        pass


def test_training_again_with_another_config_refuses_then_force_sets_checkpoints_aside(run_copy, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    refused = run_cli("train", str(recipe), "-o", str(run_copy), "--set", "train.seed=7")
    _one_error_line(refused, "checkpoints of another configuration")
    assert tomllib.loads((run_copy / "config.toml").read_text())["train"]["seed"] == 42  # untouched
    forced = run_cli("train", str(recipe), "-o", str(run_copy), "--set", "train.seed=7", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (run_copy / "checkpoints.old-1" / "checkpoint").is_file()
    assert tomllib.loads((run_copy / "config.toml").read_text())["train"]["seed"] == 7


def test_resume_and_evaluate_refuse_checkpoints_after_config_toml_was_edited(run_copy):
    config = run_copy / "config.toml"
    config.write_text(config.read_text().replace("learning_rate = 0.1", "learning_rate = 0.5"))
    _one_error_line(run_cli("train", "--resume", str(run_copy)), "different configuration")
    _one_error_line(run_cli("evaluate", "--model", str(run_copy)), "different configuration")


def _damage_latest_checkpoint(run: Path) -> None:
    data = sorted((run / "checkpoints").glob("ckpt-2.data-*"))[0]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))


def test_a_damaged_checkpoint_falls_back_to_the_previous_one_with_a_warning(run_copy):
    _damage_latest_checkpoint(run_copy)
    result = run_cli("evaluate", "--model", str(run_copy), "--json")
    assert result.returncode == 0, result.stderr
    assert "damaged" in result.stderr and "previous checkpoint" in result.stderr
    assert json.loads(result.stdout)["epochs_trained"] == 1


def test_every_checkpoint_damaged_is_one_clear_error(run_copy):
    for data in (run_copy / "checkpoints").glob("ckpt-*.data-*"):
        data.write_bytes(data.read_bytes()[:10])
    _one_error_line(run_cli("export", "--model", str(run_copy), "-o", str(run_copy / "again")), "damaged")
    assert not (run_copy / "again").exists()


def test_a_truncated_checkpoint_breaks_no_resume(run_copy):
    _damage_latest_checkpoint(run_copy)
    (run_copy / "metrics.json").unlink()
    result = run_cli("train", "--resume", str(run_copy))
    assert result.returncode == 0, result.stderr
    assert "resuming from the checkpoint after epoch 1" in result.stdout
    assert (run_copy / "metrics.json").is_file()


# --- Silent wrong results ---------------------------------------------------------------------------

def test_a_diverging_run_stops_with_a_clear_error_and_no_export(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    result = run_cli("train", str(recipe), "-o", str(tmp_path / "run"), "--set", 'optimizer.name="sgd"',
                     "--set", "optimizer.learning_rate=1e30")
    _one_error_line(result, "learning_rate")
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_nan_and_infinite_scores_never_count_as_hits():
    scores = np.array([[np.nan, 0.5, 0.1], [0.2, 0.3, 0.1], [np.inf, 1.0, 2.0], [0.1, 0.2, 0.3]])
    positives = np.array([0, 1, 0, 2])  # NaN positive, a clean top-1, an infinite positive, a clean top-1
    ranks = count_ranks(lambda start, stop: tf.constant(scores[start:stop]), positives)
    assert ranks.tolist() == [3, 0, 3, 0]
    nan_elsewhere = count_ranks(lambda start, stop: tf.constant([[0.1, np.nan, 0.5]]), np.array([2]))
    assert nan_elsewhere.tolist() == [1]  # a NaN candidate counts as above the positive


def test_export_set_may_change_only_the_index(run_dir, tmp_path):
    for assignment in ("query_tower.layers=[16]", "dataset.seed=3", "train.epochs=9"):
        result = run_cli("export", "--model", str(run_dir), "-o", str(tmp_path / "x"), "--set", assignment)
        _one_error_line(result, "index")
    assert not (tmp_path / "x").exists()


def test_index_k_larger_than_the_candidates_fails_before_training(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    result = run_cli("train", str(recipe), "-o", str(tmp_path / "run"), "--set", "index.k=1000")
    _one_error_line(result, "k=1000 is more than the 60 candidates")
    assert not (tmp_path / "run" / "checkpoints").exists() and "training" not in result.stdout


def test_similar_refuses_a_model_that_is_not_item_to_item(run_dir):
    _one_error_line(run_cli("similar", "item 3", "--model", str(run_dir / "model")), "not an item-to-item model")


# --- Damaged export metadata ------------------------------------------------------------------------

@pytest.mark.parametrize("damage, fragment", [
    ("[]", "not a JSON object"),
    ('{"format_version": "1"}', "'format_version' must be an integer"),
    ("REPLACE:format_version=true", "'format_version' must be an integer"),
    ("REPLACE:query_feature_keys=7", "'query_feature_keys' must be a list"),
    ("DROP:index", "'index' must be a table"),
    ("REPLACE:query_feature_dtypes=5", "query_feature_dtypes"),
    ("REPLACE:format_version=0", "is damaged"),
])
def test_damaged_towerkit_json_is_one_clear_error(run_dir, tmp_path, damage, fragment):
    export = Path(shutil.copytree(run_dir / "model", tmp_path / "model"))
    metadata = json.loads((export / METADATA_FILE).read_text())
    if damage.startswith("REPLACE:"):
        key, value = damage[len("REPLACE:"):].split("=")
        metadata[key] = json.loads(value)
        text = json.dumps(metadata)
    elif damage.startswith("DROP:"):
        metadata.pop(damage[len("DROP:"):])
        text = json.dumps(metadata)
    else:
        text = damage
    (export / METADATA_FILE).write_text(text)
    _one_error_line(run_cli("recommend", "--model", str(export), "--user", "user 3"), fragment)


@pytest.mark.parametrize("name, content, flags", [
    (SEEN_FILE, "[1, 2]", ["--exclude-seen"]),
    (SEEN_FILE, '{"user 3": 5}', ["--exclude-seen"]),
    (SEEN_FILE, "{not json", ["--exclude-seen"]),
    (QUERY_VOCABULARY_FILE, "7", []),
    (QUERY_VOCABULARY_FILE, "\xff", []),
])
def test_damaged_serving_files_are_one_clear_error(run_dir, tmp_path, name, content, flags):
    export = Path(shutil.copytree(run_dir / "model", tmp_path / "model"))
    (export / name).write_bytes(content.encode("latin-1"))
    result = run_cli("recommend", "--model", str(export), "--user", "user 3", *flags)
    assert result.returncode == 2 and name in result.stderr and "Traceback" not in result.stderr, result.stderr


# --- The command line -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["recommend", "--model", "m", "--user", "1", "-k", "abc"], "invalid int value"),
    (["train", "--checkpoint-every"], "expected one argument"),
    (["lisst", "towers"], "invalid choice"),
    (["list", "gizmos"], "invalid choice"),
])
def test_usage_errors_are_one_line(args, fragment):
    _one_error_line(run_cli(*args), fragment)


def test_a_full_stdout_is_one_clear_error():
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "towerkit.cli", "list", "recipes"], stdout=full,
                                stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    _one_error_line(result, "writing the output failed")


def test_non_utf8_user_id_is_answered_from_the_oov_embedding(run_dir):
    argv = [os.fsencode(sys.executable), b"-m", b"towerkit.cli", b"recommend", b"--model",
            os.fsencode(str(run_dir / "model")), b"--user", b"\xff\xfe", b"--json"]
    result = subprocess.run(argv, capture_output=True, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr
    assert b"unknown to this model" in result.stderr and len(json.loads(result.stdout)) == 10



# --- A full disk at every stage -----------------------------------------------------------------------

@pytest.mark.parametrize("size", ["24k", "120k", "400k", "900k"])
def test_a_disk_that_fills_up_during_training_is_one_clear_error_and_leaves_no_temporary_files(tmp_path, size):
    """Sizes chosen so the disk fills during the config snapshot, checkpoints, the export or the reports."""
    from conftest import mount_tmpfs

    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, size):
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        recipe = tmp_path / "r.toml"
        recipe.write_text(RECIPE)
        result = run_cli("train", str(recipe), "-o", str(disk / "run"))
        if result.returncode != 0:
            _one_error_line(result, "")
            assert any(word in result.stderr for word in ("No space left", "space", "failed")), result.stderr
        leftovers = [p.name for p in disk.rglob("*") if ".tmp-" in p.name or p.name.endswith(".tmp")]
        assert leftovers == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("assignment, fragment", [
    ("query_tower.embedding_dim=1000000000", "embedding_dim"),
    ('dataset.name="no-such-dataset"', "unknown dataset"),
    ("dataset.num_interactions=1", "test"),
])
def test_a_recipe_that_fails_before_training_writes_nothing(tmp_path, assignment, fragment):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    result = run_cli("train", str(recipe), "-o", str(tmp_path / "run"), "--set", assignment)
    _one_error_line(result, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.toml"]
