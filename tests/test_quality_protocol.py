"""Baselines as a registry kind, validation carves and the honest protocol (issue 16)."""

import sys

import numpy as np
import pytest
import scipy.sparse as sp

import towerkit
from towerkit import config as recipe_config
from towerkit.baselines import check_specs, fit_baseline
from towerkit.errors import ConfigError, DataError, UnknownComponentError
from towerkit.evaluation import evaluate_all, popularity_topk, topk_from_scores


@pytest.fixture(scope="module")
def tiny():
    return towerkit.load_dataset("synthetic", num_users=40, num_items=25, num_interactions=900, seed=5)


def _dense_train(data):
    """The binary users x items training matrix, built here independently of towerkit.baselines."""
    users = sorted(set(data.interactions["user_id"][data.train_rows].tolist()))
    items = sorted(data.candidate_ids.tolist())  # sorted, as ALS's random start depends on the order
    matrix = np.zeros((len(users), len(items)))
    for row in data.train_rows:
        matrix[users.index(data.interactions["user_id"][row]), items.index(data.interactions["movie_title"][row])] = 1
    candidate_order = [items.index(c) for c in data.candidate_ids.tolist()]
    return users, matrix[:, candidate_order], candidate_order


def test_ease_matches_per_item_ridge_regressions(tiny):
    """EASE's closed form equals, column by column, a ridge regression of each item on all the others."""
    users, matrix, _ = _dense_train(tiny)
    l2 = 7.0
    weights = np.zeros((matrix.shape[1], matrix.shape[1]))
    for item in range(matrix.shape[1]):
        others = [j for j in range(matrix.shape[1]) if j != item]
        inputs = matrix[:, others]
        weights[others, item] = np.linalg.solve(inputs.T @ inputs + l2 * np.eye(len(others)), inputs.T @ matrix[:, item])
    _, scorer = fit_baseline({"name": "ease", "l2": l2}, tiny)
    query = np.array(users[:10] + ["user 999999"])
    scores = scorer(query)
    np.testing.assert_allclose(scores[:10], matrix[:10] @ weights, atol=1e-5)
    # An unseen user gets popularity, not a constant row that would tie every candidate.
    assert np.argmax(scores[10]) == np.argmax(matrix.sum(axis=0)) and np.ptp(scores[10]) > 0


def test_als_matches_implicit_directly(tiny):
    pytest.importorskip("implicit", reason="the als baseline is the optional extra towerkit[baselines]")
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    users, matrix, candidate_order = _dense_train(tiny)
    options = dict(factors=6, regularization=0.1, alpha=2.0, iterations=5)
    in_item_order = np.zeros_like(matrix)
    in_item_order[:, candidate_order] = matrix
    with threadpool_limits(1, "blas"):
        direct = AlternatingLeastSquares(**options, random_state=3, num_threads=1, calculate_training_loss=False)
        direct.fit(sp.csr_matrix(in_item_order.astype(np.float32)), show_progress=False)
    expected = np.asarray(direct.user_factors) @ np.asarray(direct.item_factors).T
    _, scorer = fit_baseline({"name": "als", **options, "seed": 3}, tiny)
    np.testing.assert_allclose(scorer(np.array(users)), expected[:, candidate_order], atol=1e-4)


def test_als_without_implicit_names_the_extra(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "implicit.cpu.als", None)  # what Python does when the module is missing
    with pytest.raises(ConfigError, match=r"towerkit\[baselines\]"):
        fit_baseline("als", tiny)


def test_registry_popularity_equals_the_classic_function(tiny):
    _, scorer = fit_baseline("popularity", tiny)
    queries = tiny.interactions["user_id"][tiny.test_rows]
    via_registry = topk_from_scores(tiny, lambda a, b: scorer(queries[a:b]), [1, 10], True)
    assert via_registry == popularity_topk(tiny, [1, 10], True)


class ReversePopularity:
    """A third-party baseline: the least popular candidates first."""

    def fit(self, data):
        _, popularity = fit_baseline("popularity", data)
        return lambda query_ids: -popularity(query_ids)


