"""Hostile recipes, --set values and TF_CONFIGs: each is one one-line towerkit error, before any work starts.

Most cases call the config functions directly (fast); a few run the CLI in a
subprocess where the exit code and the single line of output are the point.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import towerkit
from conftest import ROOT, TINY_RECIPE, recipe_text
from towerkit import config as recipe_config
from towerkit import distribute
from towerkit.errors import ConfigError, TowerkitError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TOWERKIT = str(ROOT / ".venv" / "bin" / "towerkit")


def resolve_text(text: str, overrides: list[str] = ()) -> dict:
    """Reads recipe TOML the way `towerkit train FILE --set ...` does, without training."""
    raw = recipe_config.read_toml(text, "test.toml")
    return recipe_config.resolve(recipe_config.apply_overrides(raw, list(overrides)), "test.toml")


def assert_one_line_error(call, *args, match: str | None = None) -> TowerkitError:
    with pytest.raises(TowerkitError) as caught:
        call(*args)
    message = str(caught.value)
    assert message and "\n" not in message and "\r" not in message, message
    if match:
        assert match in message, message
    return caught.value


def run_towerkit(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([TOWERKIT, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(cwd or ROOT), env=env)


# --- 1. nesting -------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [20, 500, 5000])
def test_deeply_nested_list_in_a_recipe_file_is_one_config_error(tmp_path, depth):
    path = tmp_path / "deep.toml"
    path.write_text(recipe_text() + f"\n[evaluate]\nks = {'[' * depth}1{']' * depth}\n")
    assert_one_line_error(recipe_config.load_recipe, str(path), match="levels deep")


def test_deeply_nested_inline_tables_are_one_config_error():
    text = "[dataset]\nname = \"synthetic\"\nx = " + "{a = " * 600 + "1" + "}" * 600 + "\n"
    assert_one_line_error(recipe_config.read_toml, text, "t.toml", match="levels deep")


@pytest.mark.parametrize("depth", [15, 500])
def test_deeply_nested_set_value_is_one_config_error(depth):
    assert_one_line_error(recipe_config.parse_override, f"evaluate.ks={'[' * depth}1{']' * depth}",
                          match="levels deep")


def test_deep_structure_from_code_is_a_config_error_not_a_recursion_error():
    deep: list = [1]
    for _ in range(3000):
        deep = [deep]
    raw = {**{k: dict(v) for k, v in TINY_RECIPE.items()}, "evaluate": {"ks": deep}}
    assert_one_line_error(recipe_config.resolve, raw, "code", match="levels deep")
    assert_one_line_error(recipe_config.apply_overrides, raw, [], match="levels deep")


# --- 2. seeds and bounds ----------------------------------------------------------------------

@pytest.mark.parametrize("assignment, key", [
    ("train.seed=4294967296", "train.seed"),
    ("train.seed=-1", "train.seed"),
    ("dataset.seed=-1", "dataset.seed"),
    ("dataset.seed=18446744073709551616", "dataset.seed"),
    ("dataset.seed=true", "dataset.seed"),
    ("dataset.seed=1.5", "dataset.seed"),
])
def test_seeds_outside_numpys_range_are_refused(assignment, key):
    assert_one_line_error(resolve_text, recipe_text(), [assignment], match=key)


def test_movielens_split_seed_is_checked_like_any_seed():
    text = recipe_text(dataset={"name": "movielens-100k"})
    text = text.replace("num_users = 150\n", "").replace("num_items = 60\n", "").replace("num_interactions = 4000\n", "")
    assert_one_line_error(resolve_text, text, ["dataset.split_seed=-3"], match="dataset.split_seed")
    assert resolve_text(text, ["dataset.split_seed=4294967295"])["dataset"]["split_seed"] == 2**32 - 1


@pytest.mark.parametrize("assignment, match", [
    ("train.shuffle_buffer=2147483647", "train.shuffle_buffer"),
    ("train.batch_size=1048577", "train.batch_size"),
    ("train.batch_size=1048576", "memory"),
    ("train.epochs=1000000000", "train.epochs"),
    ("evaluate.batch_size=99999999", "evaluate.batch_size"),
    ("index.k=99999999", "index.k"),
    ("optimizer.learning_rate=1e300", "optimizer.learning_rate"),
    ("train.cluster_timeout=0", "train.cluster_timeout"),
    ("train.cluster_timeout=1e9", "train.cluster_timeout"),
    ("train.cluster_timeout=inf", "train.cluster_timeout"),
    ("train.cluster_timeout='soon'", "train.cluster_timeout"),
])
def test_values_that_would_exhaust_the_machine_are_refused_by_resolve(assignment, match):
    assert_one_line_error(resolve_text, recipe_text(), [assignment], match=match)


def test_sane_large_values_still_resolve():
    config = resolve_text(recipe_text(), ["train.shuffle_buffer=1000000", "train.batch_size=8192",
                                          "train.seed=4294967295", "train.cluster_timeout=2.5"])
    assert config["train"]["shuffle_buffer"] == 1_000_000 and config["train"]["cluster_timeout"] == 2.5


def test_huge_embedding_dim_is_refused_when_the_tower_is_built_naming_the_option():
    error = assert_one_line_error(lambda: towerkit.create_tower("user", vocabulary=[str(i) for i in range(1000)],
                                                                embedding_dim=10**9), match="embedding_dim")
    assert isinstance(error, ConfigError) and "available" in str(error)


@pytest.mark.parametrize("tower, options, option", [
    ("user", {"layers": [10**9]}, "layers"),
    ("user", {"num_oov_buckets": 10**10}, "num_oov_buckets"),
    ("user", {"demographics": True, "embedding_dim": 10**8}, "embedding_dim"),
    ("movie", {"genres": True, "num_genres": 10**10}, "num_categories"),
    ("movie", {"title_text": True, "embedding_dim": 10**8}, "embedding_dim"),
])
def test_oversized_side_feature_weights_are_refused(tower, options, option):
    assert_one_line_error(lambda: towerkit.create_tower(tower, **options), match=option)


def test_oversized_tower_fails_at_assembly_before_any_training(synthetic):
    # The vocabulary is learned from data at assembly, so that is where the table's size is known.
    assert_one_line_error(lambda: towerkit.assemble(query={"name": "user", "embedding_dim": 10**9},
                                                    candidate="movie", data=synthetic), match="embedding_dim")


def test_cli_refuses_a_huge_embedding_dim_before_training_with_exit_2_and_one_line(tmp_path):
    (tmp_path / "r.toml").write_text(recipe_text())
    result = run_towerkit("train", str(tmp_path / "r.toml"), "--set", "query_tower.embedding_dim=1000000000",
                          "-o", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and "embedding_dim" in result.stderr
    assert "training" not in result.stdout and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("interactions", [1, 2])
def test_dataset_too_small_for_a_test_split_is_one_error(interactions):
    assert_one_line_error(lambda: towerkit.load_dataset("synthetic", num_users=2, num_items=2,
                                                        num_interactions=interactions), match="too few")


def test_cli_refuses_a_segfaulting_shuffle_buffer_with_exit_2_and_one_line(tmp_path):
    (tmp_path / "r.toml").write_text(recipe_text())
    result = run_towerkit("train", str(tmp_path / "r.toml"), "--set", "train.shuffle_buffer=2147483647",
                          "-o", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and "train.shuffle_buffer" in result.stderr
    assert not (tmp_path / "run").exists()


# --- 3. --set is one line ---------------------------------------------------------------------

@pytest.mark.parametrize("assignment", [
    "train.epochs=5\ntrain.batch_size=7",
    "train.epochs=5\r\ntrain.seed=1",
    "train.epochs=\x005",
    "recipe.description=a\tb",
    "train\n.epochs=5",
    "train.epochs=5\x1b[2J",
])
def test_set_with_newlines_or_control_characters_is_refused(assignment):
    assert_one_line_error(recipe_config.parse_override, assignment, match="control character")


def test_set_newline_no_longer_drops_the_second_assignment_silently():
    # Before, TOML read "5" and ignored the rest; now nothing is applied at all.
    with pytest.raises(ConfigError):
        recipe_config.apply_overrides({"train": {}}, ["train.epochs=5\ntrain.batch_size=7"])


# --- 4. a recipe name is a name ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "a\\b", "..", ".", ".hidden", "a..b", " lead",
                                  "trail ", "x" * 101, "tab\there", "new\nline", "-flag", "a:b*c"])
def test_recipe_names_that_are_not_plain_names_are_refused(name):
    text = recipe_text() + f"\n[recipe]\nname = {json.dumps(name)}\n"
    assert_one_line_error(resolve_text, text, match="recipe.name")


@pytest.mark.parametrize("name", ["my-recipe_2", "v1.2", "rétro", "tuned +l2", "A"])
def test_plain_recipe_names_resolve(name):
    text = recipe_text() + f"\n[recipe]\nname = {json.dumps(name)}\n"
    assert resolve_text(text)["recipe"]["name"] == name


def test_cli_does_not_write_outside_towerkit_runs_for_a_hostile_recipe_name(tmp_path):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "r.toml").write_text(recipe_text() + '\n[recipe]\nname = "../../escaped"\n')
    result = run_towerkit("train", "r.toml", cwd=work)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert "recipe.name" in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "r.toml"]


# --- 5. TF_CONFIG and unreachable peers ---------------------------------------------------------

@pytest.mark.parametrize("tf_config, match", [
    ("[1,2]", "JSON object"),
    ('{"cluster": 5}', '"cluster"'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', '"task"'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker"}}', '"task"'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}', "index"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": true}}', "index"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "chief", "index": 0}}', "chief"),
    ('{"cluster": {"worker": ["no-port"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
    ('{"cluster": {"worker": ["h:70000"]}, "task": {"type": "worker", "index": 0}}', "65535"),
    ('{"cluster": {"worker": [":80"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
    ('{"cluster": {"worker": "h:1"}, "task": {"type": "worker", "index": 0}}', "list"),
    ('{"cluster": {"ps": ["h:1"]}, "task": {"type": "ps", "index": 0}}', "ps"),
    ('{"cluster": {"chief": ["h:1", "h:2"]}, "task": {"type": "chief", "index": 0}}', "one"),
    ('{"cluster": {"evaluator": ["h:1"]}, "task": {"type": "evaluator", "index": 0}}', "worker"),
    ('{"cluster": {}, "task": {}}', '"cluster"'),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 0}, "x": 1}', "unknown key"),
    ("{not json", "JSON"),
    ("[" * 100000, "JSON"),
])
def test_malformed_tf_config_is_one_config_error(tf_config, match):
    assert_one_line_error(distribute.read_tf_config, tf_config, match=match)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cluster_config(ports: list[int], index: int = 0) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def test_unreachable_peer_times_out_naming_it():
    own, peer = closed_port(), closed_port()
    cluster = distribute.read_tf_config(cluster_config([own, peer]))
    started = time.monotonic()
    assert_one_line_error(distribute.wait_for_peers, cluster, 1.0, match=f"127.0.0.1:{peer}")
    assert time.monotonic() - started < 5


def test_workers_probing_each_other_do_not_wait_for_each_other_forever():
    """Each worker answers on its own port while it waits, so neither waits for the other's server."""
    ports = [closed_port(), closed_port()]
    errors: list[BaseException] = []
    both_done = threading.Barrier(2, timeout=30)

    def worker(index: int) -> None:
        try:
            distribute.wait_for_peers(distribute.read_tf_config(cluster_config(ports, index)), 20)
            # Then TensorFlow's server takes the port over; a plain listener stands in for it.
            with socket.create_server(("", ports[index]), reuse_port=False) as server:
                server.listen()
                both_done.wait()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    assert not errors and not any(t.is_alive() for t in threads)


