"""Each interaction's history: the items its query met strictly before it, capped at the last N.

Computed once for every row, vectorised (sorts and cumulative sums, no loop
over rows). Only ``source_rows`` (the training rows) ever enter a history, so
no test or validation item is ever a model input; a row never sees its own
item, nor any item at its own timestamp or later.
"""

from __future__ import annotations

import numpy as np

from towerkit.datasets.splits import positions_from_end
from towerkit.validation import check_positive_int


def history_column(query_ids: np.ndarray, times: np.ndarray, items: np.ndarray, source_rows: np.ndarray,
                   max_length: int) -> np.ndarray:
    """Per row, the (at most ``max_length``) latest source items of its query strictly before its time.

    Args:
        query_ids: Each row's query (user) id.
        times: Each row's timestamp.
        items: Each row's item, as an integer id.
        source_rows: The rows whose items may appear in histories (the training rows).
        max_length: The cap N: only the last N earlier items are kept, oldest first.

    Returns:
        An object array, one int64 array per row (oldest first; possibly empty).
    """
    check_positive_int(max_length, "history_length")
    num_rows = len(query_ids)
    _, codes = np.unique(query_ids, return_inverse=True)
    order = np.lexsort((np.arange(num_rows), times, codes))
    sorted_codes, sorted_times = codes[order], times[order]
    # Where each run of one query at one timestamp starts: a row's history ends there (ties excluded).
    new_run = np.ones(num_rows, dtype=bool)
    new_run[1:] = (sorted_codes[1:] != sorted_codes[:-1]) | (sorted_times[1:] != sorted_times[:-1])
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(num_rows), 0))
    new_query = np.ones(num_rows, dtype=bool)
    new_query[1:] = sorted_codes[1:] != sorted_codes[:-1]
    query_start = np.maximum.accumulate(np.where(new_query, np.arange(num_rows), 0))

    is_source = np.zeros(num_rows, dtype=bool)
    is_source[source_rows] = True
    sorted_source = is_source[order]
    source_before = np.concatenate([[0], np.cumsum(sorted_source)])  # source rows before each sorted position
    source_items = np.asarray(items)[order][sorted_source]
    stop = source_before[run_start]
    start = np.maximum(source_before[query_start], stop - max_length)
    lengths = stop - start
    # Flat gather of every history: start of each row's slice plus 0 .. length-1.
    offsets = np.repeat(start - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    flat = source_items[offsets + np.arange(lengths.sum())].astype(np.int64)
    histories = np.empty(num_rows, dtype=object)
    # Element by element: a slice assignment of equal-length arrays would make a 2-D array instead.
    for row, history in zip(order.tolist(), np.split(flat, np.cumsum(lengths)[:-1]) if num_rows else []):
        histories[row] = history
    return histories


def given_history_column(query_ids: np.ndarray, times: np.ndarray, items: np.ndarray, train_rows: np.ndarray,
                         given_rows: np.ndarray, max_length: int) -> np.ndarray:
    """:func:`history_column` for a cold-start split: a held-out query's history is exactly its given rows.

    Training queries get their training items strictly before each row's
    time, as in :func:`history_column`. A held-out query (one with given rows:
    its first interactions) gets, on each of its other rows, all its given
    items (the last ``max_length``): they are ordered by time with ties broken
    by row, the order the split drew them in, so an item rated in the same
    second as a target still counts as given.

    Args:
        query_ids, times, items: As in :func:`history_column`.
        train_rows: The training rows.
        given_rows: The held-out queries' given history rows.
        max_length: The cap N.
    """
    _, codes = np.unique(query_ids, return_inverse=True)
    held_out = np.isin(codes, codes[given_rows])
    # Within a query only the order of times matters, so a held-out query's rows can use their strict rank.
    order = np.where(held_out, -positions_from_end(query_ids, times), times)
    return history_column(query_ids, order, items, np.union1d(train_rows, given_rows), max_length)


def _query_time_order(query_ids: np.ndarray, times: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions into ``rows`` that sort them by query, then time, ties by row: the order the cold-start split uses."""
    return np.lexsort((rows, times[rows], query_ids[rows]))


def first_items_history(query_ids: np.ndarray, times: np.ndarray, items: np.ndarray, rows: np.ndarray,
                        count: int, histories: np.ndarray) -> np.ndarray:
    """``histories`` with each of ``rows`` given its query's first ``count`` items among ``rows`` instead.

    Training shaped like a cold-start test: a held-out user is served from its
    first ``count`` interactions and asked for all its later ones, so a
    training row after its query's first ``count`` gets exactly those as
    history, and a row among them gets the ones before it. Order is by time,
    ties broken by row, as the cold-start split draws the given items.

    Returns:
        A new object array; rows outside ``rows`` keep their history.
    """
    check_positive_int(count, "cold_start_history")
    result = histories.copy()
    rows = np.asarray(rows)
    order = rows[_query_time_order(query_ids, times, rows)]
    queries = query_ids[order]
    bounds = np.flatnonzero(np.r_[True, queries[1:] != queries[:-1], True]) if len(order) else np.zeros(1, int)
    for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        first = np.asarray(items[order[start:min(stop, start + count)]], dtype=np.int64)
        for position, row in enumerate(order[start:stop].tolist()):
            result[row] = first[:position] if position < count else first
    return result


def rows_after_first(query_ids: np.ndarray, times: np.ndarray, rows: np.ndarray, count: int) -> np.ndarray:
    """``rows`` without each query's first ``count`` of them by time (ties broken by row), in their given order.

    A cold-start test asks for a held-out user's interactions after their
    first ``count`` only, each from exactly those ``count``: training on just
    the same shape leaves out the rows among the first, whose shorter
    histories and first-rated items the test never asks about.
    """
    check_positive_int(count, "cold_start_history")
    rows = np.asarray(rows)
    order = _query_time_order(query_ids, times, rows)
    queries = query_ids[rows[order]]
    starts = np.flatnonzero(np.r_[True, queries[1:] != queries[:-1]]) if len(order) else np.zeros(0, int)
    position = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = np.zeros(len(rows), dtype=bool)
    keep[order] = position >= count
    return rows[keep]