class ThirdPartyBaselines:
    @staticmethod
    @towerkit.hookimpl
    def register_baselines(register):
        register("reverse-popularity", ReversePopularity, description="Least popular first.")


def test_plugin_baseline_runs_in_the_same_evaluation(tiny):
    towerkit.plugins.register_plugin(ThirdPartyBaselines, name="third-party-baselines")
    try:
        model = towerkit.assemble(data=tiny)
        results = evaluate_all(model, tiny, [10], True, 512, baselines=["popularity", "reverse-popularity", "ease"])
        assert list(results) == ["model", "popularity", "reverse-popularity", "ease"]
        assert results["reverse-popularity"].all["top_10"] < results["popularity"].all["top_10"]
        check_specs(["reverse-popularity"], "evaluate.baselines")
    finally:
        towerkit.plugins.unregister_plugin("third-party-baselines")


def test_recipe_baselines_are_checked_before_training():
    raw, origin = recipe_config.load_recipe("retrieval")
    raw = recipe_config.apply_overrides(raw, ['evaluate.baselines=["popularity", "eaze"]'])
    with pytest.raises(UnknownComponentError, match="did you mean 'ease'"):
        recipe_config.resolve(raw, origin)
    with pytest.raises(ConfigError, match="has no option 'lambda'"):
        check_specs([{"name": "ease", "lambda": 3}], "evaluate.baselines")
    with pytest.raises(ConfigError, match="positive"):
        fit_baseline({"name": "ease", "l2": -1.0}, None)


# Validation ------------------------------------------------------------------------------------


def test_validation_is_carved_from_train_and_test_does_not_move(small_movielens, tmp_path):
    from conftest import write_grouplens

    directory = tmp_path / "data"
    write_grouplens(directory / "ml-100k")
    plain = towerkit.load_dataset("movielens-100k", data_dir=str(directory), source="files")
    carved = towerkit.load_dataset("movielens-100k", data_dir=str(directory), source="files", validation_fraction=0.1)
    np.testing.assert_array_equal(carved.test_rows, plain.test_rows)
    assert len(carved.validation_rows) == round(0.1 * len(plain.interactions["user_id"]))
    assert set(carved.validation_rows) | set(carved.train_rows) == set(plain.train_rows)
    assert not set(carved.validation_rows) & set(carved.train_rows)
    assert carved.describe()["validation"] == len(carved.validation_rows)
    synthetic = towerkit.load_dataset("synthetic", num_users=40, num_items=25, num_interactions=900, seed=5,
                                      validation_fraction=0.2)
    assert len(synthetic.validation_rows) == 180 and not set(synthetic.validation_rows) & set(synthetic.test_rows)
    with pytest.raises(ConfigError, match="validation_fraction"):
        towerkit.load_dataset("synthetic", num_users=4, num_items=5, num_interactions=90, validation_fraction=0.9)


def test_leave_last_holds_out_each_users_last_interactions(tmp_path):
    from conftest import write_grouplens

    write_grouplens(tmp_path / "ml-100k")
    data = towerkit.load_dataset("movielens-100k", data_dir=str(tmp_path), source="files", split="leave-last",
                                 validation_fraction=0.1)
    users, times = data.interactions["user_id"], data.interactions["timestamp"]
    for user in np.unique(users[data.test_rows])[:15]:
        rows = np.flatnonzero(users == user)
        by_time = rows[np.lexsort((rows, times[rows]))]
        assert data.test_rows[np.searchsorted(data.test_rows, by_time[-1])] == by_time[-1]
        assert by_time[-2] in set(data.validation_rows) and set(by_time[:-2]) <= set(data.train_rows)
    assert len(np.unique(users[data.test_rows])) == len(data.test_rows)


