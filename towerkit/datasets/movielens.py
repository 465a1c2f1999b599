"""MovieLens-100K as the TFRS tutorial uses it, without depending on GroupLens' server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from towerkit.datasets import fetch, grouplens, tfds_prepare
from towerkit.datasets.base import RetrievalDataset, seed_split
from towerkit.datasets.history import first_items_history, given_history_column, rows_after_first
from towerkit.datasets.splits import (
    carve_validation,
    check_cold_start,
    check_split,
    check_validation_fraction,
    cold_start_split,
    leave_last,
)
from towerkit.errors import ConfigError, DataError

# tfds' ClassLabel names for movielens, so that integer labels match tfds exactly.
TFDS_GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "Unknown", "War", "Western", "(no genres listed)",
)
TFDS_OCCUPATIONS = (
    "academic/educator", "artist", "clerical/admin", "customer service", "doctor/health care",
    "entertainment", "executive/managerial", "farmer", "homemaker", "lawyer", "librarian",
    "other/not specified", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "student", "technician/engineer", "tradesman/craftsman", "unemployed",
    "writer",
)
SOURCES = ("auto", "tfds", "files", "fetch")
# How cold-start training rows get their history (see MovieLens100K).
TRAIN_HISTORIES = ("recent", "first", "after-first")


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    genres = np.empty(len(rows), dtype=object)
    genres[:] = [[TFDS_GENRES.index(g) for g in r["movie_genres"]] for r in rows]
    columns = {
        "movie_id": np.array([r["movie_id"] for r in rows], dtype=str),
        "movie_title": np.array([r["movie_title"] for r in rows], dtype=str),
        "movie_genres": genres,
    }
    if rows and "user_rating" in rows[0]:
        columns.update(
            user_id=np.array([r["user_id"] for r in rows], dtype=str),
            user_rating=np.array([float(r["user_rating"]) for r in rows], dtype=np.float32),
            timestamp=np.array([int(r["timestamp"]) for r in rows], dtype=np.int64),
            bucketized_user_age=np.array([r["bucketized_user_age"] for r in rows], dtype=np.float32),
            raw_user_age=np.array([r["raw_user_age"] for r in rows], dtype=np.float32),
            user_gender=np.array([r["user_gender"] for r in rows], dtype=bool),
            user_occupation_label=np.array(
                [TFDS_OCCUPATIONS.index(r["user_occupation_label"]) for r in rows], dtype=np.int64
            ),
            user_occupation_text=np.array([r["user_occupation_text"] for r in rows], dtype=str),
            user_zip_code=np.array([r["user_zip_code"] for r in rows], dtype=str),
        )
    return columns


def check_grouplens_layout(directory: Path) -> str:
    """Checks every line and field of u.user, u.item and u.data, naming the first bad file and line.

    tfds' parsers accept short rows, duplicate ids and out-of-range values
    silently; this catches damaged or foreign files before they become wrong
    data (see :mod:`towerkit.datasets.grouplens`).

    Returns:
        The encoding ``u.item`` is read in.
    """
    return grouplens.check_directory(directory)


def _utf8_titles(rows: list[dict[str, Any]]) -> None:
    """Re-decodes titles that tfds read as ISO-8859-1 from a UTF-8 u.item.

    ISO-8859-1 maps each byte to one character, so encoding a title back gives
    its original bytes; '|' never occurs inside a UTF-8 sequence, so each title
    is whole UTF-8 by itself.
    """
    fixed: dict[str, str] = {}
    for row in rows:
        title = row["movie_title"]
        if title not in fixed:
            fixed[title] = title.encode("iso-8859-1").decode("utf-8")
        row["movie_title"] = fixed[title]


def parse_grouplens(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Checks u.data, u.item and u.user, then parses them with tfds' own MovieLens parsers.

    Raises:
        DataError: A file is unreadable or damaged; the message names the file and line.
    """
    import tensorflow as tf
    from tensorflow_datasets.structured import movielens_parsing

    encoding = check_grouplens_layout(directory)
    try:
        ratings = [row for _, row in movielens_parsing.parse_100k_ratings_data(str(directory))]
        movies = [row for _, row in movielens_parsing.parse_100k_movies_data(str(directory))]
    except (OSError, tf.errors.OpError, ValueError, KeyError, IndexError) as exc:
        # The files changed between the check and the parse (or tfds changed).
        raise DataError(
            f"the MovieLens files in {directory} are malformed ({type(exc).__name__}: {exc}); "
            f"delete the directory and run `towerkit data fetch movielens-100k`."
        ) from exc
    if not ratings or not movies:
        raise DataError(f"the MovieLens files in {directory} are empty; delete them and fetch again.")
    if encoding == "utf-8":
        _utf8_titles(ratings)
        _utf8_titles(movies)
    return _columns(ratings), _columns(movies)


