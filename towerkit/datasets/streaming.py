"""The ``interactions`` dataset with ``stream = true``: training from Parquet shards that are never loaded whole.

What stays in memory is what does not grow with the number of rows: the
distinct query and candidate ids (read from the id columns only, one shard at
a time), the candidates/queries tables, per-candidate training counts, and an
*evaluation sample*: every row of the test queries chosen for evaluation
(``evaluate.max_queries`` of them, or all test queries). Training reads the
shards row batch by row batch through ``tf.data`` (:meth:`train_stream`).

The split cannot permute rows in memory, so it is decided row by row:

* ``random``: a row is test when a seeded 64-bit hash of (query id text,
  candidate id text, timestamp, or the row's number in its file when there is
  no timestamp) falls below ``test_fraction``; validation when it falls in the
  next ``validation_fraction``. Shares are therefore close to, not exactly,
  the fractions, and the rows differ from the in-memory ``random`` split (which
  shuffles as the TFRS tutorial does). The same files and seed always give the
  same split, however they are sharded over workers.
* ``temporal``: the same global time cutoffs as in memory (the last
  ``test_fraction`` of the time span is test).
* ``leave-last`` needs each query's rows in time order across all shards, so
  it is not offered with ``stream = true``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from towerkit.datasets import tabular
from towerkit.datasets.interactions import ColumnValues, InteractionsDataset, check_split_options
from towerkit.errors import ConfigError, DataError, FeatureError

TRAIN, TEST, VALIDATION = 0, 1, 2
# Rows per Parquet read while training or sampling: bounds the memory a read takes
# (each of the interleaved shards holds one read).
ROWS_PER_READ = 16_384
# Shards read at once by the training stream (rows of different shards mix in the shuffle buffer).
INTERLEAVED_FILES = 4
# Attributes that exist once the evaluation sample is read (see StreamedInteractions._materialise).
_SAMPLED = frozenset({
    "interactions", "candidate_features", "train_rows", "test_rows", "validation_rows", "query_features",
    "query_feature_columns", "candidate_feature_columns", "interaction_feature_columns", "time_columns",
})
_U64 = np.uint64
_FNV_OFFSET, _FNV_PRIME = _U64(0xCBF29CE484222325), _U64(0x100000001B3)


def _mix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, element-wise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = values.astype(_U64) + _U64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def text_hashes(texts: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each id's UTF-8 text (FNV-1a, then mixed), vectorised over the ids."""
    raw = np.char.encode(np.asarray(texts, dtype=str), "utf-8")
    width = raw.dtype.itemsize
    lengths = np.char.str_len(raw)
    matrix = raw.view(np.uint8).reshape(len(raw), width) if width else np.zeros((len(raw), 0), np.uint8)
    hashes = np.full(len(raw), _FNV_OFFSET, dtype=_U64)
    with np.errstate(over="ignore"):
        for position in range(width):
            hashed = (hashes ^ matrix[:, position].astype(_U64)) * _FNV_PRIME
            hashes = np.where(lengths > position, hashed, hashes)
    return _mix(hashes)


def random_parts(query_hashes: np.ndarray, candidate_hashes: np.ndarray, third: np.ndarray, seed: int,
                 test_fraction: float, validation_fraction: float) -> np.ndarray:
    """TRAIN/TEST/VALIDATION per row from a seeded hash of (query, candidate, time or row number)."""
    third = np.asarray(third)
    if third.dtype.kind == "f":
        third = third.astype(np.float64).view(_U64)
    key = _mix(query_hashes ^ _mix(candidate_hashes ^ _mix(third.astype(np.int64).view(_U64) ^ _U64(seed))))
    share = (key >> _U64(11)).astype(np.float64) / float(1 << 53)
    parts = np.full(len(key), TRAIN, dtype=np.int8)
    parts[share < test_fraction + validation_fraction] = VALIDATION
    parts[share < test_fraction] = TEST
    return parts