def test_validation_evaluation_ranks_only_validation_rows(tiny):
    data = towerkit.load_dataset("synthetic", num_users=40, num_items=25, num_interactions=900, seed=5,
                                 validation_fraction=0.2)
    _, scorer = fit_baseline("popularity", data)
    queries = data.interactions["user_id"][data.validation_rows]
    result = topk_from_scores(data, lambda a, b: scorer(queries[a:b]), [3], False, split="validation")
    counts = np.array([np.sum(data.interactions["movie_title"][data.train_rows] == c) for c in data.candidate_ids])
    positives = np.array([counts[list(data.candidate_ids).index(c)]
                          for c in data.interactions["movie_title"][data.validation_rows]])
    assert result.all["top_3"] == pytest.approx(np.mean((counts[None, :] > positives[:, None]).sum(axis=1) < 3))
    with pytest.raises(ConfigError, match="no validation rows"):
        topk_from_scores(tiny, lambda a, b: scorer(queries[a:b]), [3], False, split="validation")


def test_early_stopping_keeps_the_best_validation_epoch():
    import tensorflow as tf

    from towerkit.early_stopping import ValidationEarlyStopping

    data = towerkit.load_dataset("synthetic", num_users=60, num_items=30, num_interactions=2000, seed=2,
                                 validation_fraction=0.2)
    tf.keras.utils.set_random_seed(1)
    model = towerkit.assemble(data=data, query={"name": "user", "embedding_dim": 8},
                              candidate={"name": "movie", "embedding_dim": 8})
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.5))
    stopper = ValidationEarlyStopping(data, patience=2, metric="top_5")
    dataset = tf.data.Dataset.from_tensor_slices(data.train_features(model.feature_keys)).batch(256)
    logged = model.fit(dataset, epochs=12, verbose=0, callbacks=[stopper]).history["val_top_5"]
    assert stopper.best_epoch == int(np.argmax(logged)) + 1 and stopper.best_value == max(logged)
    assert len(logged) == 12 or len(logged) - stopper.best_epoch == 2  # stopped only after 2 epochs without gain
    restored = towerkit.evaluate_topk(model, data, [5], split="validation").all["top_5"]
    assert restored == stopper.best_value
    with pytest.raises(ConfigError, match="validation_fraction"):
        ValidationEarlyStopping(towerkit.load_dataset("synthetic", num_users=9, num_items=9, num_interactions=90), 2)


def test_train_job_reports_chosen_baselines_and_the_validation_epoch(tmp_path):
    import tomllib

    from conftest import recipe_text
    from towerkit.pipeline import run

    text = recipe_text(dataset={"validation_fraction": 0.2}, train={"epochs": 4, "batch_size": 512,
                       "early_stopping_patience": 1}, evaluate={"baselines": ["popularity", {"name": "ease", "l2": 50.0}],
                       "every_epoch": False}, export={"enabled": False})
    config = recipe_config.resolve(tomllib.loads(text), "test recipe")
    metrics = run(config, str(tmp_path / "run"), log=lambda message: None, verbose=0).metrics
    assert list(metrics["test"]) == ["model", "popularity", "ease(l2=50.0)"]
    assert 1 <= metrics["validation"]["best_epoch"] <= 4 and 0 <= metrics["validation"]["val_top_100"] <= 1
    assert "ease(l2=50.0)" in (tmp_path / "run" / "report.md").read_text()


# The tutorial's row order ----------------------------------------------------------------------


def test_auto_source_yields_tfds_writer_order_offline(tmp_path, monkeypatch):
    """tfds writes records sorted by an md5 of each parser key salted with the split name; so must we."""
    from conftest import write_grouplens
    from tensorflow_datasets.core import hashing
    from tensorflow_datasets.structured import movielens_parsing

    from towerkit.datasets import fetch

    def no_network(*args, **kwargs):
        raise AssertionError("the tfds order must be prepared without downloading")

    monkeypatch.setattr(fetch, "fetch_movielens_100k", no_network)
    write_grouplens(tmp_path / "ml-100k")
    parsed = list(movielens_parsing.parse_100k_ratings_data(str(tmp_path / "ml-100k")))
    hasher = hashing.Hasher("train")
    expected = [row for _, row in sorted(parsed, key=lambda pair: hasher.hash_key(pair[0]))]
    assert [r["user_id"] for r in expected[:50]] != [r["user_id"] for _, r in parsed[:50]]  # the orders do differ

    data = towerkit.load_dataset("movielens-100k", data_dir=str(tmp_path))
    loaded = list(zip(data.interactions["user_id"].tolist(), data.interactions["movie_id"].tolist(),
                      data.interactions["timestamp"].tolist()))
    assert loaded == [(r["user_id"], r["movie_id"], int(r["timestamp"])) for r in expected]
    assert "tfds order" in data.source and len(data.candidate_ids) == 40
    # Cached in the data dir, and prepared again when the files change.
    assert (tmp_path / "tfds-movielens-100k" / "source.json").is_file()
    with open(tmp_path / "ml-100k" / "u.data", "a", encoding="ascii") as handle:
        handle.write("1\t1\t5\t889999999\n" if (1, 1) not in {(int(r["user_id"]), int(r["movie_id"])) for r in expected}
                     else "2\t40\t5\t889999999\n")
    again = towerkit.load_dataset("movielens-100k", data_dir=str(tmp_path))
    assert len(again.interactions["user_id"]) == len(expected) + 1


