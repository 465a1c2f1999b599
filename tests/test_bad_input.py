"""Bad input: each case gets one clear error and leaves no partial file behind.

API cases must raise a towerkit exception (a ``TowerkitError`` subclass) with
a message that says what is wrong; CLI cases must exit with code 2 and one
line on stderr, no traceback. Every case runs in an empty working directory
that must still be empty (or unchanged) afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import towerkit
from towerkit import config as recipe_config
from towerkit import plugins
from towerkit.datasets import fetch
from towerkit.errors import TowerkitError
from towerkit.export import save_export
from towerkit.models import build_index
from towerkit.export_format import METADATA_FILE
from towerkit.serving import load_export

from conftest import run_cli, write_grouplens


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _index(num=20, dim=4):
    index = towerkit.create_index("brute-force", k=5)
    index.index(np.random.default_rng(0).normal(size=(num, dim)).astype(np.float32),
                identifiers=np.array([f"c{i}" for i in range(num)]))
    return index


def _resolve(text):
    return recipe_config.resolve(recipe_config.read_toml(text, "test.toml"), "test.toml")


BASE_RECIPE = recipe_config.load_recipe("basic-retrieval")[0]


def _resolve_with(overrides):
    return recipe_config.resolve(recipe_config.apply_overrides(BASE_RECIPE, overrides), "recipe with --set")


API_CASES = {
    "unknown tower": (lambda: towerkit.create_tower("usr"), "did you mean 'user'"),
    "unknown index": (lambda: towerkit.create_index("scan"), "did you mean 'scann'"),
    "unknown dataset": (lambda: towerkit.load_dataset("movielens-1m"), "unknown dataset 'movielens-1m'"),
    "unknown task": (lambda: towerkit.create_task("ranking"), "unknown task 'ranking'"),
    "name of another kind": (lambda: towerkit.create_tower("scann"), "is an index, not a tower"),
    "non-string name": (lambda: towerkit.create_tower(None), "must be a non-empty string"),
    "zero dim": (lambda: towerkit.create_tower("user", embedding_dim=0), "embedding_dim must be a positive integer"),
    "negative dim": (lambda: towerkit.create_tower("movie", embedding_dim=-8), "embedding_dim must be a positive integer"),
    "string dim": (lambda: towerkit.create_tower("user", embedding_dim="32"), "embedding_dim must be a positive integer"),
    "unknown tower option": (lambda: towerkit.create_tower("user", dim=32), "has no option 'dim'"),
    "negative l2": (lambda: towerkit.create_tower("user", l2=-1.0), "l2 must be a non-negative number"),
    "index k zero": (lambda: towerkit.create_index("brute-force", k=0), "k must be a positive integer"),
    "query k zero": (lambda: _index()(np.zeros((1, 4), np.float32), k=0), "k must be a positive integer"),
    "k above candidates": (lambda: _index()(np.zeros((1, 4), np.float32), k=21), "more than the 20 candidates"),
    "query dim mismatch": (lambda: _index()(np.zeros((1, 3), np.float32)), "queries have dimension 3"),
    "empty candidates": (lambda: towerkit.create_index("brute-force").index(np.zeros((0, 4), np.float32)),
                         "non-empty"),
    "ids do not match candidates": (lambda: towerkit.create_index("scann").index(np.zeros((3, 4), np.float32),
                                                                                identifiers=np.array(["a"])),
                                    "one identifier per candidate"),
    "scann leaves": (lambda: towerkit.create_index("scann", num_leaves=10, num_leaves_to_search=20),
                     "cannot exceed num_leaves"),
    "zero temperature": (lambda: towerkit.create_task("retrieval", temperature=0), "temperature must be"),
    "empty ks": (lambda: towerkit.create_task("retrieval", ks=[]), "ks must be"),
    "bad style": (lambda: towerkit.assemble(style="keras3"), "style must be one of"),
    "tower mapping without name": (lambda: towerkit.assemble(query={"embedding_dim": 4}), "needs a 'name' key"),
    "synthetic zero items": (lambda: towerkit.load_dataset("synthetic", num_items=0), "num_items must be"),
    "movielens bad source": (lambda: towerkit.load_dataset("movielens-100k", source="web"), "source must be one of"),
    "item2item zero window": (lambda: towerkit.load_dataset("item2item", window=0), "window must be"),
    "unknown section": (lambda: _resolve_with(["trian.epochs=3"]), "unknown key 'trian'"),
    "unknown fixed key": (lambda: _resolve_with(["train.epoch=3"]), "did you mean 'epochs'"),
    "wrong type": (lambda: _resolve_with(["train.epochs='3'"]), "train.epochs in recipe with --set must be int"),
    "negative batch size": (lambda: _resolve_with(["train.batch_size=-1"]), "must be positive"),
    "bad optimizer": (lambda: _resolve_with(["optimizer.name='adamm'"]), "did you mean 'adam'"),
    "zero learning rate": (lambda: _resolve_with(["optimizer.learning_rate=0"]), "must be positive"),
    "nan learning rate": (lambda: _resolve_with(["optimizer.learning_rate=nan"]), "must be positive and finite"),
    "negative seed": (lambda: _resolve_with(["train.seed=-1"]), "train.seed"),
    "ks with zero": (lambda: _resolve_with(["evaluate.ks=[0, 10]"]), "evaluate.ks"),
    "bad model style": (lambda: _resolve_with(["model.style='jax'"]), "model.style"),
    "component unknown option": (lambda: _resolve_with(["query_tower.size=3"]), "unknown key 'size'"),
    "component supplied option": (lambda: _resolve_with(["task.candidates=1"]), "unknown key 'candidates'"),
    "component without name": (lambda: _resolve("[dataset]\nname = 'synthetic'\n[query_tower]\nembedding_dim = 3\n"),
                                "needs a 'name'"),
    "toml syntax error": (lambda: _resolve("[train\nepochs = 3"), "is not valid TOML"),
    "set without equals": (lambda: recipe_config.parse_override("train.epochs"), "has no '='"),
    "set too deep": (lambda: recipe_config.parse_override("a.b.c=1"), "must name section.key"),
    "unknown recipe": (lambda: recipe_config.load_recipe("retreival"), "did you mean 'retrieval'"),
    "missing recipe file": (lambda: recipe_config.load_recipe("nowhere/recipe.toml"), "cannot read recipe file"),
    "not a zip": (lambda: fetch.grouplens_files_from_zip(b"PK but not really"), "not a valid zip"),
    "recbole wrong column count": (
        lambda: fetch.recbole_to_grouplens({"ml-100k.inter": b"h\n1\t2\n", "ml-100k.item": b"h\n", "ml-100k.user": b"h\n"}),
        "has 2 columns, expected 4"),
    "export dir missing": (lambda: load_export("no-such-export"), "is not an export directory"),
    "non-export dir": (lambda: load_export("."), "not a complete towerkit export"),
    "tower needs a dict": (lambda: towerkit.towers.feature_tower.FeatureTower("user_id", categories=["user_gender"])(
        tf.constant(["1"])), "needs a dict"),
}




@pytest.mark.parametrize("case", sorted(API_CASES))
def test_api_bad_input(case, workdir):
    action, message = API_CASES[case]
    before = _snapshot(workdir)
    with pytest.raises(TowerkitError) as info:
        action()
    text = str(info.value)
    assert message in text, text
    # One line, and not KeyError's quoted repr of the message.
    assert "\n" not in text and not (text[0] in "'\"" and text[-1] == text[0])
    assert _snapshot(workdir) == before


def test_plugin_registering_an_invalid_factory_is_skipped(workdir):
    class BadFactory:
        @towerkit.hookimpl
        def register_towers(self, register):
            register("good-then-bad", "towerkit.towers.user:user_tower")
            register("bad", 42)

    with pytest.warns(plugins.PluginWarning, match="raised in a hook and was skipped"):
        info = plugins.register_plugin(BadFactory(), name="bad-factory")
    assert info.status == "failed" and "good-then-bad" not in towerkit.list_towers()
    plugins.unregister_plugin("bad-factory")


def test_plugin_hook_with_wrong_signature_is_refused(workdir):
    class WrongSignature:
        @towerkit.hookimpl
        def register_towers(self, registrar):
            pass

    with pytest.raises(TowerkitError, match="registrar"):
        plugins.register_plugin(WrongSignature(), name="wrong-signature")
    plugins.unregister_plugin("wrong-signature")


GROUPLENS_CORRUPTIONS = {
    "u.data wrong column count": ("u.data", b"1\t2\t3\n", "fields where GroupLens has 4"),
    "u.data bad encoding": ("u.data", b"1\t2\t3\t\xff\xfe\n", "is not ASCII"),
    "u.item truncated line": ("u.item", b"41|Truncated (1999)|01-Jan\n", "fields where GroupLens has 24"),
    "u.user wrong column count": ("u.user", b"61|30|M|writer\n", "fields where GroupLens has 5"),
    "u.data unknown movie": ("u.data", b"1\t999\t3\t881250949\n", "malformed"),
}


@pytest.mark.parametrize("case", sorted(GROUPLENS_CORRUPTIONS))
def test_corrupt_grouplens_files(case, tmp_path, workdir):
    name, payload, message = GROUPLENS_CORRUPTIONS[case]
    directory = write_grouplens(tmp_path / "data" / "ml-100k")
    with open(directory / name, "ab") as handle:
        handle.write(payload)
    before = _snapshot(tmp_path / "data")
    with pytest.raises(towerkit.DataError, match=message):
        towerkit.load_dataset("movielens-100k", data_dir=str(tmp_path / "data"), source="files")
    assert _snapshot(tmp_path / "data") == before


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, synthetic):
    model = towerkit.assemble(data=synthetic)
    from towerkit.models import build_index

    index = build_index(model, synthetic, {"name": "brute-force", "k": 5})
    return save_export(index, tmp_path_factory.mktemp("export") / "model", query_feature_keys=["user_id"], metadata={})


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "saved_model.pb").unlink(), "not a complete towerkit export"),
    (lambda d: (d / METADATA_FILE).write_text("{"), "is corrupt"),
    (lambda d: (d / METADATA_FILE).write_text(json.dumps({**json.loads((d / METADATA_FILE).read_text()),
                                                           "format_version": 99, "towerkit_version": "9.0"})),
     "newer than this towerkit reads"),
    (lambda d: (d / "saved_model.pb").write_bytes(b"garbage"), "cannot load the SavedModel"),
])
def test_damaged_exports(export_dir, tmp_path, damage, message):
    copy = _copy(export_dir, tmp_path / "model")
    damage(copy)
    with pytest.raises(towerkit.DataError, match=message):
        load_export(copy)


@pytest.mark.parametrize("user", ["no-such-user", "", b"\xff\xfe".decode("latin-1")])
def test_unknown_empty_or_odd_user_ids_get_the_oov_answer(export_dir, user):
    """Documented behaviour: any id outside the vocabulary is answered from the shared OOV embedding."""
    loaded = load_export(export_dir)
    _, reference = loaded.recommend({"user_id": ["definitely-unknown"]})
    _, ids = loaded.recommend({"user_id": [user]})
    np.testing.assert_array_equal(ids, reference)


def test_non_utf8_user_id_bytes_get_the_oov_answer(export_dir):
    loaded = load_export(export_dir)
    outputs = loaded.signature(user_id=tf.constant([b"\xff\xfe\xfd", b"definitely-unknown"]))
    ids = outputs["ids"].numpy()
    np.testing.assert_array_equal(ids[0], ids[1])


def test_disk_full_during_export_keeps_nothing(synthetic, full_disk):
    """A real full disk (a 48 KiB tmpfs): the SavedModel does not fit, and nothing is left behind."""
    model = towerkit.assemble(data=synthetic)
    index = build_index(model, synthetic, {"name": "brute-force", "k": 3})
    with pytest.raises(TowerkitError, match="No space left on device|failed"):
        save_export(index, full_disk / "model", query_feature_keys=["user_id"], metadata={})
    assert list(full_disk.iterdir()) == []


CLI_CASES = [
    (["train", "no-such-recipe"], "unknown recipe"),
    (["train", "--set", "train.epochs=0"], "must be positive"),
    (["train", "--set", "trainepochs=3"], "must name section.key"),
    (["train", "--set", "dataset.name=movielens-1m"], "unknown dataset 'movielens-1m'"),
    (["recommend", "--model", "missing", "--user", "42"], "is not an export directory"),
    (["recommend", "--model", "missing", "--user", "42", "-k", "-3"], "-k must be a positive integer"),
    (["similar", "Star Wars (1977)", "--model", "missing"], "is not an export directory"),
    (["data", "fetch", "synthetic"], "only movielens-100k can be fetched"),
    (["describe", "indexes", "scan"], "did you mean 'scann'"),
]


@pytest.mark.parametrize("args, message", CLI_CASES)
def test_cli_bad_input(args, message, workdir):
    result = run_cli(*args, cwd=workdir)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("towerkit: error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert _snapshot(workdir) == set()


def test_cli_unwritable_output_dir(workdir):
    (workdir / "taken").write_text("a file, not a directory")
    result = run_cli("train", "--output", "taken/run", cwd=workdir)
    assert result.returncode == 2 and "is not writable" in result.stderr
    assert _snapshot(workdir) == {"taken"}


def test_no_pickle_anywhere():
    package = Path(towerkit.__file__).parent
    offenders = [p.name for p in package.rglob("*.py") if "pickle" in p.read_text(encoding="utf-8")]
    assert offenders == []
    assert os.path.basename(package) == "towerkit"
