"""Your own interaction logs as a dataset: CSV/TSV/Parquet/JSON Lines files, split three ways.

A recipe names the file and its columns::

    [dataset]
    name = "interactions"
    path = "data/events.parquet"   # a file, a directory of shards, or a glob
    query_id = "user"
    candidate_id = "item"
    timestamp = "ts"               # optional
    candidates = "data/items.csv"  # optional: one row per candidate, with feature columns
    queries = "data/users.csv"     # optional: one row per query id, with feature columns
    split = "random"               # random | temporal | leave-last
    test_fraction = 0.2
    validation_fraction = 0.0
    seed = 42

Columns are held as NumPy arrays (no Python object per row). Ids are strings
from the moment they are read: an integer id ``42`` becomes ``"42"``
(``str(value)``), and text ids keep their exact text (``"007"`` stays
``"007"``), so exports and ``towerkit recommend`` answer with the ids as the
file has them. They are held as int32 codes into their sorted distinct values
(:class:`~towerkit.datasets.base.CodedColumns`), as are the columns joined from
the ``candidates`` and ``queries`` tables: ``interactions[key]`` spells a
column out when it is read.
"""

from __future__ import annotations

import os
from collections import ChainMap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from towerkit.datasets import tabular
from towerkit.datasets.base import CodedColumns, Features, RetrievalDataset, coded_batches, seed_split, take_rows
from towerkit.errors import ConfigError, DataError

SPLITS = ("random", "temporal", "leave-last")
SHUFFLES = ("auto", "tutorial", "numpy")
# Up to this many rows "auto" shuffles as the TFRS tutorial does (tf.data with a
# full buffer, about 1 s per million rows); above it, a seeded NumPy permutation.
TUTORIAL_SHUFFLE_MAX_ROWS = 1_000_000
DEFAULT_TEST_FRACTION = 0.2


class ColumnValues(ChainMap):
    """The values towers adapt to, plus which column belongs to which side.

    A mapping of column arrays (as every dataset's ``adapt_features``
    returns) that also names the id, timestamp and per-side feature columns,
    so a generic tower can infer its columns and encoders from it. It is a
    view: a coded interaction column is materialised only when a tower reads
    it, one column at a time (assigning a key sets it in the view only).
    """

    query_id_key: str = ""
    candidate_id_key: str = ""
    timestamp_key: str | None = None
    # Feature columns read from date or time types (as seconds since the epoch).
    time_columns: tuple[str, ...] = ()
    query_feature_columns: tuple[str, ...] = ()
    candidate_feature_columns: tuple[str, ...] = ()
    interaction_feature_columns: tuple[str, ...] = ()