# History towers --------------------------------------------------------------------------------


def test_history_column_matches_a_row_by_row_definition():
    from towerkit.datasets.history import history_column

    rng = np.random.default_rng(0)
    num = 600
    users, times, items = rng.integers(0, 12, num).astype(str), rng.integers(0, 40, num), rng.integers(0, 30, num)
    source = np.sort(rng.choice(num, 400, replace=False))
    histories = history_column(users, times, items, source, 4)
    in_source = set(source.tolist())
    for row in range(num):
        earlier = sorted((times[j], j) for j in range(num) if users[j] == users[row] and times[j] < times[row] and j in in_source)
        assert histories[row].tolist() == [items[j] for _, j in earlier][-4:]


@pytest.fixture(scope="module")
def leave_last(tmp_path_factory):
    from conftest import write_grouplens

    directory = tmp_path_factory.mktemp("history")
    write_grouplens(directory / "ml-100k")
    return towerkit.load_dataset("movielens-100k", data_dir=str(directory), source="files", split="leave-last",
                                 validation_fraction=0.1, history_length=8)


def test_no_example_sees_its_own_item_or_a_later_one_in_its_history(leave_last):
    columns = leave_last.interactions
    train = set(leave_last.train_rows.tolist())
    rows_of = {}
    for row in sorted(train):
        rows_of.setdefault((columns["user_id"][row], int(columns["movie_id"][row])), []).append(row)
    for row in range(len(columns["user_id"])):
        history = columns["movie_history"][row].tolist()
        assert int(columns["movie_id"][row]) not in history and len(history) <= 8
        for movie in history:  # each history item is a training interaction of the same user, strictly earlier
            assert any(columns["timestamp"][r] < columns["timestamp"][row] for r in rows_of[(columns["user_id"][row], movie)])
    test_history = columns["movie_history"][leave_last.test_rows[0]]
    assert len(test_history) == 8  # the fixture's users all have far more than 8 earlier ratings


@pytest.mark.parametrize("pooling", ["mean", "attention", "gru"])
def test_history_tower_serves_an_unseen_user_from_their_history(leave_last, pooling, tmp_path):
    import tensorflow as tf

    from towerkit.datasets.base import to_tf_dataset

    tf.keras.utils.set_random_seed(3)
    model = towerkit.assemble(data=leave_last, query={"name": "history", "embedding_dim": 16, "pooling": pooling,
                                                      "max_length": 5},
                              candidate={"name": "movie", "embedding_dim": 16})
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.2))
    model.fit(to_tf_dataset(leave_last.train_features(model.feature_keys)).batch(256), epochs=2, verbose=0)
    assert model.query_tower.feature_keys == ("movie_history",)  # no user id: any user can be served
    histories = tf.ragged.constant([[1, 2, 3], [30, 31], [], [9, 9, 9, 9, 9, 9, 1, 2, 3]], dtype=tf.int64)
    embedded = model.query_tower({"movie_history": histories}).numpy()
    assert np.isfinite(embedded).all() and not np.allclose(embedded[0], embedded[1])
    # Only the last max_length items count.
    np.testing.assert_allclose(embedded[3], model.query_tower(
        {"movie_history": tf.ragged.constant([[9, 9, 1, 2, 3]], dtype=tf.int64)}).numpy()[0], atol=1e-6)
    index = towerkit.create_index("brute-force", query_model=model.query_tower, k=5)
    index.index_from_dataset(tf.data.Dataset.zip((
        tf.data.Dataset.from_tensor_slices(leave_last.candidate_ids).batch(64),
        to_tf_dataset(leave_last.candidate_features).batch(64).map(model.candidate_tower))))
    _, ids = index({"movie_history": histories[:2]})
    assert ids.shape == (2, 5)
    # Rebuilt from its config, it answers the same (the weights copied over).
    rebuilt = type(model.query_tower).from_config(model.query_tower.get_config())
    rebuilt({"movie_history": histories})
    rebuilt.set_weights(model.query_tower.get_weights())
    np.testing.assert_allclose(rebuilt({"movie_history": histories}).numpy(), embedded, atol=1e-6)