def test_own_port_in_use_is_one_config_error():
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cluster = distribute.read_tf_config(cluster_config([port, closed_port()]))
        assert_one_line_error(distribute.wait_for_peers, cluster, 1.0, match="in use")


STRATEGY_CODE = """
from towerkit.distribute import make_strategy
make_strategy("multi-worker", cluster_timeout={timeout})
"""


def test_multi_worker_strategy_with_a_closed_peer_gives_up_at_the_timeout_in_a_subprocess():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": cluster_config([closed_port(), closed_port()])}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", STRATEGY_CODE.format(timeout=1.5)], capture_output=True,
                            text=True, env=env, timeout=120, cwd=str(ROOT))
    assert result.returncode == 1 and "ConfigError" in result.stderr and "did not answer" in result.stderr
    assert time.monotonic() - started < 60


def test_sigterm_while_waiting_for_peers_exits_promptly_with_one_line():
    own = closed_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": cluster_config([own, closed_port()])}
    process = subprocess.Popen([sys.executable, "-c", STRATEGY_CODE.format(timeout=600)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    try:
        deadline = time.monotonic() + 60
        while True:  # the worker listens on its own port once it is waiting
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            try:
                socket.create_connection(("127.0.0.1", own), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert time.monotonic() - sent < 5
    assert process.returncode == 128 + signal.SIGTERM
    assert stderr.strip().count("\n") == 0 and "SIGTERM" in stderr, stderr


def test_peer_that_answers_but_never_joins_is_ended_at_the_timeout_with_one_message():
    with socket.create_server(("127.0.0.1", 0)) as impostor:  # accepts TCP, speaks no TensorFlow
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_CONFIG": cluster_config([closed_port(), impostor.getsockname()[1]])}
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", STRATEGY_CODE.format(timeout=3)], capture_output=True,
                                text=True, env=env, timeout=120, cwd=str(ROOT))
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert "did not all join within 3 s" in result.stderr.strip().splitlines()[-1]
    assert time.monotonic() - started < 60


def test_sigterm_ends_a_multi_worker_process_after_setup_although_tensorflow_catches_it():
    code = STRATEGY_CODE.format(timeout=60) + "print('ready', flush=True)\nimport time\ntime.sleep(120)\n"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": cluster_config([closed_port()])}
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=str(ROOT))
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGTERM


# --- 6. export may change only the index --------------------------------------------------------

@pytest.mark.parametrize("overrides", [["query_tower.layers=[16]"], ["dataset.seed=3"],
                                       ["index.k=5", "train.epochs=1"], ["candidate_tower.embedding_dim=8"]])
def test_export_overrides_outside_the_index_are_refused(overrides):
    assert_one_line_error(recipe_config.check_export_overrides, overrides, match="index")


def test_export_overrides_of_the_index_are_allowed():
    recipe_config.check_export_overrides(["index.k=100", "index.name=scann"])


# --- 7. one TensorFlow-free source per table; shared tower options -------------------------------

def test_every_recipe_optimizer_names_a_keras_optimizer_class():
    import tensorflow as tf

    for name, class_name in recipe_config.OPTIMIZERS.items():
        optimizer = getattr(tf.keras.optimizers, class_name)(0.1)
        assert isinstance(optimizer, tf.keras.optimizers.Optimizer)
        assert type(optimizer).__name__.lower() == name


@pytest.mark.parametrize("ks", [[], [0], [True], [[1]], [2**40], "10", None, [1.5]])
def test_check_ks_refuses_bad_cutoffs(ks):
    assert_one_line_error(recipe_config.check_ks, ks, "evaluate.ks", match="evaluate.ks")


def test_the_shared_tables_and_cluster_checks_do_not_import_tensorflow():
    code = ("import sys; from towerkit import config as c, distribute as d; c.check_ks([1, 10]); "
            "c.parse_override('train.epochs=2'); c.check_recipe_name('r', 'name'); "
            "assert 'adagrad' in c.OPTIMIZERS and 'tfrs' in c.STYLES and 'mirrored' in d.STRATEGIES; "
            "d.read_tf_config('{\"cluster\": {\"worker\": [\"h:1\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}'); "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert result.stdout.strip() == "False", result.stderr[-2000:]


@pytest.mark.parametrize("name", ["user", "movie", "item-query"])
def test_id_towers_share_the_six_options_and_forward_num_oov_buckets(name):
    options = towerkit.describe("towers", name)["options"]
    for shared in ("vocabulary", "embedding_dim", "feature", "l2", "num_oov_buckets"):
        assert options[shared]["doc"], (shared, options)
    tower = towerkit.create_tower(name, vocabulary=["a", "b"], num_oov_buckets=3, embedding_dim=4)
    ids = getattr(tower, "ids", tower)
    assert ids.num_oov_buckets == 3 and ids.lookup.num_oov_indices == 3
    assert ids.embedding.input_dim == 2 + 3


def test_item_query_recipe_accepts_num_oov_buckets():
    raw, origin = recipe_config.load_recipe("item-to-item")
    config = recipe_config.resolve(recipe_config.apply_overrides(raw, ["query_tower.num_oov_buckets=2"]), origin)
    assert config["query_tower"]["num_oov_buckets"] == 2


# --- 8. the hostile battery and the property --------------------------------------------------

# Each replaces the base recipe's section of the same name (first element), or adds to the top level.
HOSTILE_RECIPES = {
    "epochs is a huge float": ("train", "[train]\nepochs = 1e400\n"),
    "batch size is int64 max": ("train", "[train]\nbatch_size = 9223372036854775807\n"),
    "learning rate is nan": (None, "[optimizer]\nlearning_rate = nan\n"),
    "learning rate is -inf": (None, "[optimizer]\nlearning_rate = -inf\n"),
    "ks holds zero": (None, "[evaluate]\nks = [0]\n"),
    "ks holds a bool": (None, "[evaluate]\nks = [true]\n"),
    "ks is empty": (None, "[evaluate]\nks = []\n"),
    "name with NUL": (None, '[recipe]\nname = "a\\u0000b"\n'),
    "section is a value": ("train", "train = 5\n"),
    "component name with newline": ("query_tower", '[query_tower]\nname = "user\\nx"\n'),
    "section name with newline": (None, '["bad\\nsection"]\nx = 1\n'),
    "key with a tab": ("train", '[train]\n"ep\\tochs" = 1\n'),
    "index k of zero": ("index", '[index]\nname = "brute-force"\nk = 0\n'),
    "strategy is a path": ("train", '[train]\nstrategy = "../x"\n'),
    "duplicate key": ("train", "[train]\nepochs = 1\nepochs = 2\n"),
    "byte order mark": ("train", "\ufeff[train]\nepochs = 1\n"),
    "seed is a string": ("train", '[train]\nseed = "42"\n'),
    "dataset seed negative": ("dataset", '[dataset]\nname = "synthetic"\nseed = -42\n'),
    "timeout negative": ("train", "[train]\ncluster_timeout = -5\n"),
    "example_query is a table": ("export", "[export]\nexample_query = {a = 1}\n"),
    "pipeline-supplied option": ("task", '[task]\nname = "retrieval"\ncandidates = 1\n'),
    "quoted key, absolute name": (None, '[recipe]\n"name" = "/etc"\n'),
    "integer of 5000 digits": ("train", "[train]\nepochs = " + "9" * 5000 + "\n"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RECIPES))
def test_hostile_recipe_is_one_line_towerkit_error(case):
    replaced, text = HOSTILE_RECIPES[case]
    blocks = [block for block in recipe_text().split("\n\n") if block.strip()]
    kept = [block for block in blocks if block.splitlines()[0] != f"[{replaced}]"]
    assert len(kept) == len(blocks) - (replaced is not None)
    assert_one_line_error(lambda: resolve_text(text + "\n" + "\n\n".join(kept)))


HOSTILE_SETS = [
    "a.b.c=1", "=5", "train.=5", ".epochs=5", "train.epochs", "train.seed=4294967296", "train.epochs=5 # x\n",
    "recipe.name=../../x", "recipe.name=/abs/path", "recipe.name=..", "query_tower.name=", "query_tower.name=usr",
    "bogus.key=1", "train.bogus=1", "train.epochs=[1]", "train.epochs=-3", "optimizer.name=adamx",
    "model.style=keras", "evaluate.ks=[1, -1]", "index.k=1e3", "train.strategy=gpu", "train.epochs=" + "9" * 5000,
]


@pytest.mark.parametrize("assignment", HOSTILE_SETS)
def test_hostile_set_is_one_line_towerkit_error(assignment):
    assert_one_line_error(resolve_text, recipe_text(), [assignment])


# Keys each section really has, so that many examples get past "unknown key" to the values.
SECTION_KEYS = {
    **{section: list(schema) for section, schema in recipe_config.FIXED_SECTIONS.items()},
    "dataset": ["name", "seed", "num_users", "num_items", "num_interactions", "train_fraction", "genres"],
    "query_tower": ["name", "embedding_dim", "l2", "num_oov_buckets", "layers", "demographics"],
    "candidate_tower": ["name", "embedding_dim", "l2", "num_oov_buckets", "genres"],
    "task": ["name", "temperature", "logq_correction"],
    "index": ["name", "k"],
}
hostile_text = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["../x", "/abs", ".", "..", "a\nb", "\x00", "user", "synthetic", "retrieval", "brute-force"])
hostile_numbers = (st.integers(min_value=-(2**70), max_value=2**70)
                   | st.sampled_from([0, -1, 2**31 - 1, 2**32, 2**63 - 1, 2**20 + 1])
                   | st.floats(allow_nan=True, allow_infinity=True))
plausible = st.integers(1, 64) | st.sampled_from([0.1, 0.5, True, False, [1, 10], "adam", "tfrs", "default", "ok"])


def nested(depth: int) -> list:
    value: list = [1]
    for _ in range(depth):
        value = [value]
    return value


hostile_values = st.recursive(st.one_of(st.booleans(), hostile_numbers, hostile_text),
                              lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner,
                                                                                          max_size=2),
                              max_leaves=8) | st.integers(1, 2000).map(nested)
