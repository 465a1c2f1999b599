"""Reading interaction and feature tables from files with pyarrow, checked column by column.

Every table is read whole by pyarrow (multi-threaded CSV, Parquet and JSON
Lines readers) and converted to NumPy column arrays without building a Python
object per row: string columns go through a dictionary encoding, so only the
distinct values become Python strings.

Ids are strings everywhere downstream (the towers look them up as strings, the
exports return them as strings). An integer id column becomes its decimal
text, exactly ``str(value)``; a CSV/TSV/JSON id column is read as text, so
``"007"`` stays ``"007"``.
"""

from __future__ import annotations

import glob
import gzip
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from towerkit.errors import ConfigError, DataError

# Suffix (without a trailing .gz) -> reader name.
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
# List-valued cells (Parquet/JSON lists) become one string joined by this
# separator (ASCII "unit separator"), which the multi-valued encoder splits on.
LIST_SEPARATOR = "\x1f"
GLOB_CHARACTERS = "*?["


def file_format(path: Path) -> str | None:
    """The reader for a path by its suffix (``.gz`` allowed), or None if unsupported."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return FORMATS.get(suffixes[-1]) if suffixes else None


def _supported(paths: Iterable[str | Path]) -> list[Path]:
    files = []
    for path in map(Path, paths):
        # Spark and Hadoop leave _SUCCESS and .crc files beside their shards.
        if path.is_file() and not path.name.startswith((".", "_")) and file_format(path):
            files.append(path)
    return sorted(files)


def resolve_paths(path: str | os.PathLike, what: str = "path") -> list[Path]:
    """The data files a path names: a file, a directory of shards, or a glob.

    Raises:
        DataError: Nothing readable is there.
    """
    text = os.fspath(path)
    if any(c in text for c in GLOB_CHARACTERS):
        files = _supported(glob.glob(text, recursive=True))
        if not files:
            raise DataError(f"{what} {text!r} matches no .csv/.tsv/.parquet/.jsonl file (optionally .gz); "
                            "check the pattern.")
        return files
    location = Path(text)
    if location.is_dir():
        files = _supported(location.rglob("*"))
        if not files:
            raise DataError(f"{what} {text!r} is a directory with no .csv/.tsv/.parquet/.jsonl file in it; "
                            "point it at the data files.")
        return files
    if not location.is_file():
        raise DataError(f"{what} {text!r} does not exist; give a file, a directory of shards or a glob.")
    if file_format(location) is None:
        raise DataError(f"{what} {text!r} is not a .csv, .tsv, .parquet or .jsonl file (optionally .gz); "
                        "convert it or rename it to its format.")
    return [location]


def read_table(path: Path, text_columns: Sequence[str] = ()) -> pa.Table:
    """Reads one file into an Arrow table.

    Args:
        path: A file with a supported suffix.
        text_columns: Columns read as text even where they look numeric (ids),
            so their values stay exactly as written. Applies to CSV/TSV.

    Raises:
        DataError: The file is empty, not UTF-8, malformed, or mixes types in a column.
    """
    kind = file_format(path)
    try:
        if kind in ("csv", "tsv"):
            table = _read_csv(path, kind, text_columns)
        elif kind == "parquet":
            import pyarrow.parquet as pq

            if path.suffix.lower() == ".gz":
                raise DataError(f"{path} is a gzipped Parquet file; Parquet compresses itself, so write it "
                                "without .gz.")
            table = pq.read_table(path)
        else:
            import pyarrow.json as pajson

            table = pajson.read_json(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError, EOFError) as exc:
        raise _read_error(path, exc) from None
    if table.num_columns == 0:
        raise DataError(f"{path} is empty: it has no columns; expected a header row and interactions.")
    return table


def _read_csv(path: Path, kind: str, text_columns: Sequence[str]) -> pa.Table:
    import pyarrow.csv as pacsv

    parse = pacsv.ParseOptions(delimiter="\t" if kind == "tsv" else ",")
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in text_columns})
    try:
        # The streaming reader peaks at about half the memory of read_csv (measured on 10M rows:
        # 356 MiB against 715 MiB for a 248 MiB table), but it fixes each column's type from the
        # first block: where a later block disagrees it fails, and read_csv (which unifies the
        # blocks' types, or reports the file's error) reads the file instead.
        with pacsv.open_csv(path, parse_options=parse, convert_options=convert) as reader:
            return reader.read_all()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pacsv.read_csv(path, parse_options=parse, convert_options=convert)


def _read_error(path: Path, exc: Exception) -> DataError:
    message = str(exc)
    lower = message.lower()
    if "empty csv" in lower or "empty file" in lower or isinstance(exc, EOFError):
        return DataError(f"{path} is empty; expected a header row and at least one interaction.")
    if "utf8" in lower or "utf-8" in lower:
        line = _first_non_utf8_line(path)
        where = f" (line {line})" if line else ""
        return DataError(f"{path} is not valid UTF-8 text{where}; re-encode it as UTF-8 "
                         "(e.g. `iconv -f latin1 -t utf-8`).")
    if "changed from" in lower or "conversion error" in lower or "in row" in lower and "json" in lower:
        return DataError(f"{path} mixes value types in one column ({message.splitlines()[0]}); "
                         "make every value of a column the same type.")
    return DataError(f"cannot read {path} ({message.splitlines()[0] if message else type(exc).__name__}); "
                     "check that it is a well-formed file of its format.")


def _first_non_utf8_line(path: Path) -> int | None:
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    return number
    except OSError:
        return None
    return None


def read_tables(paths: Sequence[Path], text_columns: Sequence[str] = ()) -> tuple[pa.Table, list[tuple[Path, int]]]:
    """Reads and concatenates shards; returns the table and each shard's (path, row count).

    Raises:
        DataError: Shards disagree on their columns or on a column's type.
    """
    tables = [read_table(path, text_columns) for path in paths]
    first = tables[0]
    for path, table in zip(paths[1:], tables[1:]):
        if set(table.column_names) != set(first.column_names):
            missing = sorted(set(first.column_names) ^ set(table.column_names))
            raise DataError(f"{path} has columns {', '.join(table.column_names)} but {paths[0]} has "
                            f"{', '.join(first.column_names)} (differing: {', '.join(missing)}); "
                            "give every shard the same columns.")
    tables = [t.select(first.column_names) for t in tables]
    try:
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else first
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(_shard_type_message(paths, tables) or
                        f"the shards of {paths[0].parent} mix value types in one column ({exc}); "
                        "make every value of a column the same type.") from None
    return table, [(path, t.num_rows) for path, t in zip(paths, tables)]


def _shard_type_message(paths: Sequence[Path], tables: Sequence[pa.Table]) -> str | None:
    for name in tables[0].column_names:
        types = {str(t.schema.field(name).type): p for p, t in zip(paths, tables)}
        if len(types) > 1:
            (first_type, first_path), (other_type, other_path) = list(types.items())[:2]
            return (f"column {name!r} mixes value types: {first_type} in {first_path} but {other_type} in "
                    f"{other_path}; make every value of a column the same type.")
    return None


def locate_row(row: int, shards: Sequence[tuple[Path, int]]) -> str:
    """Names a row of concatenated shards as its file and 1-based row (and CSV line)."""
    for path, count in shards:
        if row < count:
            where = f"{path} row {row + 1}"
            if file_format(path) in ("csv", "tsv"):
                where += f" (line {row + 2})"
            return where
        row -= count
    return f"row {row + 1}"


def require_columns(table: pa.Table, names: dict[str, str], where: str) -> None:
    """Raises ConfigError for a recipe option naming a column the table lacks.

    Args:
        names: Option name -> the column it names.
    """
    import difflib

    for option, column in names.items():
        if column not in table.column_names:
            close = difflib.get_close_matches(column, table.column_names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{option} = {column!r} is not a column of {where}; {hint}its columns are "
                              f"{', '.join(table.column_names)}.")


# --- Arrow -> NumPy ----------------------------------------------------------------------------


def encode_strings(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A string column as (distinct values, a code per row); nulls become empty strings.

    Only the distinct values become Python strings, so a column of millions of
    rows costs one small array of codes plus its vocabulary.
    """
    column = column.fill_null("") if column.null_count else column
    encoded = pc.dictionary_encode(column).combine_chunks()
    values = np.asarray(encoded.dictionary.to_pylist(), dtype=str)
    if len(values) == 0:
        values = np.array([""], dtype=str)
    return values, encoded.indices.to_numpy(zero_copy_only=False)


