"""The CLI driven as a user would: subprocesses, exit codes, output and files."""

import csv
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import recipe_text, run_cli

SYNTHETIC_RECIPE = recipe_text(recipe={"name": "tiny"}, evaluate={"ks": [1, 10, 50]})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    recipe = folder / "tiny.toml"
    recipe.write_text(SYNTHETIC_RECIPE)
    output = folder / "run"
    result = run_cli("train", str(recipe), "--output", str(output), "--set", "train.epochs=3")
    return folder, output, result


def test_train_writes_reports_and_export(trained):
    _, output, result = trained
    assert result.returncode == 0, result.stderr
    assert "top-10" in result.stdout and "popularity" in result.stdout
    assert "reloaded export agrees" in result.stdout
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics["test"]) == {"model", "popularity"}
    for system in ("model", "popularity"):
        assert set(metrics["test"][system]["all"]) == {"top_1", "top_10", "top_50"}
        assert set(metrics["test"][system]["excluding_train"]) == {"top_1", "top_10", "top_50"}
    assert len(metrics["history"]["loss"]) == 3  # --set train.epochs=3 took effect
    config = tomllib.loads((output / "config.toml").read_text())
    assert config["train"]["epochs"] == 3 and config["dataset"]["num_items"] == 60
    with open(output / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]  # Keras CSVLogger numbering
    assert all(0.0 <= float(r["test_top_10"]) <= 1.0 for r in rows)
    import matplotlib.image

    assert matplotlib.image.imread(output / "report.png").shape[2] in (3, 4)  # a PNG that decodes
    assert "## Example recommendations" in (output / "report.md").read_text()
    assert json.loads((output / "model" / "towerkit.json").read_text())["components"]["query_tower"]["name"] == "user"


def test_recommend_from_export(trained):
    _, output, _ = trained
    result = run_cli("recommend", "--model", str(output / "model"), "--user", "user 3", "-k", "4", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert all(r["id"].startswith("item ") for r in rows)
    assert rows[0]["score"] >= rows[-1]["score"]


def test_train_json_output_is_only_json(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(SYNTHETIC_RECIPE)
    result = run_cli("train", str(recipe), "-o", str(tmp_path / "out"), "--json", "--set", "train.epochs=1",
                     "--set", "export.enabled=false")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["recipe"] == "tiny" and not (tmp_path / "out" / "model").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
        (["train", "--set", "train.epoch=3"], "did you mean 'epochs'"),
        (["train", "--set", "train.epochs=zero"], "train.epochs"),
        (["train", "--set", "train.batch_size=-5"], "must be positive"),
        (["train", "--set", "optimizer.name=adamm"], "did you mean 'adam'"),
        (["train", "--set", "query_tower.name=usr"], "did you mean 'user'"),
        (["train", "--set", "query_tower.name=scann"], "'scann' is an index, not a tower"),
        (["train", "--set", "index.k=0"], "index.k"),
        (["recommend", "--model", "/no/such/dir", "--user", "1"], "is not an export directory"),
        (["recommend", "--model", ".", "--user", "1", "-k", "0"], "-k must be a positive integer"),
        (["describe", "towers", "nope"], "unknown tower 'nope'"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, message, tmp_path):
    result = run_cli(*args, "--output", str(tmp_path / "o")) if args[0] == "train" else run_cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("towerkit: error:"), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_toml_syntax_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3\n")
    result = run_cli("train", str(bad))
    assert result.returncode == 2 and str(bad) in result.stderr and "not valid TOML" in result.stderr


def test_list_and_describe():
    result = run_cli("list", "indexes", "--json")
    assert result.returncode == 0
    assert {row["name"] for row in json.loads(result.stdout)} >= {"brute-force", "scann"}
    assert run_cli("list", "recipes").stdout.split()[0] == "basic-retrieval"
    described = json.loads(run_cli("describe", "towers", "movie").stdout)
    assert described["aliases"] == ["item"] and "vocabulary" in described["options"]


def test_help_has_examples():
    for command in ("train", "list", "recommend", "similar", "data", "evaluate", "export", "describe", "plugins"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and "examples:" in result.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("towerkit")
    result = subprocess.run([str(script), "list", "towers"], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0 and "user" in result.stdout


def test_data_info_on_grouplens_files(data_dir):
    result = run_cli("data", "info", "movielens-100k", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["candidates"] == 40 and info["train"] + info["test"] == info["interactions"]


def test_evaluate_reopens_the_run_with_the_same_numbers(trained):
    _, output, _ = trained
    result = run_cli("evaluate", "--model", str(output), "--json")
    assert result.returncode == 0, result.stderr
    again = json.loads(result.stdout)
    metrics = json.loads((output / "metrics.json").read_text())
    assert again["epochs_trained"] == 3
    # The evaluate command runs the train job's own evaluate stage: the same schema, the same numbers.
    assert again["test"] == metrics["test"]


def test_export_with_another_index(trained, tmp_path):
    _, output, _ = trained
    target = tmp_path / "scann"
    result = run_cli("export", "--model", str(output), "--set", "index.name=scann", "-o", str(target))
    assert result.returncode == 0, result.stderr
    assert json.loads((target / "towerkit.json").read_text())["index"]["backend"] == "scann"
    ours = run_cli("recommend", "--model", str(target), "--user", "user 3", "-k", "3", "--json")
    exact = run_cli("recommend", "--model", str(output / "model"), "--user", "user 3", "-k", "3", "--json")
    # 60 candidates: ScaNN scores them all exactly, so it agrees with brute force.
    assert [r["id"] for r in json.loads(ours.stdout)] == [r["id"] for r in json.loads(exact.stdout)]


def test_recipe_as_an_option(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(SYNTHETIC_RECIPE)
    result = run_cli("train", "--recipe", str(recipe), "-o", str(tmp_path / "o"), "--json",
                     "--set", "train.epochs=1", "--set", "export.enabled=false")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["recipe"] == "tiny"


def test_scann_export_without_scann_says_what_to_install(trained, tmp_path):
    _, output, _ = trained
    target = tmp_path / "scann"
    assert run_cli("export", "--model", str(output), "--set", "index.name=scann", "-o", str(target)).returncode == 0
    code = ("import sys; sys.modules['scann'] = None\n"
            "from towerkit.cli import main\n"
            f"sys.exit(main(['recommend', '--model', {str(target)!r}, '--user', 'user 3']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    assert "pip install scann" in result.stderr


def test_own_data_quick_start_inspect_train_recommend(tmp_path):
    """The README's second quick start: a CSV log, `data inspect --recipe-out`, `train`, `recommend`."""
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 40, 1500), rng.zipf(1.5, 1500) % 30
    rows = [f"u{u},i{i},{1_700_000_000 + n},{'ab'[i % 2]}" for n, (u, i) in enumerate(zip(users, items))]
    (tmp_path / "events.csv").write_text("user,item,ts,genre\n" + "\n".join(rows) + "\n")
    inspected = run_cli("data", "inspect", "events.csv", "--recipe-out", "my.toml", cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    assert "query id" in inspected.stdout and "most frequent candidates" in inspected.stdout
    trained = run_cli("train", "my.toml", "-o", "run", "--set", "train.epochs=2", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"]["interactions"] == 1500
    recommended = run_cli("recommend", "--model", "run/model", "--user", "u3", "-k", "3", "--json", cwd=tmp_path)
    assert recommended.returncode == 0, recommended.stderr
    assert all(row["id"].startswith("i") for row in json.loads(recommended.stdout))
    again = run_cli("data", "inspect", "events.csv", "--recipe-out", "my.toml", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwrites the user's file