def load_tfds(data_dir: str | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """Reads tfds' prepared movielens/100k-*, or returns None when it is not prepared.

    It never downloads: a missing tfds copy falls through to the next source.
    """
    root = Path(data_dir or os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")
    try:
        prepared = all((root / "movielens" / name).is_dir() for name in ("100k-ratings", "100k-movies"))
    except OSError:  # e.g. an unreadable home directory: tfds has nothing here for us
        return None
    if not prepared:
        return None  # not prepared; importing tfds just to learn that costs seconds and logs warnings
    import tensorflow_datasets as tfds

    tables = []
    for name in ("movielens/100k-ratings", "movielens/100k-movies"):
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception:  # noqa: BLE001 - any tfds failure means "not available"
            return None
        if not builder.is_prepared():
            return None
        # One ragged batch of every record, in the written order: seconds, where row by row takes a minute.
        dataset = builder.as_dataset(split="train", shuffle_files=False)
        tables.append(_tfds_columns(dataset.ragged_batch(builder.info.splits["train"].num_examples).get_single_element()))
    return tables[0], tables[1]


def _tfds_columns(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    for key, tensor in batch.items():
        if key == "movie_genres":
            column = np.empty(int(tensor.nrows()), dtype=object)
            column[:] = tensor.to_list()
        elif tensor.dtype.name == "string":
            column = np.array([v.decode("utf-8") for v in tensor.numpy().tolist()], dtype=str)
        else:
            column = tensor.numpy()
        columns[key] = column
    return columns


class MovieLens100K(RetrievalDataset):
    """MovieLens-100K ratings as implicit feedback, split 80/20 as the TFRS tutorial does.

    Interactions carry the same feature keys as tfds ``movielens/100k-ratings``;
    candidates are the 1,682 movies of ``movielens/100k-movies``.

    Args:
        data_dir: towerkit's data dir; defaults to ``$TOWERKIT_DATA`` or the user cache.
        source: ``"auto"`` tries tfds' prepared data, then the GroupLens files in
            ``data_dir/ml-100k`` (fetched if missing) prepared by tfds' own
            ``movielens`` builder, offline, so that rows come in tfds' order (the
            tutorial's: the first record is user 138, movie 357; cached in
            ``data_dir``). ``"tfds"`` uses only tfds' prepared data; ``"files"``
            and ``"fetch"`` use the GroupLens files in u.data's order.
        tfds_data_dir: Where tfds keeps prepared data (tfds' default if None).
        split_seed: The seed of the tutorial's shuffle.
        train_fraction: Share of interactions used for training (``split="random"``).
        validation_fraction: Share of all interactions carved from train (never
            from test) as ``validation_rows``, for early stopping and tuning; the
            test rows do not change. With ``split="leave-last"``, any value above
            0 makes each user's second-to-last interaction validation instead;
            with ``split="cold-start"`` it is a share of the users, held out
            like the test users.
        split: ``"random"`` (the tutorial's shuffle), ``"leave-last"`` (each
            user's last interaction by time is test) or ``"cold-start"``
            (``cold_start_users`` of the users, drawn with ``split_seed``, are
            held out entirely: their first ``cold_start_history``
            interactions by time are ``history_rows``, the rest are test).
        history_length: Above 0, adds ``movie_history``: for each interaction,
            the movie ids (ints) its user rated strictly before it, in training
            rows only, the last ``history_length`` of them (for the ``history`` tower).
            A held-out cold-start user's rows get its given history instead.
        cold_start_users: With ``split="cold-start"``, the share of users held out for test.
        cold_start_history: With ``split="cold-start"``, how many first interactions
            each held-out user is given as history (k).
        cold_start_train_history: With ``split="cold-start"`` and a history,
            ``"recent"`` gives training rows their latest earlier items (as in
            the other splits); ``"first"`` gives them their user's first
            ``cold_start_history`` items, the shape of the held-out users' test
            (train as you will serve), and a row among those first items the
            ones before it; ``"after-first"`` is ``"first"`` without training
            on the rows among the first items (they stay the others' history,
            but are not in ``train_rows``): exactly the test's shape.

    Attributes:
        validation_rows: The validation rows (empty without a validation share).
        history_rows: With ``split="cold-start"``, the held-out users' given
            history: neither trained on nor ranked, but their items are those
            users' seen items, and baselines score those users from them.

    Example:
        >>> data = towerkit.load_dataset("movielens-100k")
        >>> len(data.train_rows), len(data.test_rows)
        (80000, 20000)
    """

    name = "movielens-100k"

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        source: str = "auto",
        tfds_data_dir: str | None = None,
        split_seed: int = 42,
        train_fraction: float = 0.8,
        validation_fraction: float = 0.0,
        split: str = "random",
        history_length: int = 0,
        cold_start_users: float = 0.1,
        cold_start_history: int = 5,
        cold_start_train_history: str = "recent",
    ):
        if source not in SOURCES:
            raise ConfigError(f"source must be one of {', '.join(SOURCES)}, got {source!r}.")
        check_split(split)
        if split == "cold-start":
            check_cold_start(cold_start_users, validation_fraction, cold_start_history)
        else:
            check_validation_fraction(validation_fraction, train_fraction)
        interactions, candidates = self._load(data_dir, source, tfds_data_dir)
        users, times = interactions["user_id"], interactions["timestamp"]
        history_rows = np.zeros(0, dtype=np.int64)
        if split == "leave-last":
            train_rows, test_rows, validation_rows = leave_last(users, times, validation_fraction > 0)
        elif split == "cold-start":
            held_out = cold_start_split(users, times, cold_start_users, validation_fraction, cold_start_history,
                                        split_seed)
            train_rows, test_rows, validation_rows, history_rows = (
                held_out.train, held_out.test, held_out.validation, held_out.history)
        else:
            train_rows, test_rows = seed_split(len(users), train_fraction, split_seed)
            train_rows, validation_rows = carve_validation(train_rows, len(users), validation_fraction)
        if cold_start_train_history not in TRAIN_HISTORIES:
            raise ConfigError(f"cold_start_train_history must be one of {', '.join(TRAIN_HISTORIES)}, got "
                              f"{cold_start_train_history!r}; set it to one of those (with split='cold-start').")
        if history_length:
            movies = interactions["movie_id"].astype(np.int64)
            interactions["movie_history"] = given_history_column(users, times, movies, train_rows, history_rows,
                                                                 history_length)
            if split == "cold-start" and cold_start_train_history in ("first", "after-first"):
                interactions["movie_history"] = first_items_history(
                    users, times, movies, train_rows, cold_start_history, interactions["movie_history"])
            if split == "cold-start" and cold_start_train_history == "after-first":
                train_rows = rows_after_first(users, times, train_rows, cold_start_history)
        super().__init__(interactions, candidates, train_rows, test_rows)
        self.validation_rows = validation_rows
        self.history_rows = history_rows
        self.history_length = history_length
        self.split = split
        self.source = self._source

    def validation_features(self, keys=None) -> dict[str, np.ndarray]:
        """The validation rows (carved from train) as column arrays."""
        keys = list(self.interactions) if keys is None else list(dict.fromkeys(keys))
        self.check_features(keys, "the request")
        return {k: self.column(k, self.validation_rows) for k in keys}

    def current_query_features(self, keys) -> dict[str, dict[str, Any]]:
        """Each training user's query features as of the end of training, for serving by user id alone.

        Only ``movie_history`` changes with time: a user's is the last
        ``history_length`` movies it rated in the training rows, oldest first
        (what a history-reading tower would see for a new interaction now).

        Returns:
            Feature -> user id -> value, for the features of ``keys`` that have one.
        """
        if "movie_history" not in keys or not self.history_length:
            return {}
        rows = self.train_rows
        users = self.column("user_id", rows)
        order = np.lexsort((rows, self.column("timestamp", rows), users))
        users, movies = users[order], self.column("movie_id", rows)[order].astype(np.int64)
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        stops = np.r_[starts[1:], len(users)]
        histories = {str(users[start]): movies[max(start, stop - self.history_length):stop].tolist()
                     for start, stop in zip(starts.tolist(), stops.tolist())}
        return {"movie_history": histories}

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["interactions"] = int(len(self.interactions["user_id"]))
        info["validation"] = int(len(self.validation_rows))
        info["split"] = self.split
        if len(self.history_rows):
            info["given_history"] = int(len(self.history_rows))
        return info

    def _load(self, data_dir, source, tfds_data_dir):
        if source in ("auto", "tfds"):
            tables = load_tfds(tfds_data_dir)
            if tables is not None:
                self._source = "tfds"
                return tables
            if source == "tfds":
                raise DataError(
                    "tfds has no prepared movielens/100k-ratings; prepare it with tfds, or use "
                    "source='auto'."
                )
        directory = fetch.movielens_dir(data_dir)
        if source == "auto":
            if not fetch.has_grouplens_files(directory):
                directory = fetch.fetch_movielens_100k(data_dir)
            return self._load_in_tfds_order(directory, data_dir)
        if not fetch.has_grouplens_files(directory):
            if source == "files":
                raise DataError(
                    f"no GroupLens files (u.data, u.item, u.user) in {directory}; run "
                    "`towerkit data fetch movielens-100k` or use source='auto'."
                )
            directory = fetch.fetch_movielens_100k(data_dir)
        self._source = f"files:{directory}"
        return parse_grouplens(directory)

    def _load_in_tfds_order(self, directory: Path, data_dir) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The GroupLens files as tfds' movielens builder writes them (see towerkit.datasets.tfds_prepare)."""
        encoding = check_grouplens_layout(directory)
        prepared = tfds_prepare.prepared_dir(Path(data_dir or fetch.default_data_dir()), directory, encoding)
        tables = load_tfds(str(prepared))
        if tables is None:
            raise DataError(f"the tfds data prepared in {prepared} is unreadable; delete that directory and load again.")
        if encoding == "utf-8":  # tfds read the titles as ISO-8859-1 (see _utf8_titles)
            for table in tables:
                table["movie_title"] = np.array([t.encode("iso-8859-1").decode("utf-8") for t in table["movie_title"].tolist()], dtype=str)
        self._source = f"files:{directory} (tfds order)"
        return tables