def test_registry_cooccurrence_equals_the_classic_function(tmp_path):
    from conftest import write_grouplens

    from towerkit.evaluation import cooccurrence_topk

    write_grouplens(tmp_path / "ml-100k")
    pairs = towerkit.load_dataset("movielens-100k-item2item", data_dir=str(tmp_path), source="files", window=2)
    _, scorer = fit_baseline("cooccurrence", pairs)
    queries = pairs.interactions[pairs.query_id_key][pairs.test_rows]
    via_registry = topk_from_scores(pairs, lambda a, b: scorer(queries[a:b]), [1, 5, 10], True)
    assert via_registry == cooccurrence_topk(pairs, [1, 5, 10], True)


def test_a_history_model_exports_and_serves_a_new_user_from_their_history(data_dir, tmp_path):
    """End to end: train a history tower, export it, and answer a user the model never saw, by history alone."""
    import json

    from conftest import recipe_text, run_cli

    recipe = tmp_path / "history.toml"
    recipe.write_text(recipe_text(
        recipe={"name": "history"}, dataset={"name": "movielens-100k", "split": "leave-last", "history_length": 8},
        query_tower={"name": "history", "embedding_dim": 16, "max_length": 5},
        candidate_tower={"name": "movie", "embedding_dim": 16, "feature": "movie_id"},
        evaluate={"ks": [10], "every_epoch": False, "exclude_train": False},
    ).replace('num_users = 150\nnum_items = 60\nnum_interactions = 4000\n', ""))
    trained = run_cli("train", str(recipe), "-o", str(tmp_path / "run"), "--set", "train.epochs=1")
    assert trained.returncode == 0, trained.stderr[-2000:]
    export = towerkit.load_export(tmp_path / "run" / "model")
    assert export.query_specs == {"movie_history": {"dtype": "int64", "ragged": True}}
    scores, ids = export.recommend({"movie_history": [[1, 2, 3], [7]]}, k=5)
    assert ids.shape == (2, 5) and np.isfinite(scores).all() and list(ids[0]) != list(ids[1])
    _, without = export.recommend({"movie_history": [[1, 2, 3]]}, k=5, exclude=[[ids[0][0].decode()]])
    assert ids[0][0] not in list(without[0])
    cli = run_cli("recommend", "--model", str(tmp_path / "run" / "model"), "--feature", "movie_history=[1,2,3]",
                  "-k", "5", "--json")
    assert cli.returncode == 0, cli.stderr
    assert [row["id"] for row in json.loads(cli.stdout)] == [i.decode() for i in ids[0]]


# Cold-start users ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cold_start_options(tmp_path_factory):
    """Dataset options for a cold-start split of a small GroupLens set."""
    from conftest import write_grouplens

    directory = tmp_path_factory.mktemp("cold-start")
    write_grouplens(directory / "ml-100k")
    return {"data_dir": str(directory), "source": "files", "split": "cold-start", "cold_start_users": 0.2,
            "cold_start_history": 5, "history_length": 8, "split_seed": 3}


@pytest.fixture(scope="module")
def cold_start(cold_start_options):
    """The same cold-start split of a small GroupLens set, without and with validation users."""
    options = cold_start_options
    return (towerkit.load_dataset("movielens-100k", **options),
            towerkit.load_dataset("movielens-100k", validation_fraction=0.2, **options))


