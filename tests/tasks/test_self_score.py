"""model.self_score_penalty: each history item's score against itself, pushed towards zero in training."""

import numpy as np
import pytest
import tensorflow as tf

import towerkit
from towerkit.datasets.base import to_tf_dataset
from towerkit.errors import ConfigError, FeatureError

HISTORY = {"name": "history", "embedding_dim": 8, "max_length": 5}


def self_scores(model, data, histories):
    """Each history item's e_i . c_i, computed outside the model: its row of the candidate table by movie_id."""
    movie_ids = data.candidate_features["movie_id"].astype(np.int64).tolist()
    ids = np.concatenate([np.asarray(h, dtype=np.int64)[-5:] for h in histories])
    rows = [movie_ids.index(i) for i in ids.tolist()]
    columns = {k: tf.constant(np.asarray(data.candidate_features[k])[rows]) for k in model.candidate_tower.feature_keys}
    items = model.query_tower.item_embeddings(tf.constant(ids)).numpy()
    candidates = model.candidate_tower(columns).numpy()[:, : items.shape[1]]
    return np.sum(items * candidates, axis=1)


def train(data, penalty, style="tfrs", epochs=3, item_bias=False):
    tf.keras.utils.set_random_seed(5)
    model = towerkit.assemble(data=data, query={**HISTORY, "item_bias": item_bias},
                              candidate={"name": "movie", "embedding_dim": 8, "item_bias": item_bias},
                              style=style, self_score_penalty=penalty)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.3))
    if epochs:
        model.fit(to_tf_dataset(data.train_features(model.feature_keys)).batch(256), epochs=epochs, verbose=0)
    return model


@pytest.mark.parametrize("item_bias", [False, True])
def test_the_penalty_is_its_weight_times_the_squared_self_scores_of_the_batch_history_items(small_leave_last, item_bias):
    model = train(small_leave_last, 0.5, epochs=0, item_bias=item_bias)
    rows = small_leave_last.train_rows[:40]
    histories = small_leave_last.column("movie_history", rows)
    features = {"movie_history": tf.ragged.constant([h.tolist() for h in histories], dtype=tf.int64),
                **{k: tf.constant(small_leave_last.column(k, rows)) for k in model.candidate_tower.feature_keys}}
    expected = 0.5 * np.sum(np.square(self_scores(model, small_leave_last, histories)))
    assert expected > 0
    np.testing.assert_allclose(model.self_score(features).numpy(), expected, rtol=1e-5)
    # An id the candidate table does not have adds nothing (it has no candidate embedding to score against).
    unknown = dict(features, movie_history=tf.concat(
        [features["movie_history"], tf.ragged.constant([[99999]], dtype=tf.int64)], axis=0))
    np.testing.assert_allclose(model.self_score(unknown).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("style", ["tfrs", "train_step"])
def test_training_with_it_shrinks_the_self_scores_of_history_items(small_leave_last, style):
    histories = small_leave_last.column("movie_history", small_leave_last.train_rows)
    without = np.mean(np.square(self_scores(train(small_leave_last, 0.0, style), small_leave_last, histories)))
    penalised = train(small_leave_last, 1.0, style)
    assert np.mean(np.square(self_scores(penalised, small_leave_last, histories))) < 0.2 * without
    # It is a training term: evaluation's loss is the task's alone, as without it.
    features = small_leave_last.train_features(penalised.feature_keys)
    plain = train(small_leave_last, 0.0, style, epochs=0)
    plain.set_weights(penalised.get_weights())
    batch = to_tf_dataset(features).batch(len(small_leave_last.train_rows))
    np.testing.assert_allclose(penalised.evaluate(batch, verbose=0, return_dict=True)["loss"],
                               plain.evaluate(batch, verbose=0, return_dict=True)["loss"], rtol=1e-6)


@pytest.mark.parametrize("style", ["tfrs", "train_step"])
def test_it_leaves_the_towers_regularization_of_the_batch_as_it_was(small_leave_last, style):
    """A Keras 2 layer called again drops its last call's L2 terms: the penalty must not swap the batch's L2 for its own."""
    def one_step(penalty):
        tf.keras.utils.set_random_seed(5)
        model = towerkit.assemble(data=small_leave_last, query={**HISTORY, "l2": 0.5}, style=style,
                                  candidate={"name": "movie", "embedding_dim": 8, "l2": 1.0},
                                  self_score_penalty=penalty)
        model.compile(optimizer=tf.keras.optimizers.Adagrad(0.3))
        batch = to_tf_dataset(small_leave_last.train_features(model.feature_keys)).take(256).batch(256)
        return model.fit(batch, epochs=1, verbose=0).history

    without, tiny = one_step(0.0), one_step(1e-9)
    assert without["regularization_loss"][0] > 0
    np.testing.assert_allclose(tiny["regularization_loss"], without["regularization_loss"], rtol=1e-6)


def test_a_batch_of_empty_histories_costs_nothing(small_leave_last):
    model = train(small_leave_last, 1.0, epochs=0)
    empty = {"movie_history": tf.ragged.constant([[], []], dtype=tf.int64)}
    assert model.self_score(empty).numpy() == 0.0


def test_a_gru_history_is_refused_since_it_does_not_add_item_embeddings(small_leave_last):
    with pytest.raises(ConfigError, match="adds up item embeddings.*'gru'"):
        towerkit.assemble(data=small_leave_last, query={**HISTORY, "pooling": "gru"},
                          candidate={"name": "movie", "embedding_dim": 8}, self_score_penalty=1.0)


def test_without_a_history_pooling_query_tower_it_is_one_clear_error(small_movielens):
    with pytest.raises(ConfigError, match="needs a query tower that pools an item history.*'user'"):
        towerkit.assemble(data=small_movielens, query="user", candidate="movie", self_score_penalty=1.0)


def test_a_negative_weight_or_no_data_is_one_clear_error(small_leave_last):
    for weight in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="must be a finite non-negative number"):
            towerkit.assemble(data=small_leave_last, query=HISTORY, candidate="movie", self_score_penalty=weight)
    with pytest.raises(ConfigError, match="needs the data"):
        towerkit.assemble(query={**HISTORY, "vocabulary": [1, 2]}, candidate={"name": "movie", "vocabulary": ["a"]},
                          self_score_penalty=1.0)


