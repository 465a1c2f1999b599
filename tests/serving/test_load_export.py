"""towerkit.load_export from Python, and `towerkit recommend` for any query tower (--feature, --query-json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import towerkit
from conftest import ROOT, recipe_text, run_cli, train_recipe
from towerkit.serving import QueryError
from towerkit.serving.cli_input import parse_feature_value
from towerkit.serving.queries import FeatureSpec, coerce_column

# A query tower reading two features of different types: the user id (string) and the time (int64).
MULTI_RECIPE = recipe_text(recipe={"name": "multi"}, query_tower={"timestamp": True})
TIME = 880_000_100


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return train_recipe(tmp_path_factory.mktemp("serving-api"), "multi", MULTI_RECIPE) / "model"


@pytest.fixture(scope="module")
def export(export_dir):
    return towerkit.load_export(export_dir)


def _features(users, time=TIME):
    return {"user_id": list(users), "timestamp": [time] * len(users)}


def test_load_export_is_public_with_specs_metadata_and_k(export, export_dir):
    from towerkit.serving.loaded import load_export

    assert towerkit.load_export is load_export
    assert export.query_specs == {"user_id": {"dtype": "string", "ragged": False},
                                  "timestamp": {"dtype": "int64", "ragged": False}}
    assert export.metadata["recipe"] == "multi" and export.name == "multi"
    assert export.k == json.loads((export_dir / "towerkit.json").read_text())["index"]["k"] == 10


def test_recommend_k_takes_a_prefix_of_the_full_answer(export):
    users = ["user 3", "user 4", "user 5"]
    scores, ids = export.recommend(_features(users))
    top_scores, top_ids = export.recommend(_features(users), k=4)
    assert ids.shape == (3, 10) and top_ids.shape == (3, 4)
    np.testing.assert_array_equal(top_ids, ids[:, :4])
    np.testing.assert_allclose(top_scores, scores[:, :4], rtol=1e-5)
    assert all(np.all(np.diff(row) <= 0) for row in scores)


def test_exclude_leaves_out_ids_per_query_and_keeps_the_old_positional_form(export):
    users = ["user 3", "user 4"]
    _, ids = export.recommend(_features(users))
    dropped = [ids[0][0].decode(), ids[0][2].decode()]
    _, kept = export.recommend(_features(users), k=5, exclude=[dropped, []])
    expected = [i for i in ids[0] if i.decode() not in dropped][:5]
    assert list(kept[0]) == expected
    assert list(kept[1]) == list(ids[1][:5])
    _, positional = export.recommend(_features(users), [dropped, []])
    np.testing.assert_array_equal(positional[:, :5], kept)


def test_features_differ_per_query_and_time_matters_to_the_model(export):
    scores_a, _ = export.recommend({"user_id": ["user 3", "user 3"], "timestamp": [TIME, TIME + 10_000_000]})
    assert not np.allclose(scores_a[0], scores_a[1])
    single, _ = export.recommend({"user_id": ["user 3"], "timestamp": [TIME + 10_000_000]})
    np.testing.assert_allclose(single[0], scores_a[1], rtol=1e-5)


BAD_QUERIES = {
    "missing feature": (lambda e: e.recommend({"user_id": ["user 3"]}), "timestamp", "is missing"),
    "misspelt feature": (lambda e: e.recommend({**_features(["u"]), "user_idd": ["u"]}), "user_idd",
                         "did you mean 'user_id'"),
    "int for a string": (lambda e: e.recommend({"user_id": [3], "timestamp": [TIME]}), "user_id",
                         "of query 0 must be a string"),
    "string for an int": (lambda e: e.recommend({"user_id": ["u", "v"], "timestamp": [TIME, "soon"]}),
                          "timestamp", "of query 1 must be an integer"),
    "bare string column": (lambda e: e.recommend({"user_id": "user 3", "timestamp": [TIME]}), "user_id",
                           "one value per query"),
    "uneven columns": (lambda e: e.recommend({"user_id": ["a", "b"], "timestamp": [TIME]}), "user_id",
                       "one value per query"),
    "no queries": (lambda e: e.recommend({"user_id": [], "timestamp": []}), "user_id", "at least one query"),
    "k too large": (lambda e: e.recommend(_features(["u"]), k=11), "k", "from 1 to 10"),
    "k zero": (lambda e: e.recommend(_features(["u"]), k=0), "k", "from 1 to 10"),
    "k bool": (lambda e: e.recommend(_features(["u"]), k=True), "k", "from 1 to 10"),
    "exclude per batch": (lambda e: e.recommend(_features(["u", "v"]), exclude=[["x"]]), "exclude",
                          "1 lists for 2 queries"),
    "exclude a string": (lambda e: e.recommend(_features(["u"]), exclude=["item 1"]), "exclude",
                         "must be a list of candidate ids"),
    "exclude ints": (lambda e: e.recommend(_features(["u"]), exclude=[[1]]), "exclude", "as strings"),
    "exclusions twice": (lambda e: e.recommend(_features(["u"]), [["a"]], exclude=[["a"]]), "exclude", "not both"),
}


@pytest.mark.parametrize("case", list(BAD_QUERIES))
def test_bad_queries_raise_one_error_naming_the_field(export, case):
    call, field, words = BAD_QUERIES[case]
    with pytest.raises(QueryError, match=words) as caught:
        call(export)
    assert caught.value.field == field
    assert isinstance(caught.value, towerkit.TowerkitError) and "\n" not in str(caught.value)


def test_ragged_features_take_a_list_per_query_and_parse_from_the_command_line():
    spec = FeatureSpec.from_name("ragged:int64")
    assert coerce_column("genres", [[1, 4], np.array([2]), []], spec) == [[1, 4], [2], []]
    with pytest.raises(QueryError, match="query 1 must be a list of integers"):
        coerce_column("genres", [[1], 4], spec)
    assert parse_feature_value("genres", "[1,4]", spec) == [1, 4]
    words = FeatureSpec.from_name("ragged:string")
    assert parse_feature_value("tags", "['a', 'b c']", words) == ["a", "b c"]  # TOML's quoting
    assert parse_feature_value("user_id", "[1]", FeatureSpec.from_name("string")) == b"[1]"  # ids as typed
    with pytest.raises(QueryError, match="genres=\\[3,3\\]"):
        parse_feature_value("genres", "[1,", spec)


def _rows(ids, scores, k):
    return [{"rank": n + 1, "id": i.decode(), "score": pytest.approx(float(s), rel=1e-5)}
            for n, (i, s) in enumerate(zip(ids[:k], scores[:k]))]


def test_cli_feature_options_answer_as_python_does(export, export_dir):
    result = run_cli("recommend", "--model", str(export_dir), "--feature", "user_id=user 3",
                     "--feature", f"timestamp={TIME}", "-k", "4", "--json")
    assert result.returncode == 0, result.stderr
    scores, ids = export.recommend(_features(["user 3"]))
    assert json.loads(result.stdout) == _rows(ids[0], scores[0], 4)


def test_cli_query_json_from_stdin_with_per_query_exclusions(export, export_dir):
    queries = [{"user_id": "user 3", "timestamp": TIME}, {"user_id": "user 9", "timestamp": TIME, "exclude": []}]
    scores, ids = export.recommend(_features(["user 3", "user 9"]))
    queries[1]["exclude"] = [ids[1][0].decode()]
    result = subprocess.run([sys.executable, "-m", "towerkit.cli", "recommend", "--model", str(export_dir),
                             "--query-json", "-", "-k", "3", "--json"], input=json.dumps(queries),
                            capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert [entry["query"] for entry in answer] == [0, 1]
    assert answer[0]["results"] == _rows(ids[0], scores[0], 3)
    assert answer[1]["results"] == [dict(row, rank=n + 1) for n, row in enumerate(_rows(ids[1], scores[1], 4)[1:])]


CLI_ERRORS = {
    "--user on two features": (["--user", "user 3"], "pass each feature with --feature"),
    "bad int": (["--feature", "user_id=u", "--feature", "timestamp=soon"], "is not an integer"),
    "misspelt": (["--feature", "user_idd=u", "--feature", f"timestamp={TIME}"], "did you mean 'user_id'"),
    "missing": (["--feature", "user_id=u"], "'timestamp' is missing"),
    "no query": ([], "pass the query with one of --user, --feature"),
    "two ways": (["--user", "u", "--feature", "user_id=u"], "not --user and --feature"),
    "unreadable json": (["--query-json", "/no/such/file.json"], "cannot read --query-json"),
}


@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_cli_query_errors_are_one_line_and_exit_2(export_dir, case):
    args, words = CLI_ERRORS[case]
    result = run_cli("recommend", "--model", str(export_dir), *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("towerkit: error: ") and words in result.stderr


def test_cli_query_json_that_is_not_queries(export_dir, tmp_path):
    broken = tmp_path / "q.json"
    for text, words in (("{nope", "is not valid JSON"), ("[1, 2]", "a JSON object per query"),
                        ('[{"user_id": 3, "timestamp": 1}]', "of query 0 must be a string")):
        broken.write_text(text)
        result = run_cli("recommend", "--model", str(export_dir), "--query-json", str(broken))
        assert result.returncode == 2 and words in result.stderr and result.stderr.count("\n") == 1