def _first_by_time(data, user):
    rows = np.flatnonzero(data.interactions["user_id"] == user)
    return rows[np.lexsort((rows, data.interactions["timestamp"][rows]))]


def test_cold_start_holds_out_whole_users_with_their_first_k_as_history(cold_start):
    plain, carved = cold_start
    users = plain.interactions["user_id"]
    np.testing.assert_array_equal(carved.test_rows, plain.test_rows)  # validation users are drawn after the test users
    test_users, validation_users = set(users[plain.test_rows]), set(users[carved.validation_rows])
    assert len(test_users) == len(validation_users) == 12 and not test_users & validation_users  # 20% of 60
    assert not (test_users | validation_users) & set(users[carved.train_rows])
    assert set(carved.train_rows) <= set(plain.train_rows)
    parts = [plain.train_rows, plain.test_rows, plain.history_rows]
    assert sum(map(len, parts)) == len(users) == len(np.unique(np.concatenate(parts)))
    for user in sorted(test_users):
        ordered = _first_by_time(plain, user)
        assert set(ordered[:5]) <= set(plain.history_rows) and set(ordered[5:]) <= set(plain.test_rows)
        given = plain.interactions["movie_id"][ordered[:5]].astype(np.int64).tolist()
        for row in ordered[5:]:  # every target is served from exactly the given history
            assert plain.interactions["movie_history"][row].tolist() == given
    assert plain.describe()["given_history"] == 5 * len(test_users)


def test_cold_start_can_train_on_histories_shaped_like_its_test(cold_start, cold_start_options):
    plain, options = cold_start[0], cold_start_options
    first = towerkit.load_dataset("movielens-100k", cold_start_train_history="first", **options)
    np.testing.assert_array_equal(first.train_rows, plain.train_rows)
    train = set(first.train_rows.tolist())
    for user in sorted(set(first.interactions["user_id"][first.train_rows]))[:10]:
        ordered = [row for row in _first_by_time(first, user) if row in train]
        given = first.interactions["movie_id"][ordered[:5]].astype(np.int64).tolist()
        for position, row in enumerate(ordered):
            assert first.interactions["movie_history"][row].tolist() == given[:min(position, 5)]
    for row in first.test_rows:  # held-out users are served exactly as before
        assert first.interactions["movie_history"][row].tolist() == plain.interactions["movie_history"][row].tolist()
    with pytest.raises(ConfigError, match="cold_start_train_history"):
        towerkit.load_dataset("movielens-100k", cold_start_train_history="last", **options)


def test_cold_start_can_train_on_exactly_the_test_shape_after_the_first_items(cold_start, cold_start_options):
    plain, options = cold_start[0], cold_start_options
    after = towerkit.load_dataset("movielens-100k", cold_start_train_history="after-first", **options)
    trained = set(after.train_rows.tolist())
    dropped = 0
    for user in sorted(set(plain.interactions["user_id"][plain.train_rows])):
        ordered = [row for row in _first_by_time(plain, user) if row in set(plain.train_rows.tolist())]
        given = plain.interactions["movie_id"][ordered[:5]].astype(np.int64).tolist()
        assert not trained & set(ordered[:5])  # the first five are history, never targets
        dropped += len(ordered[:5])
        for row in ordered[5:]:
            assert row in trained and after.interactions["movie_history"][row].tolist() == given
    assert len(after.train_rows) == len(plain.train_rows) - dropped
    np.testing.assert_array_equal(after.test_rows, plain.test_rows)
    np.testing.assert_array_equal(after.validation_rows, plain.validation_rows)


