"""Plugins installed with pip (real entry points), loaded in fresh interpreters."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pluggy
import pytest

import towerkit
from towerkit import plugins
from towerkit.errors import DuplicateComponentError, TowerkitError
from towerkit.registry import KINDS

from conftest import PLUGINS, ROOT, run_cli, run_python

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
    assert "wrong_argument" in text or "'reg'" in text
    # What the raising hook registered before failing was rolled back.
    assert "half-registered" not in state["towers"]
    assert "never-registered" not in state["towers"]
    assert "wrong-argument" not in state["towers"]
    assert "user" in state["towers"]
    # The invalid hooks were unregistered fully: the distribution that loads after them is not blamed.
    assert "towerkit-test-hashing" not in text


def test_allow_list_empty_loads_none_and_builtins_still_load(plugin_site):
    state = _load(plugin_site, TOWERKIT_PLUGINS="")
    assert "hashed-id" not in state["towers"]
    assert "user" in state["towers"]
    assert state["plugins"]["towerkit-test-hashing"]["status"] == "blocked"
    assert state["warnings"] == []


def test_allow_list_names_distributions(plugin_site):
    state = _load(plugin_site, TOWERKIT_PLUGINS="towerkit_test_hashing")
    assert "hashed-id" in state["towers"]
    blocked = state["plugins"]["towerkit-test-broken"]
    assert blocked["status"] == "blocked"
    # Blocked is not missing: it says so, and how to allow it.
    assert "blocked by TOWERKIT_PLUGINS" in blocked["error"]
    assert "TOWERKIT_PLUGINS=towerkit-test-hashing,towerkit-test-broken" in blocked["error"]
    assert "pip install" not in blocked["error"]


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
        assert towerkit.get_registry("indexes").get("exact-test").source == "in-code"
    finally:
        plugins.unregister_plugin("in-code")
    assert "exact-test" not in towerkit.list_indexes()


class _Clashing:
    @towerkit.hookimpl
    def register_towers(self, register):
        register("user", "towerkit.towers.movie:movie_tower")


def test_clash_with_builtin_warns_keeps_first_and_the_loser_stays_reachable():
    with pytest.warns(plugins.PluginWarning, match="'user' stays towerkit's, and clashing's is 'clashing:user'"):
        plugins.register_plugin(_Clashing(), name="clashing")
    try:
        towers = towerkit.get_registry("towers")
        assert towers.get("user").source == "towerkit"
        loser = towers.get("clashing:user")
        assert loser.source == "clashing" and loser.shadowed_by == "towerkit"
        assert plugins.component_label(loser) == "tower:user (shadowed by towerkit; use 'clashing:user')"
    finally:
        plugins.unregister_plugin("clashing")
    with pytest.raises(towerkit.UnknownComponentError):
        towerkit.get_registry("towers").get("clashing:user")


def test_strict_mode_turns_clash_into_error(monkeypatch):
    monkeypatch.setenv(plugins.STRICT_ENV, "1")
    with pytest.raises(DuplicateComponentError, match="override=True"):
        plugins.register_plugin(_Clashing(), name="clashing-strict")
    assert "clashing-strict" not in {p.name for p in plugins.plugin_infos()}
    assert towerkit.get_registry("towers").get("user").source == "towerkit"
    with pytest.raises(towerkit.UnknownComponentError):
        towerkit.get_registry("towers").get("clashing-strict:user")


class _Overriding:
    @towerkit.hookimpl
    def register_indexes(self, register):
        register("brute-force", "towerkit.indexes.scann_index:ScannIndex", override=True)


def test_override_takes_the_name_and_keeps_the_displaced_one_reachable(monkeypatch):
    monkeypatch.setenv(plugins.STRICT_ENV, "1")  # override=True is what strict mode's error advises
    plugins.register_plugin(_Overriding(), name="overriding")
    try:
        indexes = towerkit.get_registry("indexes")
        assert indexes.get("brute-force").source == "overriding"
        assert indexes.get("towerkit:brute-force").factory == "towerkit.indexes.brute_force:BruteForceIndex"
    finally:
        plugins.unregister_plugin("overriding")
    assert towerkit.get_registry("indexes").get("brute-force").source == "towerkit"


class _WrongArgument:
    @towerkit.hookimpl
    def register_towers(self, reg):
        reg("wrong-argument", "towerkit.towers.user:user_tower")


class _Misspelt:
    @towerkit.hookimpl
    def register_tower(self, register):
        register("misspelt", "towerkit.towers.user:user_tower")


@pytest.mark.parametrize("invalid", [_WrongArgument, _Misspelt])
def test_invalid_hook_raises_a_towerkit_error_and_leaves_nothing_behind(invalid):
    with pytest.raises(TowerkitError, match="was not registered") as info:
        plugins.register_plugin(invalid(), name="invalid")
    assert not isinstance(info.value, pluggy.PluginValidationError)
    assert "invalid" not in {p.name for p in plugins.plugin_infos()}
    # The next plugin is not blamed for the invalid one, and the name is free again.
    plugins.register_plugin(_Plugin(), name="invalid")
    try:
        assert towerkit.get_registry("indexes").get("exact-test").source == "invalid"
    finally:
        plugins.unregister_plugin("invalid")


def test_registering_one_name_twice_is_a_towerkit_error():
    plugins.register_plugin(_Plugin(), name="twice")
    try:
        with pytest.raises(TowerkitError, match="already registered"):
            plugins.register_plugin(_Plugin(), name="twice")
    finally:
        plugins.unregister_plugin("twice")


class _Exiting:
    @towerkit.hookimpl
    def register_towers(self, register):
        register("exiting", "towerkit.towers.user:user_tower")
        raise SystemExit(0)


def test_hook_that_exits_is_isolated():
    with pytest.warns(plugins.PluginWarning, match="must not exit the program"):
        info = plugins.register_plugin(_Exiting(), name="exiting")
    try:
        assert info.status == "failed" and "exiting" not in towerkit.list_towers()
    finally:
        plugins.unregister_plugin("exiting")


def test_builtins_use_the_hooks():
    builtin = next(p for p in plugins.plugin_infos() if p.name == "towerkit")
    assert {e.name for e in builtin.components} >= {"user", "movie", "retrieval", "brute-force", "scann",
                                                     "movielens-100k", "synthetic"}
    # Every built-in component was recorded by the hooks' register, none added around them.
    registered = {(e.kind, e.name) for kind in KINDS for e in towerkit.get_registry(kind).entries()
                  if e.source == "towerkit"}
    assert {(e.kind, e.name) for e in builtin.components} == registered


# Third-party distributions, installed with pip: two that clash, one hostile, one noisy.
THIRD_PARTY = ["towerkit-test-clash-a", "towerkit-test-clash-b", "towerkit-test-hostile", "towerkit-test-noisy"]


@pytest.fixture(scope="module")
def third_party_site(tmp_path_factory):
    target = tmp_path_factory.mktemp("third-party-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), *(str(PLUGINS / name) for name in THIRD_PARTY)],
        check=True, capture_output=True,
    )
    return target


def test_clashing_distributions_keep_both_components(third_party_site):
    state = _load(third_party_site, TOWERKIT_PLUGINS="towerkit-test-clash-a,towerkit-test-clash-b")
    assert state["plugins"]["towerkit-test-clash-a"] == {"status": "loaded", "error": "", "components": ["bag-of-ids"]}
    assert state["plugins"]["towerkit-test-clash-b"] == {"status": "loaded", "error": "", "components": ["bag-of-ids"]}
    assert any("towerkit-test-clash-b registers tower 'bag-of-ids', which towerkit-test-clash-a already provides"
               in w for w in state["warnings"])
    result = run_cli("plugins", "--json", env={"PYTHONPATH": str(third_party_site),
                                               "TOWERKIT_PLUGINS": "towerkit-test-clash-a,towerkit-test-clash-b"})
    listing = {p["name"]: p["components"] for p in json.loads(result.stdout)["plugins"]}
    assert listing["towerkit-test-clash-a"] == ["tower:bag-of-ids"]
    assert listing["towerkit-test-clash-b"] == [
        "tower:bag-of-ids (shadowed by towerkit-test-clash-a; use 'towerkit-test-clash-b:bag-of-ids')"]
    described = run_cli("describe", "towers", "towerkit-test-clash-b:bag-of-ids",
                        env={"PYTHONPATH": str(third_party_site)})
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["source"] == "towerkit-test-clash-b"
    assert "mistake" in json.loads(described.stdout)["options"]


def test_strict_mode_refuses_clashing_distributions(third_party_site):
    result = run_cli("list", "towers", env={"PYTHONPATH": str(third_party_site), plugins.STRICT_ENV: "1",
                                            "TOWERKIT_PLUGINS": "towerkit-test-clash-a,towerkit-test-clash-b"})
    assert result.returncode == 2
    assert "bag-of-ids" in result.stderr and "override=True" in result.stderr
    assert "Traceback" not in result.stderr


def test_plugins_that_exit_or_interrupt_are_isolated(third_party_site):
    state = _load(third_party_site, TOWERKIT_PLUGINS="towerkit-test-hostile")
    hostile = state["plugins"]["towerkit-test-hostile"]
    assert hostile["status"] == "failed" and hostile["components"] == []
    assert "exits_at_import: SystemExit(0)" in hostile["error"]
    assert "interrupts_at_import: KeyboardInterrupt" in hostile["error"]
    assert "SystemExit(3)" in hostile["error"]
    assert "hostile-id" not in state["towers"] and "user" in state["towers"]
    listing = run_cli("list", "towers", "--json", env={"PYTHONPATH": str(third_party_site),
                                                       "TOWERKIT_PLUGINS": "towerkit-test-hostile"})
    assert listing.returncode == 0 and "user" in {row["name"] for row in json.loads(listing.stdout)}


def test_a_real_ctrl_c_while_loading_plugins_still_interrupts(third_party_site):
    code = "import towerkit\ntowerkit.list_towers()\nprint('finished')"
    env = {**os.environ, "PYTHONPATH": str(third_party_site), "TOWERKIT_TEST_SLOW_IMPORT": "1",
           "TOWERKIT_PLUGINS": "towerkit-test-hostile", "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=str(ROOT))
    try:
        deadline = time.monotonic() + 60
        while "sleeping at import" not in process.stderr.readline():
            assert time.monotonic() < deadline and process.poll() is None, "the slow plugin never started"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode != 0
    assert "KeyboardInterrupt" in stderr and "finished" not in stdout


def test_plugin_prints_do_not_reach_stdout(third_party_site):
    env = {"PYTHONPATH": str(third_party_site), "TOWERKIT_PLUGINS": "towerkit-test-noisy"}
    listing = run_cli("list", "towers", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "noisy-id" in {row["name"] for row in json.loads(listing.stdout)}
    assert "noisy plugin imported" in listing.stderr and "noisy hook ran after" in listing.stderr
    assert "PluginWarning" not in listing.stderr
    described = run_cli("describe", "towers", "noisy-id", env=env)  # imports the plugin's lazy tower module
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["options"]["embedding_dim"]["default"] == 8
    assert "noisy tower module imported" in described.stderr


ASSEMBLE_CLASH_LOSER = """
import warnings; warnings.simplefilter("ignore")
import json, towerkit
data = towerkit.load_dataset("synthetic", num_users=40, num_items=20, num_interactions=600)
messages = {}
for name, options in [("bag-of-ids", {}), ("towerkit-test-clash-b:bag-of-ids", {}),
                      ("towerkit-test-clash-b:bag-of-ids", {"mistake": "narrow"})]:
    try:
        towerkit.assemble(query={"name": name, "embedding_dim": 32, **options},
                          candidate={"name": "movie", "embedding_dim": 32}, data=data)
        messages[name + str(options)] = "ok"
    except towerkit.TowerkitError as exc:
        messages[name + str(options)] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(messages))