class InteractionsDataset(RetrievalDataset):
    """Interactions (query id, candidate id, optional time and features) read from files.

    Args:
        path: The interactions file, directory of shards, or glob (.csv/.tsv/.parquet/.jsonl, optionally .gz).
        query_id: The column naming the query (e.g. the user).
        candidate_id: The column naming the candidate (e.g. the item).
        timestamp: The time column (epoch seconds or ISO 8601); needed by temporal and leave-last.
        candidates: Optional table with one row per candidate id and its feature columns.
            It is the candidate set, so it must hold every candidate id of the
            interactions. Without it, the candidate set is the distinct
            interaction candidate ids.
        queries: Optional table with one row per query id and its feature columns.
        split: How rows are split: random, temporal or leave-last.
            ``"random"`` is the TFRS tutorial's seeded shuffle (with the same
            row order and seed, exactly ``movielens-100k``'s rows);
            ``"temporal"`` makes the last ``test_fraction`` of the time span
            test; ``"leave-last"`` makes each query's last ``leave_last``
            interactions by time test, for queries with more than that.
        test_fraction: Share held out for test (0.2 if not given); not used by leave-last.
            A share of rows (random) or of the time span (temporal).
        validation_fraction: Share carved from train (never from test) for validation_rows.
            A share of all rows (random) or of the time span just before the
            test period (temporal).
        seed: Seeds the random split.
        leave_last: Interactions per query held out by ``leave-last``.
        text_columns: Columns read as text however they look (e.g. zip codes "02139").
            Ids are always read as text.
        shuffle: The random split's shuffle: auto, tutorial or numpy.
            ``"tutorial"`` shuffles exactly as the TFRS tutorial (tf.data, the
            same rows as ``movielens-100k``; about 1 s per million rows),
            ``"numpy"`` uses a seeded NumPy permutation (fast, other rows),
            ``"auto"`` the first up to 1M rows, else the second.
        stream: Train from Parquet shards without loading them whole (see
            towerkit.datasets.streaming: the split is then decided row by row).

    Example:
        >>> data = towerkit.load_dataset("interactions", path="events.csv",
        ...                              query_id="user", candidate_id="item")
    """

    name = "interactions"

    def __new__(cls, *args: Any, stream: bool = False, **options: Any) -> "InteractionsDataset":
        # stream = true reads Parquet shards batch by batch (towerkit.datasets.streaming).
        if stream is True and cls is InteractionsDataset:
            from towerkit.datasets.streaming import StreamedInteractions

            return super().__new__(StreamedInteractions)
        return super().__new__(cls)

    def __init__(
        self,
        path: str | os.PathLike,
        query_id: str,
        candidate_id: str,
        timestamp: str | None = None,
        candidates: str | os.PathLike | None = None,
        queries: str | os.PathLike | None = None,
        split: str = "random",
        test_fraction: float | None = None,
        validation_fraction: float = 0.0,
        seed: int = 42,
        leave_last: int = 1,
        text_columns: Sequence[str] = (),
        shuffle: str = "auto",
        stream: bool = False,
    ):
        if not isinstance(stream, bool):
            raise ConfigError(f"stream must be true or false, got {stream!r}.")
        if stream:
            raise ConfigError(f"stream = true is offered by the interactions dataset itself, not by "
                              f"{type(self).__name__}; use name = \"interactions\".")
        self._build(path, query_id, candidate_id, timestamp, candidates, queries, split, test_fraction,
                    validation_fraction, seed, leave_last, text_columns, shuffle)

    @classmethod
    def from_arrow(cls, table: Any, query_id: str, candidate_id: str, **options: Any) -> "InteractionsDataset":
        """Builds the dataset from an in-memory ``pyarrow.Table`` (candidates/queries may be tables too).

        Args:
            table: The interactions.
            query_id: The query id column.
            candidate_id: The candidate id column.
            **options: As for the constructor (``timestamp``, ``candidates``, ``split`` ...).
        """
        dataset = cls.__new__(cls)
        dataset._build(table, query_id, candidate_id, **options)
        return dataset

    @classmethod
    def from_pandas(cls, frame: Any, query_id: str, candidate_id: str, **options: Any) -> "InteractionsDataset":
        """Builds the dataset from a pandas DataFrame (candidates/queries may be DataFrames too).

        pandas itself is needed only by the caller; the frame is converted with pyarrow.
        """
        return cls.from_arrow(tabular.from_any_table(frame, "the DataFrame"), query_id, candidate_id, **options)

    # Loading ---------------------------------------------------------------------------------
    def _build(self, source, query_id, candidate_id, timestamp=None, candidates=None, queries=None,
               split="random", test_fraction=None, validation_fraction=0.0, seed=42, leave_last=1,
               text_columns=(), shuffle="auto", parts=None):
        split_options = check_split_options(query_id, candidate_id, timestamp, split, test_fraction,
                                       validation_fraction, seed, leave_last)
        if shuffle not in SHUFFLES:
            raise ConfigError(f"shuffle must be one of {', '.join(SHUFFLES)}, got {shuffle!r}.")
        split_options["shuffle"] = shuffle
        if not isinstance(text_columns, (list, tuple)) or not all(isinstance(c, str) for c in text_columns):
            raise ConfigError(f"text_columns must be a list of column names, got {text_columns!r}.")
        self.query_id_key, self.candidate_id_key, self.timestamp_key = query_id, candidate_id, timestamp
        self.time_columns: tuple[str, ...] = (timestamp,) if timestamp else ()
        self.split, self.seed = split, seed
        table, shards, where = _load_table(source, [query_id, candidate_id, *text_columns], "path")
        id_columns = {"query_id": query_id, "candidate_id": candidate_id}
        tabular.require_columns(table, {**id_columns, **({"timestamp": timestamp} if timestamp else {})}, where)
        if table.num_rows == 0:
            raise DataError(f"{where} has no rows; expected at least one interaction per line after the header.")
        self.sources = [str(path) for path, _ in shards]
        # Ids stay codes into their sorted distinct values (see CodedColumns): 4 bytes a row.
        query_ids, query_codes = tabular.id_column(table.column(query_id), query_id, shards, sort=True)
        candidate_ids, candidate_codes = tabular.id_column(table.column(candidate_id), candidate_id, shards, sort=True)
        columns: Features = {}
        if timestamp:
            columns[timestamp] = tabular.timestamp_column(table.column(timestamp), timestamp, shards)
        own = [c for c in table.column_names if c not in (query_id, candidate_id, timestamp)]
        columns.update(self._feature_columns(table, own, shards, text_columns))
        self.interaction_feature_columns = tuple(own)
        # The Arrow table goes before anything else is built: that keeps the peak memory low.
        del table
        pa.default_memory_pool().release_unused()
        coded = {query_id: (query_ids, query_codes), candidate_id: (candidate_ids, candidate_codes)}
        candidate_features, self.candidate_feature_columns = self._side_table(
            candidates, "candidates", candidate_id, candidate_ids, candidate_codes, coded, text_columns)
        self.query_features, self.query_feature_columns = self._side_table(
            queries, "queries", query_id, query_ids, query_codes, coded, text_columns)
        if parts is None:
            train_rows, test_rows, self.validation_rows = _split_rows(
                split, len(query_codes), split_options, query_codes, columns.get(timestamp) if timestamp else None)
        else:  # decided row by row already (stream = true): 0 train, 1 test, 2 validation
            train_rows, test_rows, self.validation_rows = (np.flatnonzero(parts == part) for part in (0, 1, 2))
        super().__init__(CodedColumns(coded, columns), candidate_features, train_rows, test_rows)

    def _side_table(self, source, option, id_key, distinct_ids, codes, coded, text_columns):
        """Reads a candidates/queries table, checks its ids and joins its columns onto the interactions.

        The joined columns are coded too: each interaction's row in the table (``coded`` gains them).
        """
        if source is None:
            # The distinct ids, sorted: what np.unique of the column gives.
            return {id_key: distinct_ids}, ()
        table, shards, where = _load_table(source, [id_key, *text_columns], option)
        tabular.require_columns(table, {_id_option(option): id_key}, where)
        if table.num_rows == 0:
            raise DataError(f"{where} has no rows; expected one row per {option[:-1]} id.")
        ids, id_codes = tabular.id_column(table.column(id_key), id_key, shards)
        column = ids[id_codes]
        _check_unique_ids(column, id_codes, option, where, shards)
        rows_of_distinct = _rows_of(distinct_ids, column)
        if (rows_of_distinct < 0).any():
            missing = distinct_ids[rows_of_distinct < 0]
            raise DataError(
                f"{where} lacks {len(missing)} {id_key} value(s) that occur in the interactions (e.g. "
                f"{', '.join(repr(str(m)) for m in missing[:3])}); give every {option[:-1]} a row there.")
        names = [c for c in table.column_names if c != id_key]
        clashes = [c for c in names if c in coded or c in self.interaction_feature_columns
                   or c == self.timestamp_key or c in (self.query_id_key, self.candidate_id_key)]
        if clashes:
            raise DataError(f"column(s) {', '.join(map(repr, clashes))} of {where} also exist elsewhere in the "
                            "data; rename them so that each feature column has one source.")
        features = {id_key: column, **self._feature_columns(table, names, shards, text_columns)}
        rows = rows_of_distinct.astype(np.int32 if len(column) < 2**31 else np.int64)[codes]
        for name in names:
            coded[name] = (features[name], rows)
        return features, tuple(names)

    def _feature_columns(self, table: pa.Table, names: Sequence[str], shards, text_columns: Sequence[str]) -> Features:
        """Feature columns as arrays; notes which came from date/time types."""
        columns = {}
        for name in names:
            kind = table.schema.field(name).type
            if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
                self.time_columns += (name,)
            columns[name] = tabular.feature_column(table.column(name), name, shards, allow_mixed=name in text_columns)
        return columns

    # Views ------------------------------------------------------------------------------------
    def validation_features(self, keys: Sequence[str] | None = None) -> Features:
        """The validation rows (carved from train) as column arrays."""
        columns = self._columns(keys)
        return {k: take_rows(columns, k, self.validation_rows) for k in columns}

    def train_stream(self, keys: Sequence[str], batch_size: int, *, shuffle_buffer: int, seed: int,
                     input_context: Any = None) -> Any:
        """One epoch of training batches, gathered inside tf.data from the id codes.

        The same batches, in the same order, as the generic pipeline's
        ``to_tf_dataset(train_features(keys)).shuffle(shuffle_buffer, seed).batch(batch_size).cache()``,
        but no text column of every training row is built.

        Args:
            keys: The features the towers read.
            batch_size: Rows per batch (the last may be smaller).
            shuffle_buffer: Rows the shuffle mixes at once.
            seed: The shuffle's seed.
            input_context: A ``tf.distribute.InputContext``: this pipeline keeps every n-th batch.
        """
        columns = self._columns(keys)
        if not isinstance(columns, CodedColumns):
            columns = CodedColumns({}, columns)
        return coded_batches(columns, self.train_rows, batch_size, shuffle_buffer, seed, input_context)

    @property
    def vocabularies(self) -> dict[str, np.ndarray]:
        # A coded id's table is its sorted distinct values already (np.unique of the column).
        return {self.query_id_key: self._id_table(self.query_id_key),
                self.candidate_id_key: np.unique(self.candidate_ids)}

    def _id_table(self, key: str) -> np.ndarray:
        """The sorted distinct values of an id column."""
        if isinstance(self.interactions, CodedColumns) and key in self.interactions.coded:
            return self.interactions.coded[key][0]
        return np.unique(self.interactions[key])

    def _row_keys(self, key: str) -> np.ndarray:
        """A column as something equal where its values are equal: its codes where it is coded."""
        if isinstance(self.interactions, CodedColumns) and key in self.interactions.coded:
            return self.interactions.coded[key][1]
        return self.interactions[key]

    def candidate_train_frequencies(self) -> dict[str, float]:
        """Each candidate id's share of the training interactions, counted on codes (in id order)."""
        if not (isinstance(self.interactions, CodedColumns) and self.candidate_id_key in self.interactions.coded):
            return super().candidate_train_frequencies()
        table, codes = self.interactions.coded[self.candidate_id_key]
        counts = np.bincount(codes[self.train_rows], minlength=len(table))
        total = counts.sum()
        seen = np.flatnonzero(counts)  # the table is sorted: the same order as np.unique of the ids
        return {str(table[i]): c / total for i, c in zip(seen.tolist(), counts[seen].tolist())}

    def adapt_features(self) -> ColumnValues:
        values = ColumnValues(super().adapt_features())
        values.query_id_key, values.candidate_id_key = self.query_id_key, self.candidate_id_key
        values.timestamp_key, values.time_columns = self.timestamp_key, self.time_columns
        values.query_feature_columns = self.query_feature_columns
        values.candidate_feature_columns = self.candidate_feature_columns
        values.interaction_feature_columns = self.interaction_feature_columns
        return values

    @property
    def duplicate_rows(self) -> int:
        """Interaction rows identical in every column to an earlier row (they are kept)."""
        if not hasattr(self, "_duplicates"):
            own = [self.query_id_key, self.candidate_id_key, *([self.timestamp_key] if self.timestamp_key else []),
                   *self.interaction_feature_columns]
            self._duplicates = count_duplicate_rows([self._row_keys(k) for k in own])
        return self._duplicates

    def describe(self) -> dict[str, Any]:
        info = {
            "name": self.name,
            "interactions": int(len(self._row_keys(self.query_id_key))),
            "train": int(len(self.train_rows)),
            "test": int(len(self.test_rows)),
            "queries": int(len(self._id_table(self.query_id_key))),
            "candidates": int(len(self.candidate_ids)),
            "feature_keys": list(self.feature_keys),
        }
        info["validation"] = int(len(self.validation_rows))
        info["split"] = self.split
        return info