def _strings_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A string column as a NumPy unicode array."""
    values, codes = encode_strings(column)
    return values[codes]


def id_column(column: pa.ChunkedArray, name: str, shards: Sequence[tuple[Path, int]],
              sort: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An id column as (distinct ids, an int32 code per row), after checking it has no null or empty id.

    Args:
        sort: Return the distinct ids in sorted (text) order, as ``np.sort`` of
            the id strings gives it; otherwise in order of first appearance.

    Raises:
        DataError: The ids are not strings or integers, or one is null or empty.
    """
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_integer(kind):
        return _integer_ids(column, name, shards, sort)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"id column {name!r} holds {kind} values; ids must be strings or integers, so "
                        "convert the column (e.g. write floats as integers).")
    missing = pc.or_kleene(pc.is_null(column), pc.equal(pc.utf8_length(column), 0))
    missing = pc.fill_null(missing, True)
    if pc.any(missing).as_py():
        row = int(pc.index(missing, True).as_py())
        raise DataError(f"{locate_row(row, shards)} has an empty id in column {name!r}; every row needs an id, "
                        "so fill it in or drop the row.")
    values, codes = encode_strings(column)
    return _sorted_codes(values, codes, np.argsort(values)) if sort else (values, codes)


def _integer_ids(column: pa.ChunkedArray, name: str, shards: Sequence[tuple[Path, int]],
                 sort: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Integer ids as (their decimal text, a code per row), hashing and sorting the integers rather than their text."""
    if column.null_count:
        row = int(pc.index(pc.is_null(column), True).as_py())
        raise DataError(f"{locate_row(row, shards)} has an empty id in column {name!r}; every row needs an id, "
                        "so fill it in or drop the row.")
    dense = _dense_sorted_ids(column) if sort else None
    if dense is not None:
        distinct, codes = dense
    else:
        encoded = pc.dictionary_encode(column).combine_chunks()
        distinct = encoded.dictionary.to_numpy().astype(np.int64, copy=False)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        if sort:
            distinct, codes = _sorted_codes(distinct, codes, decimal_text_order(distinct))
    # Sized for the widest id (NumPy would size int64 text for 21 characters, 4 bytes each).
    width = max(len(str(int(distinct.min()))), len(str(int(distinct.max())))) if len(distinct) else 1
    return distinct.astype(f"<U{width}"), codes


def _dense_sorted_ids(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer ids spanning a range of at most twice the rows: (distinct ids in text order, int32 codes).

    A lookup table over the range replaces hashing: one pass marks the ids
    present, one maps each row to its id's rank, chunk by chunk (no copy of the
    whole column). None where the range is wider (then the ids are hashed).
    """
    bounds = pc.min_max(column).as_py()
    if len(column) == 0 or bounds["min"] is None:
        return None
    low, high = int(bounds["min"]), int(bounds["max"])
    if high - low >= max(2 * len(column), 1024) or high - low >= 2**31 - 1:
        return None
    # int64 arithmetic: the offset from the lowest id may not fit a narrower type (int8: -100 .. 100).
    chunks = [chunk.to_numpy().astype(np.int64, copy=False) for chunk in column.chunks if len(chunk)]
    present = np.zeros(high - low + 1, dtype=bool)
    for values in chunks:
        present[values - low] = True
    distinct = np.flatnonzero(present).astype(np.int64) + low
    order = decimal_text_order(distinct)
    rank = np.empty(len(present), dtype=np.int32)
    rank[distinct[order] - low] = np.arange(len(distinct), dtype=np.int32)
    codes = np.empty(len(column), dtype=np.int32)
    start = 0
    for values in chunks:
        np.take(rank, values - low, out=codes[start:start + len(values)])
        start += len(values)
    return distinct[order], codes


def _sorted_codes(values: np.ndarray, codes: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` reordered by ``order``, with ``codes`` renumbered to point at the same values."""
    rank = np.empty(len(order), dtype=codes.dtype)
    rank[order] = np.arange(len(order), dtype=codes.dtype)
    return values[order], rank[codes]


def decimal_text_order(numbers: np.ndarray) -> np.ndarray:
    """The order ``np.argsort`` gives the decimal text of distinct integers (``"10" < "9"``), computed on integers.

    For non-negative numbers, text order is the order of the number padded on
    the right with zeros to a common width, shorter text first where those
    are equal (a prefix sorts first); that is an integer sort. Negative
    numbers, or more than 18 digits, fall back to sorting the text.
    """
    if len(numbers) == 0 or numbers.min() < 0 or numbers.max() >= 10**18:
        return np.argsort(numbers.astype(str), kind="stable")
    digits = np.searchsorted(10 ** np.arange(1, 19, dtype=np.int64), numbers, side="right") + 1
    width = int(digits.max())
    padded = numbers * (10 ** (width - digits))
    return np.lexsort((digits, padded))


def timestamp_column(column: pa.ChunkedArray, name: str, shards: Sequence[tuple[Path, int]]) -> np.ndarray:
    """A timestamp column as seconds since the epoch (int64, or float64 for float input).

    Accepts numbers (taken as seconds), Arrow timestamps and dates, and ISO 8601 text.

    Raises:
        DataError: A value is missing or is text that is not a date-time.
    """
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        column = _parse_times(column, name, shards)
        kind = column.type
    if pa.types.is_date(kind):
        column, kind = column.cast(pa.timestamp("s")), pa.timestamp("s")
    if pa.types.is_timestamp(kind):
        column = column.cast(pa.timestamp("s", tz=kind.tz), safe=False).cast(pa.int64())
        kind = pa.int64()
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise DataError(f"timestamp column {name!r} holds {kind} values; expected seconds since the epoch or "
                        "ISO 8601 date-times.")
    invalid = pc.is_null(column, nan_is_null=True)
    if pc.any(invalid).as_py():
        row = int(pc.index(invalid, True).as_py())
        raise DataError(f"{locate_row(row, shards)} has no timestamp in column {name!r}; every interaction "
                        "needs one when timestamp is set, so fill it in or drop the row.")
    array = column.to_numpy()
    # copy=False: an int64 or float64 column is already what is wanted (no second copy at peak memory).
    return array.astype(np.float64, copy=False) if array.dtype.kind == "f" else array.astype(np.int64, copy=False)


def _parse_times(column: pa.ChunkedArray, name: str, shards: Sequence[tuple[Path, int]]) -> pa.ChunkedArray:
    try:
        return column.cast(pa.timestamp("s"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Find the first bad value by halving: each step casts one half, so it costs O(rows) in all.
    array, offset = column.combine_chunks(), 0
    while len(array) > 1:
        half = len(array) // 2
        try:
            array[:half].cast(pa.timestamp("s"))
            array, offset = array[half:], offset + half
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            array = array[:half]
    raise DataError(f"{locate_row(offset, shards)} has timestamp {array[0].as_py()!r} in column {name!r}, which "
                    "is not a date-time; use seconds since the epoch or ISO 8601 (e.g. 2024-05-01T12:00:00).")


def feature_column(column: pa.ChunkedArray, name: str, shards: Sequence[tuple[Path, int]] = (),
                   allow_mixed: bool = False) -> np.ndarray:
    """A feature column as a NumPy array: strings, numbers, bools, seconds, or joined lists.

    Args:
        allow_mixed: Accept a text column whose values are mostly numbers (see :func:`mixed_text_row`).

    Raises:
        DataError: The column's type has no NumPy form here (e.g. nested structs),
            or it mixes numbers and text.
    """
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values, codes = encode_strings(column)
        row = None if allow_mixed else mixed_text_row(values, codes)
        if row is not None:
            raise DataError(
                f"column {name!r} mixes numbers and text: {locate_row(row, shards)} has {str(values[codes[row]])!r} "
                "where most values are numbers; fix the value, or list the column in text_columns if it is text.")
        return values[codes]
    if pa.types.is_boolean(kind):
        return column.fill_null(False).to_numpy()
    if pa.types.is_integer(kind):
        if column.null_count:
            return column.cast(pa.float64()).to_numpy()
        return column.to_numpy().astype(np.int64, copy=False)
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return column.cast(pa.float64()).to_numpy() if pa.types.is_decimal(kind) else column.to_numpy()
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return timestamp_column(column, name, shards)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        joined = pc.binary_join(column.cast(pa.list_(pa.string())), LIST_SEPARATOR)
        return _strings_to_numpy(joined)
    if pa.types.is_null(kind):
        # A column left empty throughout (e.g. an unused CSV column): one empty category.
        return np.full(len(column), "", dtype="<U1")
    raise DataError(f"column {name!r} holds {kind} values, which towerkit cannot use as a feature; "
                    "drop it or flatten it into strings or numbers.")


def mixed_text_row(values: np.ndarray, codes: np.ndarray) -> int | None:
    """For a text column whose values are mostly numbers, the first row that is not a number.

    A CSV column read in one block becomes text when any value is not a
    number; where most values are numbers that is usually a typo, not text.

    Args:
        values: The distinct values; codes: each row's index into them.
    """
    if len(codes) == 0:
        return None
    numeric = np.array([_is_number(v) for v in values.tolist()])
    if numeric.all():
        return None
    row_numeric = numeric[codes]
    if row_numeric.mean() < 0.5:
        return None
    return int(np.flatnonzero(~row_numeric)[0])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == ""
    return True


def from_any_table(value: Any, what: str) -> pa.Table:
    """An Arrow table from an Arrow table or a pandas DataFrame (pandas is not imported here)."""
    if isinstance(value, pa.Table):
        return value
    if callable(getattr(value, "to_arrow", None)):  # e.g. polars
        return value.to_arrow()
    if hasattr(value, "columns") and hasattr(value, "dtypes"):  # pandas
        try:
            return pa.Table.from_pandas(value, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise DataError(f"{what} has a column that mixes value types ({str(exc).splitlines()[0]}); "
                            "make every value of a column the same type.") from None
    raise ConfigError(f"{what} must be a path, a pyarrow.Table or a pandas.DataFrame, got {type(value).__name__}.")