"""


def test_clash_loser_resolves_by_qualified_name_and_its_broken_shapes_are_one_clear_error(third_party_site):
    result = run_python(ASSEMBLE_CLASH_LOSER, env={"PYTHONPATH": str(third_party_site),
                                                   "TOWERKIT_PLUGINS": "towerkit-test-clash-a,towerkit-test-clash-b"})
    assert result.returncode == 0, result.stderr
    messages = json.loads(result.stdout.strip().splitlines()[-1])
    assert messages["bag-of-ids{}"] == "ok"
    extra_axis = messages["towerkit-test-clash-b:bag-of-ids{}"]
    assert extra_axis.startswith("ContractError: query tower 'bag-of-ids' returns shape [3, 1, 32]")
    narrow = messages["towerkit-test-clash-b:bag-of-ids{'mistake': 'narrow'}"]
    assert narrow.startswith("ContractError: query tower 'bag-of-ids' returns shape [3, 8]") and "[3, 32]" in narrow
    assert "bag_of_ids_tower" not in extra_axis + narrow and "\n" not in extra_axis + narrow


class _SameAsBuiltin:
    @towerkit.hookimpl
    def register_towers(self, register):
        register("user", "towerkit.towers.user:user_tower")  # the very factory towerkit registers


def test_identical_registration_by_another_plugin_is_harmless():
    info = plugins.register_plugin(_SameAsBuiltin(), name="same-as-builtin")
    assert info.status == "loaded" and info.components == []
    plugins.unregister_plugin("same-as-builtin")
    assert towerkit.get_registry("towers").get("user").source == "towerkit"


def test_unknown_name_mentions_plugins_that_are_installed_but_not_loaded(plugin_site):
    env = {"PYTHONPATH": str(plugin_site), "TOWERKIT_PLUGINS": "towerkit-test-broken"}
    plain = run_cli("describe", "towers", "hashed-id", env=env)
    assert plain.returncode == 2
    error = plain.stderr.strip().splitlines()[-1]  # after the broken plugin's warnings
    assert error.startswith("towerkit: error: unknown tower 'hashed-id'")
    blocked = re.search(r"\(Installed plugins not loaded, blocked by TOWERKIT_PLUGINS: ([^;]*); failed to load: "
                        r"towerkit-test-broken \(see `towerkit plugins`\)\.\)$", error)
    assert blocked and "towerkit-test-hashing" in blocked.group(1).split(", ")
    qualified = run_cli("describe", "towers", "towerkit-test-hashing:hashed-id",
                        env={**env, "TOWERKIT_PLUGINS": ""})
    assert qualified.returncode == 2
    [line] = qualified.stderr.strip().splitlines()
    assert line.startswith("towerkit: error: unknown tower 'towerkit-test-hashing:hashed-id'; registered towers: ")
    assert line.endswith(". (the towerkit-test-hashing plugin is installed but blocked by TOWERKIT_PLUGINS=''; add it "
                         "(TOWERKIT_PLUGINS=towerkit-test-hashing) or unset TOWERKIT_PLUGINS to load every installed "
                         "plugin.)")


class _LooksUpWhileLoading:
    @towerkit.hookimpl
    def register_towers(self, register):
        register("looked-up", "towerkit.towers.user:user_tower")
        assert "user" in towerkit.list_towers()  # a registry lookup from inside a hook


def test_a_hook_may_look_up_registries():
    info = plugins.register_plugin(_LooksUpWhileLoading(), name="looks-up")
    try:
        assert info.status == "loaded" and "looked-up" in towerkit.list_towers()
    finally:
        plugins.unregister_plugin("looks-up")
