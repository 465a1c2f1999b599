"""A look at an interaction log before training, and a starter recipe that trains on it as it is.

``towerkit data inspect PATH`` is :func:`inspect` plus, with ``--recipe-out``,
:func:`starter_recipe`. Where ``query_id``, ``candidate_id`` or ``timestamp``
are not given they are guessed from the column names (``user_id``,
``item``, ``ts`` ...) and the guesses are reported.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from towerkit.datasets import tabular
from towerkit.datasets.interactions import InteractionsDataset
from towerkit.errors import DataError
from towerkit.towers.encoders import infer_encoder

QUERY_NAMES = ("user_id", "userid", "user", "customer_id", "customer", "query_id", "query", "visitor_id",
               "account_id", "session_id", "session", "member_id", "uid")
CANDIDATE_NAMES = ("item_id", "itemid", "item", "movie_id", "movieid", "product_id", "product", "candidate_id",
                   "candidate", "sku", "track_id", "song_id", "article_id", "doc_id", "video_id", "iid")
TIME_NAMES = ("timestamp", "ts", "time", "datetime", "event_time", "event_timestamp", "created_at", "date")
TOP_CANDIDATES = 10


def read_schema(path: Path) -> pa.Schema:
    """The columns of one data file, reading as little of it as its format allows."""
    kind = tabular.file_format(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_schema(path)
        if kind in ("csv", "tsv"):
            import pyarrow.csv as pacsv

            parse = pacsv.ParseOptions(delimiter="\t" if kind == "tsv" else ",")
            return pacsv.open_csv(path, parse_options=parse).schema
    except (pa.ArrowInvalid, OSError):
        pass  # read_table below reports the problem in full
    return tabular.read_table(path).schema


def _guess(names: list[str], candidates: tuple[str, ...], word: str, taken: set[str]) -> str | None:
    lowered = {n.lower(): n for n in names if n not in taken}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    return next((n for low, n in lowered.items() if word in low), None)


def guess_columns(path: str | os.PathLike, query_id: str | None = None, candidate_id: str | None = None,
                  timestamp: str | None = None) -> tuple[dict[str, str | None], list[str]]:
    """The id and time columns: as given, else guessed from names; returns them and what was guessed.

    Raises:
        DataError: An id column cannot be guessed (the message lists the columns).
    """
    schema = read_schema(tabular.resolve_paths(path)[0])
    names, guessed = list(schema.names), []
    if query_id is None:
        query_id = _guess(names, QUERY_NAMES, "user", {candidate_id} if candidate_id else set())
        guessed.append("query_id")
    if candidate_id is None:
        candidate_id = _guess(names, CANDIDATE_NAMES, "item", {query_id})
        guessed.append("candidate_id")
    for option, value in (("query_id", query_id), ("candidate_id", candidate_id)):
        if value is None:
            raise DataError(f"cannot tell which column of {os.fspath(path)} is the {option.split('_')[0]} id; pass "
                            f"{option} (columns: {', '.join(names)}).")
    if timestamp is None:
        typed = [f.name for f in schema if pa.types.is_timestamp(f.type) or pa.types.is_date(f.type)]
        timestamp = typed[0] if typed else _guess(names, TIME_NAMES, "\0", {query_id, candidate_id})
        if timestamp is not None:
            guessed.append("timestamp")
    return {"query_id": query_id, "candidate_id": candidate_id, "timestamp": timestamp}, guessed


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(float(seconds), tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _column_rows(data: InteractionsDataset) -> list[dict[str, Any]]:
    roles = {data.query_id_key: "query id", data.candidate_id_key: "candidate id"}
    if data.timestamp_key:
        roles[data.timestamp_key] = "timestamp"
    roles.update({c: "interaction feature" for c in data.interaction_feature_columns})
    roles.update({c: "candidate feature" for c in data.candidate_feature_columns})
    roles.update({c: "query feature" for c in data.query_feature_columns})
    rows = []
    for name, role in roles.items():
        values = data.interactions[name]
        if role.endswith("id"):
            encoder = "id"
        elif name in data.time_columns:
            encoder = "timestamp"
        else:
            encoder = infer_encoder(values)
        dtype = "text" if values.dtype.kind == "U" else str(values.dtype)
        rows.append({"name": name, "role": role, "type": dtype, "encoder": encoder,
                     "distinct": int(len(np.unique(values)))})
    return rows


def inspect(path: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Describes an interaction log: schema, inferred encoders, counts, density, duplicates, time, top candidates.

    Args:
        path: A file, directory of shards or glob, as the ``interactions`` dataset takes.
        **options: Any ``interactions`` option (``query_id``, ``candidate_id``,
            ``timestamp``, ``candidates``, ``queries``, ``split`` ...); the id
            and time columns are guessed from names where not given.

    Returns:
        A JSON-ready dict (see the keys below); ``guessed`` lists the options that were guessed.
    """
    columns, guessed = guess_columns(path, options.pop("query_id", None), options.pop("candidate_id", None),
                                     options.pop("timestamp", None))
    if columns["timestamp"] is None:
        columns.pop("timestamp")
    data = InteractionsDataset(path, **columns, **options)
    queries = data.interactions[data.query_id_key]
    candidates = data.interactions[data.candidate_id_key]
    rows = len(queries)
    query_values, query_codes = np.unique(queries, return_inverse=True)
    candidate_values, candidate_codes, candidate_counts = np.unique(candidates, return_inverse=True,
                                                                    return_counts=True)
    distinct_pairs = len(np.unique(query_codes.astype(np.int64) * len(candidate_values) + candidate_codes))
    per_query = np.bincount(query_codes)
    top = np.argsort(-candidate_counts, kind="stable")[:TOP_CANDIDATES]
    report: dict[str, Any] = {
        "path": os.fspath(path),
        "files": data.sources,
        **columns,
        "guessed": guessed,
        "columns": _column_rows(data),
        "rows": rows,
        "queries": int(len(query_values)),
        "candidates": int(len(data.candidate_ids)),
        "candidates_with_interactions": int(len(candidate_values)),
        "density": distinct_pairs / (len(query_values) * len(data.candidate_ids)),
        "duplicate_rows": data.duplicate_rows,
        "repeated_pairs": rows - distinct_pairs,
        "interactions_per_query": {"min": int(per_query.min()), "median": float(np.median(per_query)),
                                   "max": int(per_query.max())},
        "time_range": None,
        "top_candidates": [{"id": str(candidate_values[i]), "count": int(candidate_counts[i]),
                            "share": float(candidate_counts[i] / rows)} for i in top],
        "split": {"name": data.split, "train": int(len(data.train_rows)),
                  "validation": int(len(data.validation_rows)), "test": int(len(data.test_rows))},
        "most_active_query": str(query_values[int(np.argmax(per_query))]),
    }
    if data.timestamp_key:
        times = data.interactions[data.timestamp_key]
        report["time_range"] = {"first": _iso(times.min()), "last": _iso(times.max()),
                                "days": (float(times.max()) - float(times.min())) / 86_400}
    return report


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def starter_recipe(path: str | os.PathLike, **options: Any) -> str:
    """A TOML recipe that trains ``features`` towers on the log as it is.

    It names the columns (given or guessed), keeps the split options given,
    lists the inferred encoders as a comment, and sizes batch, epochs and
    evaluation to the data.

    Args:
        path: As for :func:`inspect`; written into the recipe as an absolute path.
        **options: As for :func:`inspect`.
    """
    report = inspect(path, **dict(options))
    dataset = {"name": "interactions", "path": str(Path(os.fspath(path)).absolute())}
    dataset.update({k: report[k] for k in ("query_id", "candidate_id", "timestamp") if report.get(k)})
    for key, value in options.items():
        if key not in dataset and value is not None:
            dataset[key] = str(Path(os.fspath(value)).absolute()) if key in ("candidates", "queries") else value
    dataset.setdefault("split", "random")
    train_rows = report["split"]["train"]
    batch = int(min(8192, max(64, 2 ** math.floor(math.log2(max(train_rows // 20, 1))))))
    big = report["rows"] > 1_000_000
    encoders = {c["name"]: c["encoder"] for c in report["columns"] if c["role"].endswith(("candidate feature",
                                                                                        "query feature"))}
    lines = [f"# Starter recipe for {report['path']}: {report['rows']:,} interactions, {report['queries']:,} "
             f"queries, {report['candidates']:,} candidates.",
             "# Train it with `towerkit train THIS_FILE`; every value below may be changed.",
             "", "[recipe]", f"name = {_toml(Path(os.fspath(path)).stem.split('.')[0] or 'my-data')}", "",
             "[dataset]", *(f"{k} = {_toml(v)}" for k, v in dataset.items()), ""]
    for section, side in (("query_tower", "query"), ("candidate_tower", "candidate")):
        lines += [f"[{section}]", 'name = "features"', f'side = "{side}"', "embedding_dim = 32"]
        chosen = {c: e for c, e in encoders.items() if
                  next(r["role"] for r in report["columns"] if r["name"] == c).startswith(side)}
        if chosen:
            inline = ", ".join(f"{json.dumps(c)} = \"{e}\"" for c, e in chosen.items())
            lines.append(f"# encoders = {{ {inline} }}  # inferred; uncomment to change one")
        lines.append("")
    queries_times_candidates = report["queries"] * report["candidates"]
    # The index's k may not exceed the candidates (a toy log may have fewer than 10).
    lines += ["[task]", 'name = "retrieval"', "", "[index]", 'name = "brute-force"',
              f"k = {min(10, report['candidates'])}", "",
              "[train]", f"epochs = {3 if big else 10}", f"batch_size = {batch}", "",
              "[evaluate]", f"exclude_train = {_toml(queries_times_candidates <= 200_000_000)}",
              f"every_epoch = {_toml(not big)}", "",
              "[export]", f"example_query = {_toml(report['most_active_query'])}", ""]
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """The :func:`inspect` report as the text ``towerkit data inspect`` prints."""
    guessed = f" (guessed: {', '.join(report['guessed'])})" if report["guessed"] else ""
    files = report["files"]
    lines = [f"{report['path']}: {len(files)} file{'s' if len(files) != 1 else ''}, {report['rows']:,} interactions",
             f"  query_id = {report['query_id']!r}, candidate_id = {report['candidate_id']!r}, "
             f"timestamp = {report.get('timestamp')!r}{guessed}", "",
             f"  {'column':<24}{'role':<22}{'type':<10}{'distinct':>10}  encoder"]
    for column in report["columns"]:
        lines.append(f"  {column['name']:<24}{column['role']:<22}{column['type']:<10}{column['distinct']:>10,}  "
                     f"{column['encoder']}")
    per_query = report["interactions_per_query"]
    lines += ["", f"  {report['queries']:,} queries, {report['candidates']:,} candidates "
              f"({report['candidates_with_interactions']:,} with interactions), density {report['density']:.4%}",
              f"  interactions per query: min {per_query['min']:,}, median {per_query['median']:g}, "
              f"max {per_query['max']:,}",
              f"  duplicate rows {report['duplicate_rows']:,} (kept); repeated (query, candidate) pairs "
              f"{report['repeated_pairs']:,}"]
    if report["time_range"]:
        span = report["time_range"]
        lines.append(f"  time range {span['first']} .. {span['last']} ({span['days']:,.1f} days)")
    split = report["split"]
    lines.append(f"  split {split['name']}: {split['train']:,} train / {split['validation']:,} validation / "
                 f"{split['test']:,} test")
    lines.append("  most frequent candidates: " + ", ".join(
        f"{c['id']} ({c['count']:,}, {c['share']:.1%})" for c in report["top_candidates"]))
    return "\n".join(lines)