def test_an_item_key_the_candidate_table_lacks_names_its_columns(small_leave_last):
    with pytest.raises(FeatureError, match="candidate column 'film'.*movie_id"):
        towerkit.assemble(data=small_leave_last, query={**HISTORY, "item_key": "film"},
                          candidate={"name": "movie", "embedding_dim": 8},
                          self_score_penalty=1.0)


def test_item_key_round_trips_through_the_tower_config():
    from towerkit.towers.history import HistoryTower

    tower = HistoryTower(vocabulary=[1, 2], item_key="item")
    assert HistoryTower.from_config(tower.get_config()).item_key == "item"
    with pytest.raises(ConfigError, match="item_key must be a non-empty string"):
        HistoryTower(vocabulary=[1], item_key="")


@pytest.mark.parametrize("value", ["-0.5", "nan", "inf"])
def test_a_recipe_with_a_negative_or_non_finite_penalty_is_refused_before_training(tmp_path, value):
    from conftest import recipe_text

    from towerkit import config as recipe_config

    path = tmp_path / "bad.toml"
    path.write_text(recipe_text(model={"self_score_penalty": 1.0}).replace("self_score_penalty = 1.0",
                                                                            f"self_score_penalty = {value}"))
    raw, origin = recipe_config.load_recipe(str(path))
    with pytest.raises(ConfigError, match=r"model.self_score_penalty in .*bad.toml must be 0 \(off\) or a positive"):
        recipe_config.resolve(raw, origin)


def test_a_parameter_server_run_with_it_is_refused_before_training():
    from towerkit import config as recipe_config

    raw, origin = recipe_config.load_recipe("cold-start")
    raw = recipe_config.apply_overrides(raw, ['train.strategy="parameter-server"', "model.self_score_penalty=1.0"])
    with pytest.raises(ConfigError, match='not supported with train.strategy "parameter-server"'):
        recipe_config.resolve(raw, origin)


def test_the_shipped_cold_start_recipe_trains_with_it_end_to_end_and_its_export_serves_a_new_user(data_dir, tmp_path):
    import json

    from conftest import run_cli

    trained = run_cli("train", "cold-start", "-o", str(tmp_path / "run"), "--set", "train.epochs=1",
                      "--set", 'dataset.source="files"', "--set", "model.self_score_penalty=1.0", "--json")
    assert trained.returncode == 0, trained.stderr[-2000:]
    resolved = (tmp_path / "run" / "config.toml").read_text()
    assert "self_score_penalty = 1.0" in resolved and 'cold_start_train_history = "after-first"' in resolved
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    export = towerkit.load_export(tmp_path / "run" / "model")
    assert export.query_specs == {"movie_history": {"dtype": "int64", "ragged": True}}
    scores, ids = export.recommend({"movie_history": [[1, 2, 3, 4, 5]]}, k=5)
    assert ids.shape == (1, 5) and np.isfinite(scores).all()


def test_it_trains_under_a_mirrored_strategy_as_without_one(data_dir, tmp_path):
    """Two replicas on two logical CPUs: the penalty's candidate table is captured by each replica's step."""
    import json

    from conftest import run_python

    code = """
import json, tempfile
import towerkit, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from towerkit import config as rc
from towerkit.pipeline import run
out = {}
for strategy in ("default", "mirrored"):
    raw = rc.apply_overrides(rc.load_recipe("cold-start")[0], [f'train.strategy="{strategy}"', "export.enabled=false",
                             'dataset.source="files"', "train.epochs=2", "model.self_score_penalty=1.0"])
    out[strategy] = run(rc.resolve(raw, "t"), tempfile.mkdtemp(), log=lambda m: None, verbose=0).metrics
print(json.dumps({s: m["test"]["model"]["all"] for s, m in out.items()}))
"""
    result = run_python(code, env={"TOWERKIT_DATA": str(data_dir)}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for k in ("top_10", "top_100"):
        assert abs(out["default"][k] - out["mirrored"][k]) <= 0.05, out