def temporal_parts(times: np.ndarray, test_cut: float, validation_cut: float) -> np.ndarray:
    """TRAIN/TEST/VALIDATION per row from the global time cutoffs (as the in-memory temporal split)."""
    parts = np.full(len(times), TRAIN, dtype=np.int8)
    parts[times > validation_cut] = VALIDATION
    parts[times > test_cut] = TEST
    return parts


class StreamedInteractions(InteractionsDataset):
    """``InteractionsDataset(..., stream=True)``: trains from Parquet shards read row batch by row batch.

    Takes the ``interactions`` dataset's options (``split`` random or temporal).
    ``interactions``, ``train_rows`` and ``test_rows`` hold only the evaluation
    sample (every row of the sampled test queries); :meth:`describe` and
    :meth:`candidate_train_frequencies` count every row of every shard.

    Example:
        >>> data = towerkit.load_dataset("interactions", path="events/", query_id="user",
        ...                              candidate_id="item", stream=True)
        >>> data.sample_test_queries(10_000)   # optional: evaluate on 10,000 test queries
        >>> batches = data.train_stream(["user", "item"], 8192, shuffle_buffer=100_000, seed=42)
    """

    # Its stream reads files through tf.data.Dataset.from_generator, in the training process.
    stream_runs_in_process = True

    def __init__(self, path: str | os.PathLike, query_id: str, candidate_id: str, timestamp: str | None = None,
                 candidates: Any = None, queries: Any = None, split: str = "random",
                 test_fraction: float | None = None, validation_fraction: float = 0.0, seed: int = 42,
                 leave_last: int = 1, text_columns: Sequence[str] = (), shuffle: str = "auto", stream: bool = True):
        options = check_split_options(query_id, candidate_id, timestamp, split, test_fraction,
                                      validation_fraction, seed, leave_last)
        if split == "leave-last":
            raise ConfigError("split = \"leave-last\" needs each query's rows in time order across all shards, "
                              "which stream = true does not hold; use split = \"temporal\" or \"random\".")
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"stream = true reads Parquet files, so path must be a file, directory or glob, "
                              f"got a {type(path).__name__}; use stream = false for in-memory tables.")
        self.query_id_key, self.candidate_id_key, self.timestamp_key = query_id, candidate_id, timestamp
        self.split, self.seed, self.stream = split, seed, True
        self._options = {"candidates": candidates, "queries": queries, "test_fraction": test_fraction,
                         "validation_fraction": validation_fraction, "text_columns": tuple(text_columns)}
        self._test, self._validation = options["test"], options["validation"]
        self.files = _parquet_files(path)
        self.sources = [str(p) for p in self.files]
        self._schema = _common_schema(self.files, query_id, candidate_id, timestamp)
        self._read_ids()
        self._count_parts()
        self.evaluation_sample: dict[str, int] | None = None

    # Passes over the id columns ---------------------------------------------------------------------
    def _id_columns(self) -> list[str]:
        return [self.query_id_key, self.candidate_id_key, *([self.timestamp_key] if self.timestamp_key else [])]

    def _read_ids(self) -> None:
        """First pass: the distinct ids and the time range, one shard's id columns at a time."""
        queries, candidates, first, last, rows = [], [], None, None, 0
        for path in self.files:
            table = pq.read_table(path, columns=self._id_columns())
            shards = [(path, table.num_rows)]
            rows += table.num_rows
            queries.append(tabular.id_column(table.column(self.query_id_key), self.query_id_key, shards)[0])
            candidates.append(tabular.id_column(table.column(self.candidate_id_key), self.candidate_id_key, shards)[0])
            if self.timestamp_key:
                times = tabular.timestamp_column(table.column(self.timestamp_key), self.timestamp_key, shards)
                if len(times):
                    first = times.min() if first is None else min(first, times.min())
                    last = times.max() if last is None else max(last, times.max())
            del table
        if rows == 0:
            raise DataError(f"the Parquet shards of {self.files[0].parent} hold no rows; expected interactions.")
        self.num_rows = rows
        self.query_vocabulary = np.unique(np.concatenate(queries))
        self.candidate_vocabulary = np.unique(np.concatenate(candidates))
        self._query_bytes = np.char.encode(self.query_vocabulary, "utf-8")
        self._candidate_bytes = np.char.encode(self.candidate_vocabulary, "utf-8")
        self._query_hashes = text_hashes(self.query_vocabulary)
        self._candidate_hashes = text_hashes(self.candidate_vocabulary)
        if self.split == "temporal":
            span = float(last) - float(first)
            self._test_cut = float(last) - self._test * span
            self._validation_cut = self._test_cut - self._validation * span

    def _codes(self, column: Any, name: str, vocabulary: np.ndarray, where: Path, offset: int) -> np.ndarray:
        """Each row's index into the (sorted) vocabulary."""
        distinct, codes = tabular.id_column(pa.chunked_array([column]) if isinstance(column, pa.Array) else column,
                                            name, [(where, offset + len(column))])
        return np.searchsorted(vocabulary, distinct)[codes]

    def _parts(self, batch: Any, query_codes: np.ndarray, candidate_codes: np.ndarray, path: Path,
               offset: int) -> np.ndarray:
        """Each row's part of the split (TRAIN, TEST or VALIDATION)."""
        times = None
        if self.timestamp_key:
            column = batch.column(self.timestamp_key)
            times = tabular.timestamp_column(pa.chunked_array([column]) if isinstance(column, pa.Array) else column,
                                             self.timestamp_key, [(path, offset + batch.num_rows)])
        if self.split == "temporal":
            return temporal_parts(times, self._test_cut, self._validation_cut)
        third = times if times is not None else np.arange(offset, offset + batch.num_rows, dtype=np.int64)
        return random_parts(self._query_hashes[query_codes], self._candidate_hashes[candidate_codes], third,
                            self.seed, self._test, self._validation)

    def _batches(self, path: Path, columns: Sequence[str]):
        """(record batch, its first row's number in the file, query codes, candidate codes, parts)."""
        offset = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_READ, columns=list(columns)):
            query_codes = self._codes(batch.column(self.query_id_key), self.query_id_key, self.query_vocabulary,
                                      path, offset)
            candidate_codes = self._codes(batch.column(self.candidate_id_key), self.candidate_id_key,
                                          self.candidate_vocabulary, path, offset)
            yield batch, query_codes, candidate_codes, self._parts(batch, query_codes, candidate_codes, path, offset)
            offset += batch.num_rows

    def _count_parts(self) -> None:
        """Second pass: rows per part, training counts per candidate, and which queries have test rows."""
        counts = np.zeros(3, dtype=np.int64)
        self._train_counts = np.zeros(len(self.candidate_vocabulary), dtype=np.int64)
        self._is_test_query = np.zeros(len(self.query_vocabulary), dtype=bool)
        for path in self.files:
            for _, query_codes, candidate_codes, parts in self._batches(path, self._id_columns()):
                counts += np.bincount(parts, minlength=3)
                self._train_counts += np.bincount(candidate_codes[parts == TRAIN],
                                                  minlength=len(self.candidate_vocabulary))
                self._is_test_query[query_codes[parts == TEST]] = True
        self._part_counts = {"train": int(counts[TRAIN]), "test": int(counts[TEST]),
                             "validation": int(counts[VALIDATION])}
        for part in ("test", "train"):
            if not self._part_counts[part]:
                raise DataError(f"split = \"{self.split}\" leaves no {part} rows out of {self.num_rows:,}; "
                                + ("the timestamps span no time to cut; use split = \"random\"."
                                   if self.split == "temporal" else "use more rows or another test_fraction."))

    # The evaluation sample ---------------------------------------------------------------------------
    def sample_test_queries(self, max_queries: int | None = None, seed: int | None = None) -> "StreamedInteractions":
        """Reads every row of ``max_queries`` test queries (all of them if None) as the in-memory rows.

        Evaluation, baselines, exclusion of seen items and the export's seen
        lists then cover those queries. Call it before anything reads
        ``interactions``; otherwise all test queries are read on first use.

        Args:
            max_queries: How many test queries to sample (uniformly, seeded); None: every test query.
            seed: Seeds the sample (the dataset's seed if None).

        Returns:
            The dataset itself.
        """
        if self.sample_read:
            raise ConfigError("the evaluation sample of this streamed dataset was already read; call "
                              "sample_test_queries before anything reads its interactions.")
        test_queries = np.flatnonzero(self._is_test_query)
        chosen = test_queries
        if max_queries is not None and max_queries < len(test_queries):
            rng = np.random.default_rng(self.seed if seed is None else seed)
            chosen = np.sort(rng.choice(test_queries, size=max_queries, replace=False))
        self.evaluation_sample = {"queries": int(len(chosen)), "test_queries": int(len(test_queries)),
                                  **({"max_queries": int(max_queries)} if max_queries is not None else {})}
        self._materialise(chosen)
        return self

    @property
    def sample_read(self) -> bool:
        """Whether the evaluation sample's rows were read (they are read once)."""
        return "interactions" in self.__dict__

    def _materialise(self, chosen: np.ndarray) -> None:
        """Third pass: every row of the chosen queries, built as the in-memory dataset builds its rows."""
        wanted = np.zeros(len(self.query_vocabulary), dtype=bool)
        wanted[chosen] = True
        pieces, parts = [], []
        for path in self.files:
            for batch, query_codes, _, batch_parts in self._batches(path, self._schema.names):
                keep = wanted[query_codes]
                if keep.any():
                    pieces.append(pa.Table.from_batches([batch]).filter(pa.array(keep)))
                    parts.append(batch_parts[keep])
        table = pa.concat_tables(pieces)
        options = self._options
        files, sources = self.files, self.sources
        self._build(table, self.query_id_key, self.candidate_id_key, self.timestamp_key, options["candidates"],
                    options["queries"], self.split, options["test_fraction"], options["validation_fraction"],
                    self.seed, 1, options["text_columns"], "auto", parts=np.concatenate(parts))
        self.files, self.sources = files, sources
        self._join_full_sides(options)

    def _join_full_sides(self, options: dict[str, Any]) -> None:
        """The candidate set and the side tables' rows for every id of every shard, not only the sample's."""
        if options["candidates"] is None:
            self.candidate_features = {self.candidate_id_key: self.candidate_vocabulary}
        self._candidate_rows = _rows_for(self.candidate_vocabulary, self.candidate_features[self.candidate_id_key],
                                         "candidates", self.candidate_id_key)
        self._query_rows = None
        if options["queries"] is not None:
            self._query_rows = _rows_for(self.query_vocabulary, self.query_features[self.query_id_key],
                                         "queries", self.query_id_key)

    def __getattr__(self, name: str) -> Any:
        # Called only for attributes not set yet: the sample's are read on first use.
        if name in _SAMPLED and "_is_test_query" in self.__dict__ and "interactions" not in self.__dict__:
            self.sample_test_queries(None)
            return getattr(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # Views over every shard ---------------------------------------------------------------------------
    @property
    def vocabularies(self) -> dict[str, np.ndarray]:
        return {self.query_id_key: self.query_vocabulary,
                self.candidate_id_key: np.unique(self.candidate_features[self.candidate_id_key])}

    def adapt_features(self) -> ColumnValues:
        """As in memory, but ids come from every shard, side-table columns from their whole tables."""
        values = super().adapt_features()
        values[self.query_id_key] = self.query_vocabulary
        for name in self.query_feature_columns:
            values[name] = self.query_features[name]
        return values

    def candidate_train_frequencies(self) -> dict[str, float]:
        total = max(1, int(self._train_counts.sum()))
        return {str(c): n / total for c, n in zip(self.candidate_vocabulary.tolist(), self._train_counts.tolist()) if n}

    @property
    def duplicate_rows(self) -> int:
        raise ConfigError("duplicate rows are not counted with stream = true; run `towerkit data inspect` on a "
                          "sample of the shards instead.")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "interactions": self.num_rows, **self._part_counts,
            "queries": int(len(self.query_vocabulary)),
            "candidates": int(len(self.candidate_features[self.candidate_id_key])),
            "feature_keys": list(self.feature_keys), "split": self.split, "stream": True, "files": len(self.files),
            **({"evaluation_sample": dict(self.evaluation_sample)} if self.evaluation_sample else {}),
        }

    # Training --------------------------------------------------------------------------------------------
    def train_stream(self, keys: Sequence[str], batch_size: int, *, shuffle_buffer: int, seed: int,
                     input_context: "tf.distribute.InputContext | None" = None) -> tf.data.Dataset:
        """The training rows of the shards as batches of feature dicts, read as they are needed.

        Args:
            keys: The features to yield (interaction columns, or columns of the candidates/queries tables).
            batch_size: Rows per batch: the global batch; divided per replica under ``input_context``.
            shuffle_buffer: Rows held by the shuffle (rows of up to four shards mix in it).
            seed: Seeds the shard order and the shuffle.
            input_context: Under a distribution strategy, this input pipeline's place: it reads
                only its own shards (every ``num_input_pipelines``-th, from ``input_pipeline_id``).

        Raises:
            ConfigError: There are fewer shards than input pipelines.
        """
        keys = list(dict.fromkeys(keys))
        self.check_features(keys, "the training stream")
        files = self.files
        if input_context is not None:
            if len(files) < input_context.num_input_pipelines:
                raise ConfigError(f"stream = true shards by file, but there are {len(files)} Parquet file(s) for "
                                  f"{input_context.num_input_pipelines} input pipelines; write at least one shard "
                                  "per worker.")
            files = files[input_context.input_pipeline_id::input_context.num_input_pipelines]
            batch_size = input_context.get_per_replica_batch_size(batch_size)
        signature = {key: self._spec(key) for key in keys}
        names = tf.constant([str(p) for p in files])
        rows = tf.data.Dataset.from_tensor_slices(names).shuffle(len(files), seed=seed).interleave(
            lambda path: tf.data.Dataset.from_generator(self._train_rows, args=(path, tf.constant(keys)),
                                                        output_signature=signature),
            cycle_length=min(len(files), INTERLEAVED_FILES))
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return (rows.unbatch().shuffle(max(1, shuffle_buffer), seed=seed).batch(batch_size)
                .prefetch(tf.data.AUTOTUNE).with_options(options))

    def _spec(self, key: str) -> tf.TensorSpec:
        column = self.interactions[key]
        if column.dtype == object:
            raise FeatureError(f"feature {key!r} is list-valued per row (e.g. a history), which stream = true "
                               "cannot compute from shards; use a tower that reads plain columns.")
        dtype = tf.string if column.dtype.kind in "US" else tf.as_dtype(column.dtype)
        return tf.TensorSpec([None], dtype, name=key)

    def _train_rows(self, path: bytes, keys: np.ndarray):
        """Yields one file's training rows, a read at a time, as dicts of column arrays."""
        path, keys = Path(path.decode("utf-8")), [k.decode("utf-8") for k in keys]
        own = [k for k in keys if k in self._schema.names and k not in (self.query_id_key, self.candidate_id_key)]
        columns = list(dict.fromkeys([*self._id_columns(), *own]))
        for batch, query_codes, candidate_codes, parts in self._batches(path, columns):
            keep = parts == TRAIN
            if not keep.any():
                continue
            kept = pa.Table.from_batches([batch]).filter(pa.array(keep))
            query_codes, candidate_codes = query_codes[keep], candidate_codes[keep]
            yield {key: self._column(key, kept, query_codes, candidate_codes, path) for key in keys}

    def _column(self, key: str, table: pa.Table, query_codes: np.ndarray, candidate_codes: np.ndarray,
                path: Path) -> np.ndarray:
        if key == self.query_id_key:
            return self._query_bytes[query_codes]
        if key == self.candidate_id_key:
            return self._candidate_bytes[candidate_codes]
        if key in self.query_feature_columns:
            values = self.query_features[key][self._query_rows[query_codes]]
        elif key in self.candidate_feature_columns:
            values = self.candidate_features[key][self._candidate_rows[candidate_codes]]
        elif key == self.timestamp_key:
            values = tabular.timestamp_column(table.column(key), key, [(path, table.num_rows)])
        elif pa.types.is_string(table.schema.field(key).type):
            # Straight to UTF-8 bytes per row: a NumPy unicode column would take 4 bytes per character.
            distinct, codes = tabular.encode_strings(table.column(key))
            return np.char.encode(distinct, "utf-8")[codes]
        else:
            values = tabular.feature_column(table.column(key), key, [(path, table.num_rows)],
                                            allow_mixed=key in self._options["text_columns"])
        return np.char.encode(values, "utf-8") if values.dtype.kind == "U" else values