# Listed twice: st.one_of picks a branch uniformly, so plausible values come up half the time.
values = st.one_of(plausible, plausible, hostile_values, hostile_values)
set_values = st.one_of(plausible.map(repr), hostile_numbers.map(repr), st.text(max_size=15),
                       st.integers(4000, 6000).map(lambda n: "9" * n),
                       st.integers(1, 2000).map(lambda depth: "[" * depth + "1" + "]" * depth))


def section_and_key(section: str):
    # Mostly real keys; st.one_of picks a branch uniformly.
    real = st.sampled_from(SECTION_KEYS[section])
    return st.tuples(st.just(section), st.one_of(real, real, real, hostile_text))


def valid_value(section: str, key: str):
    """A value the key accepts (its default, or the tiny recipe's), so some examples resolve."""
    schema = recipe_config.FIXED_SECTIONS.get(section, {})
    if key in schema:
        return st.just(schema[key][1])
    if key in TINY_RECIPE.get(section, {}):
        return st.just(TINY_RECIPE[section][key])
    return plausible


def toml_text(value) -> str:
    """``value`` as the right-hand side of a --set, written the way config.toml writes it."""
    return recipe_config.to_toml({"s": {"v": value}}).splitlines()[1][len("v = "):]


def rarely(strategy):
    """``strategy``'s value one time in five, else nothing."""
    return st.one_of(*[st.just([])] * 4, strategy.map(lambda value: [value]))