def test_cold_start_split_breaks_time_ties_by_row_and_checks_its_options():
    from towerkit.datasets.splits import cold_start_split

    rng = np.random.default_rng(1)
    users, times = rng.integers(0, 30, 900).astype(str), rng.integers(0, 5, 900)  # many equal times
    split = cold_start_split(users, times, 0.2, 0.1, 3, seed=0)
    for user in np.unique(users[split.test]):
        rows = np.flatnonzero(users == user)
        ordered = rows[np.lexsort((rows, times[rows]))]
        assert set(ordered[:3]) == set(split.history) & set(rows) and set(ordered[3:]) == set(split.test) & set(rows)
    for bad in [{"users_fraction": 0.0}, {"users_fraction": 0.6, "validation_fraction": 0.4},
                {"history_size": 0}, {"validation_fraction": -0.1}]:
        options = {"users_fraction": 0.2, "validation_fraction": 0.1, "history_size": 3, **bad}
        with pytest.raises(ConfigError, match="cold_start|validation_fraction"):
            cold_start_split(users, times, seed=0, **options)
    with pytest.raises(DataError, match="cold_start_history"):
        cold_start_split(users, times, 0.2, 0.0, 100, seed=0)


def _given_and_train(data):
    """Dense training matrix and each test user's given-history vector, built here, in sorted item order."""
    items = sorted(data.candidate_ids.tolist())
    train_users = sorted(set(data.interactions["user_id"][data.train_rows].tolist()))
    matrix = np.zeros((len(train_users), len(items)))
    for row in data.train_rows:
        matrix[train_users.index(data.interactions["user_id"][row]), items.index(data.interactions["movie_title"][row])] = 1
    test_users = sorted(set(data.interactions["user_id"][data.test_rows].tolist()))
    given = np.zeros((len(test_users), len(items)))
    for row in data.history_rows:
        given[test_users.index(data.interactions["user_id"][row]), items.index(data.interactions["movie_title"][row])] = 1
    order = [items.index(c) for c in data.candidate_ids.tolist()]
    return matrix, np.array(test_users), given, order


def test_ease_scores_a_held_out_user_from_their_given_history(cold_start):
    data = cold_start[0]
    matrix, test_users, given, order = _given_and_train(data)
    l2 = 5.0
    weights = np.zeros((matrix.shape[1], matrix.shape[1]))
    for item in range(matrix.shape[1]):  # EASE = a ridge regression of each item on the others
        others = [j for j in range(matrix.shape[1]) if j != item]
        inputs = matrix[:, others]
        weights[others, item] = np.linalg.solve(inputs.T @ inputs + l2 * np.eye(len(others)), inputs.T @ matrix[:, item])
    _, scorer = fit_baseline({"name": "ease", "l2": l2}, data)
    np.testing.assert_allclose(scorer(test_users), (given @ weights)[:, order], atol=1e-5)


def test_als_folds_a_held_out_user_in_from_their_given_history(cold_start):
    pytest.importorskip("implicit", reason="the als baseline is the optional extra towerkit[baselines]")
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    data = cold_start[0]
    matrix, test_users, given, order = _given_and_train(data)
    factors, regularization, alpha = 6, 0.1, 4.0
    with threadpool_limits(1, "blas"):
        direct = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha, iterations=5,
                                         random_state=3, num_threads=1, calculate_training_loss=False)
        direct.fit(sp.csr_matrix(matrix.astype(np.float32)), show_progress=False)
    items = np.asarray(direct.item_factors, dtype=np.float64)
    expected = []
    for history in given:  # Hu-Koren-Volinsky's user step, confidence alpha on each given item (implicit's convention)
        seen = items[history > 0]
        system = items.T @ items + regularization * np.eye(factors) + (alpha - 1) * seen.T @ seen
        expected.append(np.linalg.solve(system, alpha * seen.sum(axis=0)) @ items.T)
    _, scorer = fit_baseline({"name": "als", "factors": factors, "regularization": regularization, "alpha": alpha,
                              "iterations": 5, "seed": 3}, data)
    np.testing.assert_allclose(scorer(test_users), np.array(expected)[:, order], atol=1e-4)


def test_given_history_counts_as_seen_when_seen_items_are_excluded(cold_start):
    from towerkit.evaluation import ranking_masks

    data = cold_start[0]
    _, excluding = ranking_masks(data, True)
    for position, row in enumerate(data.test_rows[:40].tolist()):
        user = data.interactions["user_id"][row]
        given = set(data.interactions["movie_title"][_first_by_time(data, user)[:5]].tolist())
        assert set(data.candidate_ids[excluding[position]].tolist()) == given
