"""movielens-100k and its fetch: tfds feature dicts, the tutorial split, RecBole conversion, zips, checksums."""

import http.server
import threading

import numpy as np
import pytest
import tensorflow as tf

import towerkit
from towerkit.datasets import fetch
from towerkit.datasets.base import seed_split
from towerkit.datasets.movielens import TFDS_GENRES
from towerkit.errors import ConfigError, DataError

from conftest import make_zip, run_python

TFDS_RATING_KEYS = {
    "bucketized_user_age", "movie_genres", "movie_id", "movie_title", "raw_user_age", "timestamp",
    "user_gender", "user_id", "user_occupation_label", "user_occupation_text", "user_rating", "user_zip_code",
}


def test_grouplens_files_yield_tfds_feature_dicts(small_movielens):
    data = small_movielens
    assert set(data.feature_keys) == TFDS_RATING_KEYS
    assert set(data.candidate_feature_keys) == {"movie_id", "movie_title", "movie_genres"}
    example = next(iter(data.train.take(1)))
    assert example["user_id"].dtype == tf.string and example["timestamp"].dtype == tf.int64
    assert example["movie_genres"].dtype == tf.int64
    # u.item is ISO-8859-1; accented titles must decode as such.
    assert any("Misérables" in t for t in data.candidate_ids)
    # Genre names map to tfds' ClassLabel indices (movie 1 is flagged Adventure).
    row = list(data.candidate_ids).index("Film 1 (1951)")
    assert [TFDS_GENRES[g] for g in data.candidate_features["movie_genres"][row]] == ["Adventure"]


def test_split_is_the_tutorials(small_movielens):
    data = small_movielens
    total = len(data.interactions["user_id"])
    assert len(data.train_rows) == int(total * 0.8) and len(data.test_rows) == total - int(total * 0.8)
    assert not set(data.train_rows) & set(data.test_rows)
    # The tutorial's own pipeline over feature dicts gives the same train order.
    tf.random.set_seed(42)
    ratings = tf.data.Dataset.from_tensor_slices({"user_id": data.interactions["user_id"],
                                                   "row": np.arange(total)})
    shuffled = ratings.shuffle(total, seed=42, reshuffle_each_iteration=False)
    tutorial_rows = [int(x["row"]) for x in shuffled.take(int(total * 0.8))]
    assert tutorial_rows == list(data.train_rows)


def test_vocabularies_follow_the_tutorial(small_movielens):
    vocab = small_movielens.vocabularies
    assert list(vocab["user_id"]) == sorted(set(small_movielens.interactions["user_id"]))
    assert list(vocab["movie_title"]) == sorted(set(small_movielens.candidate_ids))


def test_seed_split_rejects_bad_fraction():
    with pytest.raises(ConfigError):
        seed_split(10, train_fraction=1.5)


def test_source_files_without_files_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="towerkit data fetch movielens-100k"):
        towerkit.load_dataset("movielens-100k", data_dir=str(tmp_path), source="files")


def _recbole_files():
    return {
        "ml-100k.inter": (b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t5\t881250949\n"
                          b"2\t1\t3\t881250950\n1\t1\t4\t881250951\n2\t2\t2\t881250952\n1\t1\t1\t881250953\n"),
        "ml-100k.item": ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                         "1\tMis\u00e9rables, Les\t1995\tDrama Musical\n2\tunkonwn\tunkonwn\tunknown\n").encode("utf-8"),
        "ml-100k.user": b"user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n",
    }


def test_recbole_conversion_gives_grouplens_layout(tmp_path):
    files = fetch.recbole_to_grouplens(_recbole_files())
    fetch.install_files(tmp_path / "ml-100k", files)
    data = towerkit.load_dataset("movielens-100k", data_dir=str(tmp_path), source="files")
    assert sorted(data.candidate_ids) == ["Misérables, Les (1995)", "unknown"]
    assert [TFDS_GENRES[g] for g in data.candidate_features["movie_genres"][0]] == ["Drama", "Musical"]
    assert [TFDS_GENRES[g] for g in data.candidate_features["movie_genres"][1]] == ["Unknown"]
    assert sorted(data.interactions["user_id"]) == ["1", "1", "1", "2", "2"]
    assert sorted(data.interactions["user_rating"]) == [1, 2, 3, 4, 5]


def test_recbole_conversion_rejects_wrong_column_count():
    files = _recbole_files()
    files["ml-100k.inter"] += b"3\t4\n"
    with pytest.raises(DataError, match="ml-100k.inter line 7 has 2 columns"):
        fetch.recbole_to_grouplens(files)




def test_zip_slip_paths_are_refused():
    with pytest.raises(DataError, match="unsafe path"):
        fetch.grouplens_files_from_zip(make_zip({"ml-100k/u.data": "x", "../../evil.txt": "x"}))


def test_zip_without_the_files_is_refused():
    with pytest.raises(DataError, match="lacks"):
        fetch.grouplens_files_from_zip(make_zip({"ml-100k/u.data": "x"}))


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b"not the real ml-100k.zip"

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_checksum_mismatch_leaves_nothing_behind(tmp_path, monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(fetch, "GROUPLENS_URL", f"http://127.0.0.1:{server.server_port}/ml-100k.zip")
        with pytest.raises(DataError, match="checksum mismatch"):
            fetch.fetch_movielens_100k(tmp_path, sources=("grouplens",), progress=None)
    finally:
        server.shutdown()
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_midway_keeps_no_partial_directory(tmp_path):
    # A real write failure: the file size limit (RLIMIT_FSIZE) stops the second file, as a full disk would.
    code = f"""
import resource, signal
from pathlib import Path
from towerkit.datasets import fetch
from towerkit.errors import TowerkitError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    fetch.install_files(Path({str(tmp_path / 'ml-100k')!r}), {{"u.data": b"1" * 10, "u.item": b"2" * 9000, "u.user": b"3"}})
except TowerkitError as exc:
    print("refused:", exc)
"""
    result = run_python(code, timeout=120)
    assert "refused:" in result.stdout and "File too large" in result.stdout, result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []


def test_synthetic_is_deterministic_and_validated():
    first = towerkit.load_dataset("synthetic", num_users=30, num_items=20, num_interactions=500, seed=1)
    second = towerkit.load_dataset("synthetic", num_users=30, num_items=20, num_interactions=500, seed=1)
    np.testing.assert_array_equal(first.interactions["movie_title"], second.interactions["movie_title"])
    assert set(first.feature_keys) >= {"user_id", "movie_title", "movie_genres", "timestamp"}
    with pytest.raises(ConfigError, match="num_items must be a positive integer"):
        towerkit.load_dataset("synthetic", num_items=0)