def _id_option(option: str) -> str:
    return "candidate_id" if option == "candidates" else "query_id"


def check_split_options(query_id, candidate_id, timestamp, split, test_fraction, validation_fraction, seed,
                   leave_last) -> dict[str, Any]:
    """Validates the recipe's split options; returns the resolved ones."""
    for option, value in (("query_id", query_id), ("candidate_id", candidate_id)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{option} must name a column of the interactions, got {value!r}; "
                              f"e.g. {option} = \"{'user' if option == 'query_id' else 'item'}\".")
    if query_id == candidate_id:
        raise ConfigError(f"query_id and candidate_id are both {query_id!r}; they must be two different columns.")
    if timestamp is not None and (not isinstance(timestamp, str) or not timestamp):
        raise ConfigError(f"timestamp must name a column, got {timestamp!r}; leave it out if there is none.")
    if split not in SPLITS:
        import difflib

        close = difflib.get_close_matches(str(split), SPLITS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown split {split!r}; {hint}choose one of {', '.join(SPLITS)}.")
    if split != "random" and not timestamp:
        raise ConfigError(f"split = \"{split}\" orders interactions by time, so it needs timestamp = \"COLUMN\".")
    if split == "leave-last":
        if test_fraction is not None:
            raise ConfigError("test_fraction does not apply to split = \"leave-last\" (it holds out each query's "
                              "last leave_last interactions); remove it.")
        if validation_fraction:
            raise ConfigError("validation_fraction is not supported with split = \"leave-last\"; use split = "
                              "\"temporal\" or \"random\" for a validation set.")
        if isinstance(leave_last, bool) or not isinstance(leave_last, int) or leave_last < 1:
            raise ConfigError(f"leave_last must be a positive integer, got {leave_last!r}.")
    test = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    for option, value in (("test_fraction", test), ("validation_fraction", validation_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f"{option} must be a number in [0, 1), got {value!r}.")
    if split != "leave-last" and not 0 < test:
        raise ConfigError(f"test_fraction must be above 0, got {test!r}; a split needs test rows.")
    if test + validation_fraction >= 1:
        raise ConfigError(f"test_fraction + validation_fraction is {test + validation_fraction:g}; it must be "
                          "below 1 to leave training rows.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}.")
    return {"test": float(test), "validation": float(validation_fraction), "seed": seed, "leave_last": leave_last}


def _load_table(source: Any, text_columns: Sequence[str], option: str) -> tuple[pa.Table, list, str]:
    """Reads a path (or takes an in-memory table); returns it, its shards and how to name it."""
    if isinstance(source, (str, os.PathLike)):
        paths = tabular.resolve_paths(source, option)
        table, shards = tabular.read_tables(paths, text_columns)
        where = str(paths[0]) if len(paths) == 1 else f"{os.fspath(source)} ({len(paths)} files)"
        return table, shards, where
    table = tabular.from_any_table(source, f"{option} table")
    return table, [(Path(f"<{option} table>"), table.num_rows)], f"the {option} table"


def _check_unique_ids(column: np.ndarray, codes: np.ndarray, option: str, where: str, shards) -> None:
    counts = np.bincount(codes)
    if (counts > 1).any():
        repeated = int(np.flatnonzero(counts > 1)[0])
        rows = np.flatnonzero(codes == repeated)
        raise DataError(f"{where} holds id {str(column[rows[0]])!r} twice ({tabular.locate_row(rows[0], shards)} "
                        f"and {tabular.locate_row(rows[1], shards)}); give each {option[:-1]} one row.")


def _rows_of(ids: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
    """Each id's row in ``table_ids`` (whose ids are unique), or -1."""
    order = np.argsort(table_ids, kind="stable")
    positions = np.clip(np.searchsorted(table_ids[order], ids), 0, len(order) - 1)
    rows = order[positions]
    return np.where(table_ids[rows] == ids, rows, -1)


def count_duplicate_rows(columns: Sequence[np.ndarray]) -> int:
    """How many rows equal an earlier row in every one of ``columns``."""
    if not columns or len(columns[0]) < 2:
        return 0
    order = np.lexsort(columns[::-1])
    same = np.ones(len(order) - 1, dtype=bool)
    for column in columns:
        ordered = column[order]
        same &= ordered[1:] == ordered[:-1]
    return int(same.sum())


# Splits ---------------------------------------------------------------------------------------


def _split_rows(split: str, num_rows: int, options: Mapping[str, Any], query_codes: np.ndarray,
                times: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, test, validation) row indices; raises DataError if train or test is empty."""
    if split == "random":
        train, test = _random_split(num_rows, options)
        num_validation = int(round(num_rows * options["validation"]))
        validation = train[len(train) - num_validation:] if num_validation else train[:0]
        train = train[: len(train) - num_validation]
    elif split == "temporal":
        train, test, validation = _temporal(times, options["test"], options["validation"])
    else:
        train, test = _leave_last(query_codes, times, options["leave_last"])
        validation = train[:0]
    for part, rows in (("test", test), ("train", train)):
        if len(rows) == 0:
            raise DataError(
                f"split = \"{split}\" leaves no {part} rows out of {num_rows}; "
                + ("each query needs more than leave_last interactions." if split == "leave-last" else
                   "the timestamps span no time to cut; use split = \"random\"." if split == "temporal" else
                   "use more rows or another test_fraction."))
    return train.astype(np.int64, copy=False), test.astype(np.int64, copy=False), validation.astype(np.int64, copy=False)


def _random_split(num_rows: int, options: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    shuffle = options["shuffle"]
    num_train = int(round(num_rows * (1.0 - options["test"])))
    if num_train in (0, num_rows):
        # Reported by _split_rows as the part that came out empty.
        rows = np.arange(num_rows)
        return (rows, rows[:0]) if num_train else (rows[:0], rows)
    if shuffle == "tutorial" or (shuffle == "auto" and num_rows <= TUTORIAL_SHUFFLE_MAX_ROWS):
        return seed_split(num_rows, 1.0 - options["test"], options["seed"])
    order = np.random.default_rng(options["seed"]).permutation(num_rows)
    return order[:num_train], order[num_train:]


def _temporal(times: np.ndarray, test_fraction: float, validation_fraction: float):
    """Global cutoffs: the last ``test_fraction`` of the time span is test, the validation span before it."""
    first, last = times.min(), times.max()
    span = float(last) - float(first)
    test_cut = float(last) - test_fraction * span
    validation_cut = test_cut - validation_fraction * span
    is_test = times > test_cut
    is_validation = (times > validation_cut) & ~is_test
    return np.flatnonzero(~is_test & ~is_validation), np.flatnonzero(is_test), np.flatnonzero(is_validation)


def _leave_last(query_codes: np.ndarray, times: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's last ``count`` interactions by time (ties: later row last) are test.

    Queries with ``count`` or fewer interactions stay wholly in train, so every
    test query has training history.
    """
    rows = np.arange(len(query_codes))
    order = np.lexsort((rows, times, query_codes))
    sizes = np.bincount(query_codes)
    starts = np.cumsum(sizes) - sizes
    sorted_codes = query_codes[order]
    position = np.arange(len(order)) - starts[sorted_codes]
    from_end = sizes[sorted_codes] - 1 - position
    is_test = np.zeros(len(order), dtype=bool)
    is_test[order] = (from_end < count) & (sizes[sorted_codes] > count)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)

