"""Plugins installed with pip (real entry points), loaded in fresh interpreters."""

import json
import os

import pytest

import towerkit
from towerkit import plugins
from towerkit.errors import DuplicateComponentError

from conftest import run_cli, run_python

LIST_COMPONENTS = """
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import towerkit
    from towerkit import plugins
    infos = {p.name: {"status": p.status, "error": p.error,
                      "components": [e.name for e in p.components]} for p in plugins.plugin_infos()}
print(json.dumps({"towers": towerkit.list_towers(), "plugins": infos,
                  "warnings": [str(w.message) for w in caught if issubclass(w.category, plugins.PluginWarning)]}))
"""


def _load(plugin_site, **env):
    result = run_python(LIST_COMPONENTS, env={"PYTHONPATH": str(plugin_site), **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_installed_plugin_registers_and_broken_ones_are_isolated(plugin_site):
    state = _load(plugin_site)
    assert "hashed-id" in state["towers"]
    assert state["plugins"]["towerkit-test-hashing"]["status"] == "loaded"
    broken = state["plugins"]["towerkit-test-broken"]
    assert broken["status"] == "failed"
    # Each fault is reported, naming the distribution and the error.
    text = " ".join(state["warnings"])
    assert "towerkit-test-broken" in text
    assert "broken on purpose" in text
    assert "hook failed after registering one tower" in text
    assert "register_tower" in text
    # What the raising hook registered before failing was rolled back.
    assert "half-registered" not in state["towers"]
    assert "never-registered" not in state["towers"]
    assert "user" in state["towers"]


def test_allow_list_empty_loads_none_and_builtins_still_load(plugin_site):
    state = _load(plugin_site, TOWERKIT_PLUGINS="")
    assert "hashed-id" not in state["towers"]
    assert "user" in state["towers"]
    assert state["plugins"]["towerkit-test-hashing"]["status"] == "blocked"
    assert state["warnings"] == []


def test_allow_list_names_distributions(plugin_site):
    state = _load(plugin_site, TOWERKIT_PLUGINS="towerkit_test_hashing")
    assert "hashed-id" in state["towers"]
    assert state["plugins"]["towerkit-test-broken"]["status"] == "blocked"


def test_model_assembled_by_name_from_plugin_component(plugin_site):
    code = """
import warnings; warnings.simplefilter("ignore")
import towerkit, tensorflow as tf
data = towerkit.load_dataset("synthetic", num_users=50, num_items=30, num_interactions=2000)
tf.keras.utils.set_random_seed(0)
model = towerkit.assemble(query={"name": "hashed-id", "num_bins": 64, "embedding_dim": 8},
                          candidate={"name": "movie", "embedding_dim": 8}, data=data)
model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
ds = tf.data.Dataset.from_tensor_slices(data.train_features(model.feature_keys)).batch(512)
history = model.fit(ds, epochs=2, verbose=0).history
print(type(model.query_tower).__module__, history["loss"][0] > history["loss"][-1])
"""
    result = run_python(code, env={"PYTHONPATH": str(plugin_site), "TOWERKIT_PLUGINS": "towerkit-test-hashing"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["towerkit_test_hashing.tower", "True"]


def test_cli_plugins_lists_components_and_blocked(plugin_site):
    result = run_cli("plugins", "--json", env={"PYTHONPATH": str(plugin_site), "TOWERKIT_PLUGINS": "towerkit-test-hashing"})
    assert result.returncode == 0, result.stderr
    listing = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert "tower:hashed-id" in listing["towerkit-test-hashing"]["components"]
    assert listing["towerkit-test-broken"]["status"] == "blocked"
    assert "tower:user" in listing["towerkit"]["components"]


class _Plugin:
    @towerkit.hookimpl
    def register_indexes(self, register):
        register("exact-test", "towerkit.indexes.brute_force:BruteForceIndex")


def test_register_plugin_from_code_and_unregister():
    plugins.register_plugin(_Plugin(), name="in-code")
    try:
        assert "exact-test" in towerkit.list_indexes()
        assert towerkit.registry("indexes").get("exact-test").source == "in-code"
    finally:
        plugins.unregister_plugin("in-code")
    assert "exact-test" not in towerkit.list_indexes()


class _Clashing:
    @towerkit.hookimpl
    def register_towers(self, register):
        register("user", "towerkit.towers.movie:movie_tower")


def test_clash_with_builtin_warns_and_keeps_first(monkeypatch):
    with pytest.warns(plugins.PluginWarning, match="keeping the latter"):
        plugins.register_plugin(_Clashing(), name="clashing")
    try:
        assert towerkit.registry("towers").get("user").source == "towerkit"
    finally:
        plugins.unregister_plugin("clashing")


def test_strict_mode_turns_clash_into_error(monkeypatch):
    monkeypatch.setenv(plugins.STRICT_ENV, "1")
    with pytest.raises(DuplicateComponentError):
        plugins.register_plugin(_Clashing(), name="clashing-strict")
    plugins.unregister_plugin("clashing-strict")
    assert towerkit.registry("towers").get("user").source == "towerkit"


def test_builtins_use_the_hooks():
    builtin = next(p for p in plugins.plugin_infos() if p.name == "towerkit")
    assert {e.name for e in builtin.components} >= {"user", "movie", "retrieval", "brute-force", "scann",
                                                     "movielens-100k", "synthetic"}
    assert os.path.basename(plugins.builtins.__file__) == "builtins.py"