@st.composite
def changes_and_sets(draw):
    sections = st.sampled_from(sorted(SECTION_KEYS))
    changes: dict = {}
    pairs = draw(st.lists(sections.flatmap(section_and_key), max_size=5))
    for section, key in pairs + draw(rarely(st.tuples(hostile_text, hostile_text))):
        changes.setdefault(section, {})[key] = draw(st.one_of(valid_value(section, key), values))
    sets = [f"{section}.{key}={draw(st.one_of(valid_value(section, key).map(toml_text), set_values))}"
            for section, key in draw(st.lists(sections.flatmap(section_and_key), max_size=3))]
    return changes, sets + draw(rarely(st.text(max_size=20)))


@FUZZ
@given(changes_and_sets())
def test_any_hostile_recipe_and_set_raise_only_one_line_towerkit_errors(case):
    changes, overrides = case
    raw = {name: dict(section) for name, section in TINY_RECIPE.items()}
    for section, updates in changes.items():
        raw.setdefault(section, {}).update(updates)
    try:
        config = recipe_config.resolve(recipe_config.apply_overrides(raw, overrides), "fuzz")
    except TowerkitError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, message
        return
    # Whatever resolves is within bounds and writes back as TOML that resolves the same.
    assert 0 <= config["train"]["seed"] <= 2**32 - 1
    assert config["train"]["batch_size"] <= 2**20 and config["train"]["shuffle_buffer"] <= 2**24
    written = recipe_config.to_toml(config)
    # Compared as text: a NaN option is never equal to itself.
    assert recipe_config.to_toml(recipe_config.resolve(tomllib.loads(written), "round trip")) == written
