"""The example plugins, installed with pip, used by name end to end (CI installs both)."""

import json

import pytest

from conftest import recipe_text, run_cli

pytest.importorskip("towerkit_hashing", reason="install examples/plugins/towerkit-hashing (make install does)")
pytest.importorskip("towerkit_faiss", reason="install examples/plugins/towerkit-faiss (make install does)")

RECIPE = recipe_text(query_tower={"name": "hashing", "num_bins": 512}, index={"name": "faiss"})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "plugins.toml").write_text(RECIPE)
    result = run_cli("train", str(folder / "plugins.toml"), "-o", str(folder / "run"))
    assert result.returncode == 0, result.stderr
    return folder / "run"


def test_train_and_export_with_hashing_tower_and_faiss_index(run_dir):
    meta = json.loads((run_dir / "model" / "towerkit.json").read_text())
    assert meta["components"]["query_tower"]["source"] == "towerkit-hashing"
    assert meta["components"]["index"]["source"] == "towerkit-faiss"
    assert {"towerkit-hashing", "towerkit-faiss"} <= set(meta["distributions"])
    assert (run_dir / "model" / "index" / "faiss.index").is_file()
    result = run_cli("recommend", "--model", str(run_dir / "model"), "--user", "user 3", "-k", "5", "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 5
    seen = run_cli("recommend", "--model", str(run_dir / "model"), "--user", "user 3", "-k", "5", "--exclude-seen", "--json")
    trained_on = set(json.loads((run_dir / "model" / "seen.json").read_text())["user 3"])
    assert not {row["id"] for row in json.loads(seen.stdout)} & trained_on


def test_hashing_export_serves_with_tensorflow_only(tmp_path, run_dir):
    result = run_cli("export", "--model", str(run_dir), "--set", "index.name=brute-force", "-o", str(tmp_path / "bf"))
    assert result.returncode == 0, result.stderr
    from conftest import run_python

    code = (f"import os; os.environ['TF_USE_LEGACY_KERAS'] = '1'\nimport tensorflow as tf, sys, json\n"
            f"m = tf.saved_model.load({str(tmp_path / 'bf')!r})\n"
            "out = m.signatures['serving_default'](user_id=tf.constant(['brand-new-user', 'user 3']))\n"
            "print(json.dumps([out['ids'].shape.as_list(), out['ids'].dtype.name, 'towerkit' in sys.modules]))")
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    # Ten answers for each of the two users (a new one too: hashing has no out-of-vocabulary ids),
    # served without importing towerkit or the plugin.
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[2, 10], "string", False]


def test_loading_with_the_plugin_blocked_says_so_and_how_to_allow_it(run_dir):
    result = run_cli("recommend", "--model", str(run_dir / "model"), "--user", "user 3",
                     env={"TOWERKIT_PLUGINS": "towerkit-hashing"})
    assert result.returncode == 2
    assert "towerkit-faiss plugin is installed but blocked by TOWERKIT_PLUGINS" in result.stderr
    assert "TOWERKIT_PLUGINS=towerkit-hashing,towerkit-faiss" in result.stderr
    assert "pip install" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_distribution_that_is_not_installed_is_named_with_its_install_command():
    from towerkit.plugins import missing_distribution_advice

    assert missing_distribution_advice("towerkit-nowhere") == (
        "the towerkit-nowhere distribution is not installed; `pip install towerkit-nowhere`")


def test_listing_shows_source_and_version():
    result = run_cli("list", "towers", "hashing", "--json")
    assert json.loads(result.stdout)[0]["source"] == "towerkit-hashing"
    assert json.loads(result.stdout)[0]["version"] == "0.1.0"


FIXTURE_TESTS = """
import towerkit


class Extra:
    @towerkit.hookimpl
    def register_towers(self, register):
        register("fixture-only", "towerkit.towers.user:user_tower")


def test_registers_for_one_test(towerkit_plugin):
    towerkit_plugin(Extra())
    assert "fixture-only" in towerkit.list_towers()


def test_then_it_is_gone():
    assert "fixture-only" not in towerkit.list_towers()
"""


def test_towerkit_plugin_fixture_registers_for_one_test_only(tmp_path):
    # Its own pytest run, so that the order of the two tests is fixed and nothing else runs between them.
    import subprocess
    import sys

    (tmp_path / "test_fixture.py").write_text(FIXTURE_TESTS)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_fixture.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