def _parquet_files(path: str | os.PathLike) -> list[Path]:
    """The shards a path names, all Parquet; one DataError otherwise."""
    files = tabular.resolve_paths(path, "path")
    others = [f for f in files if tabular.file_format(f) != "parquet"]
    if others:
        raise DataError(f"stream = true trains from Parquet shards, but {others[0]} is "
                        f"{tabular.file_format(others[0]).upper()}; convert the files to Parquet "
                        "(e.g. pyarrow.parquet.write_table) or set stream = false to load them in memory.")
    return files


def _common_schema(files: Sequence[Path], query_id: str, candidate_id: str, timestamp: str | None) -> pa.Schema:
    """The shards' shared schema; DataError if one differs, ConfigError if a named column is missing."""
    try:
        schemas = [pq.read_schema(path) for path in files]
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read the Parquet shards of {files[0].parent} ({str(exc).splitlines()[0]}); "
                        "check that every file is a complete Parquet file.") from None
    first = schemas[0]
    for path, schema in zip(files[1:], schemas[1:]):
        if not schema.equals(first):
            raise DataError(f"{path} has schema ({_fields(schema)}) but {files[0]} has ({_fields(first)}); give "
                            "every shard the same columns and types.")
    named = {"query_id": query_id, "candidate_id": candidate_id, **({"timestamp": timestamp} if timestamp else {})}
    tabular.require_columns(first.empty_table(), named, str(files[0]) if len(files) == 1
                            else f"{files[0].parent} ({len(files)} files)")
    return first


def _fields(schema: pa.Schema) -> str:
    return ", ".join(f"{field.name}: {field.type}" for field in schema)


def _rows_for(ids: np.ndarray, table_ids: np.ndarray, option: str, key: str) -> np.ndarray:
    """Each id's row in a side table; DataError naming ids that table lacks."""
    order = np.argsort(table_ids, kind="stable")
    positions = np.clip(np.searchsorted(table_ids[order], ids), 0, max(0, len(order) - 1))
    rows = order[positions]
    found = table_ids[rows] == ids
    if not found.all():
        missing = ids[~found]
        raise DataError(f"the {option} table lacks {len(missing)} {key} value(s) that occur in the interactions "
                        f"(e.g. {', '.join(repr(str(m)) for m in missing[:3])}); give every {option[:-1]} a row there.")
    return rows
