"""Serving a query tower that reads more than the id: a known user is answered from its id alone.

The shipped `retrieval` recipe's user tower reads the user id and the user's
latest movies (`movie_history`). Its export stores each training user's
history as of the end of training, so `recommend --user 42` keeps working.
"""

import json
import shutil

import numpy as np
import pytest

import towerkit
from conftest import run_cli, write_grouplens


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("known")
    write_grouplens(folder / "data" / "ml-100k")
    run = folder / "run"
    result = run_cli("train", "retrieval", "-o", str(run), "--set", f'dataset.data_dir="{folder / "data"}"',
                     "--set", 'dataset.source="files"', "--set", "train.epochs=1", "--set", "train.batch_size=256",
                     "--set", "evaluate.every_epoch=false", "--set", 'export.example_query="1"')
    assert result.returncode == 0, result.stderr
    data = towerkit.load_dataset("movielens-100k", data_dir=str(folder / "data"), source="files", history_length=10)
    return run / "model", data


def _latest_movies(data, user, count=10):
    users, movies, times = (data.interactions[k] for k in ("user_id", "movie_id", "timestamp"))
    rows = sorted((row for row in data.train_rows.tolist() if str(users[row]) == user), key=lambda r: (times[r], r))
    return [int(movies[row]) for row in rows[-count:]]


def _ids(result):
    assert result.returncode == 0, result.stderr
    return [row["id"] for row in json.loads(result.stdout)]


def test_a_known_user_is_served_with_its_latest_training_history(trained):
    model, data = trained
    user = str(data.interactions["user_id"][data.train_rows[0]])
    history = _latest_movies(data, user)
    by_id = _ids(run_cli("recommend", "--model", str(model), "--user", user, "--json"))
    explicit = _ids(run_cli("recommend", "--model", str(model), "--feature", f"user_id={user}",
                            "--feature", f"movie_history={json.dumps(history)}", "--json"))
    assert by_id == explicit
    export = towerkit.load_export(model)
    _, filled = export.recommend({"user_id": [user]})
    _, given = export.recommend({"user_id": [user], "movie_history": [history]})
    np.testing.assert_array_equal(filled, given)


def test_a_given_history_is_never_replaced(trained):
    model, data = trained
    user = str(data.interactions["user_id"][data.train_rows[0]])
    export = towerkit.load_export(model)
    scores_known, _ = export.recommend({"user_id": [user]})
    scores_empty, _ = export.recommend({"user_id": [user], "movie_history": [[]]})
    assert not np.allclose(scores_known, scores_empty)


def test_an_unknown_user_gets_an_empty_history_and_a_warning(trained):
    model, _ = trained
    result = run_cli("recommend", "--model", str(model), "--user", "no-such-user", "--json")
    assert result.returncode == 0, result.stderr
    assert "unknown to this model" in result.stderr
    assert len(json.loads(result.stdout)) == 10


def test_a_damaged_known_features_file_is_one_clear_error(trained, tmp_path):
    model, data = trained
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    (copy / "query_features.json").write_text('{"id_feature": "user_id", "features": [1, 2]}')
    result = run_cli("recommend", "--model", str(copy), "--user", str(data.interactions["user_id"][0]))
    assert result.returncode == 2
    assert "query_features.json is damaged" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_over_http_a_known_user_is_answered_from_its_id(trained):
    from test_http import Server, call

    model, data = trained
    user = str(data.interactions["user_id"][data.train_rows[0]])
    _, expected = towerkit.load_export(model).recommend({"user_id": [user]})
    server = Server(model)
    try:
        status, body = call(f"{server.base}/retrieval:predict", {"instances": [{"user_id": user}]})
        # TF Serving's bare-value shorthand feeds the id the export fills the history from.
        bare_status, bare = call(f"{server.base}/retrieval:predict", {"instances": [user]})
        columnar_status, columnar = call(f"{server.base}/retrieval:predict", {"inputs": [user, user]})
    finally:
        assert server.stop() == 0
    assert status == 200, body
    assert body["predictions"][0]["ids"] == [i.decode() for i in expected[0]]
    assert bare_status == 200 and bare["predictions"] == body["predictions"]
    assert columnar_status == 200 and columnar["outputs"]["ids"] == [body["predictions"][0]["ids"]] * 2
