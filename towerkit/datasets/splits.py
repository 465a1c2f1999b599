"""Validation carves, the leave-last and the cold-start-users splits, shared by the built-in datasets.

The rules match the ``interactions`` dataset's: a validation carve is taken
from train, never from test, and is ``validation_fraction`` of all
interactions; the test rows are the same whether or not a validation set is
carved, so a tuned setting can be re-fitted on all of train and tested once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from towerkit.errors import ConfigError, DataError
from towerkit.validation import check_positive_int

SPLITS = ("random", "leave-last", "cold-start")


def check_validation_fraction(fraction: float, train_fraction: float = 1.0) -> float:
    """Returns the fraction if it lies in [0, train_fraction); raises ConfigError otherwise."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < train_fraction:
        raise ConfigError(f"validation_fraction must be a number in [0, {train_fraction:g}) (a share of all "
                          f"interactions, carved from train), got {fraction!r}; 0 means no validation set.")
    return float(fraction)


def carve_validation(train_rows: np.ndarray, num_rows: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): the last ``round(num_rows * fraction)`` of the (shuffled) train rows are validation.

    Raises:
        DataError: Nothing would be left to train on.
    """
    count = int(round(num_rows * fraction))
    if count >= len(train_rows):
        raise DataError(f"validation_fraction={fraction:g} takes all {len(train_rows):,} training rows; use a smaller one.")
    return train_rows[: len(train_rows) - count], train_rows[len(train_rows) - count:]


def positions_from_end(query_ids: np.ndarray, times: np.ndarray) -> np.ndarray:
    """For each row, how many of its query's rows come after it by time (ties: later row later); 0 = last."""
    _, codes = np.unique(query_ids, return_inverse=True)
    rows = np.arange(len(codes))
    order = np.lexsort((rows, times, codes))
    sizes = np.bincount(codes)
    starts = np.cumsum(sizes) - sizes
    sorted_codes = codes[order]
    from_end = np.empty(len(codes), dtype=np.int64)
    from_end[order] = sizes[sorted_codes] - 1 - (np.arange(len(order)) - starts[sorted_codes])
    return from_end


def leave_last(query_ids: np.ndarray, times: np.ndarray, validation: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, test, validation): each query's last interaction by time is test; with ``validation``, its one before is validation.

    A query with too few interactions for that stays wholly in train, so every
    test (and validation) query has training history.
    """
    from_end = positions_from_end(query_ids, times)
    _, codes = np.unique(query_ids, return_inverse=True)
    sizes = np.bincount(codes)[codes]
    held = 2 if validation else 1
    eligible = sizes > held
    test = np.flatnonzero(eligible & (from_end == 0))
    valid = np.flatnonzero(eligible & (from_end == 1)) if validation else np.zeros(0, dtype=np.int64)
    train = np.flatnonzero(~eligible | (from_end >= held))
    if not len(test):
        raise DataError(f"split = \"leave-last\" leaves no test rows: every query has {held} or fewer interactions.")
    return train, test, valid


@dataclass(frozen=True)
class ColdStartSplit:
    """Rows of a cold-start-users split; every array indexes the interactions.

    Attributes:
        train: Every interaction of the training queries.
        test: The test queries' interactions after their first k.
        validation: The validation queries' interactions after their first k (empty without validation).
        history: The held-out (test and validation) queries' first k interactions: their given
            history, never a training example.
    """

    train: np.ndarray
    test: np.ndarray
    validation: np.ndarray
    history: np.ndarray


def check_cold_start(users_fraction: float, validation_fraction: float, history_size: int) -> None:
    """Raises ConfigError unless the shares of held-out queries leave some to train on, and k is positive."""
    for name, value in (("cold_start_users", users_fraction), ("validation_fraction", validation_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be a share of the users in [0, 1), got {value!r}.")
    if not 0.0 < users_fraction or users_fraction + validation_fraction >= 1.0:
        raise ConfigError(f"cold_start_users ({users_fraction:g}) must be above 0, and with validation_fraction "
                          f"({validation_fraction:g}) below 1, so some users are left to train on.")
    check_positive_int(history_size, "cold_start_history")


def cold_start_split(query_ids: np.ndarray, times: np.ndarray, users_fraction: float, validation_fraction: float,
                     history_size: int, seed: int) -> ColdStartSplit:
    """Holds out whole queries (users): each keeps its first ``history_size`` interactions as history.

    A seeded draw picks ``round(users_fraction * queries)`` test queries and,
    after them in the same draw, ``round(validation_fraction * queries)``
    validation queries, among those with more than ``history_size``
    interactions; so the test queries are the same with and without a
    validation share. Each held-out query's first ``history_size``
    interactions by time (ties: the earlier row first) are its given history;
    the rest are its test (or validation) targets. Every other query trains.

    Raises:
        ConfigError: Bad shares or history size.
        DataError: Too few queries with more than ``history_size`` interactions.
    """
    check_cold_start(users_fraction, validation_fraction, history_size)
    from_end = positions_from_end(query_ids, times)
    queries, codes = np.unique(query_ids, return_inverse=True)
    sizes = np.bincount(codes)
    position = sizes[codes] - 1 - from_end  # 0 = the query's first interaction
    eligible = np.flatnonzero(sizes > history_size)
    num_test = max(1, int(round(users_fraction * len(queries))))
    num_validation = int(round(validation_fraction * len(queries)))
    if num_test + num_validation >= len(eligible):
        raise DataError(f"split = \"cold-start\" needs more than {num_test + num_validation:,} users with over "
                        f"{history_size} interactions, and this data has {len(eligible):,}; lower cold_start_users, "
                        f"validation_fraction or cold_start_history.")
    drawn = np.random.default_rng(seed).permutation(eligible)
    role = np.zeros(len(queries), dtype=np.int8)  # 0 train, 1 test, 2 validation
    role[drawn[:num_test]] = 1
    role[drawn[num_test:num_test + num_validation]] = 2
    row_role, given = role[codes], position < history_size
    return ColdStartSplit(train=np.flatnonzero(row_role == 0), test=np.flatnonzero((row_role == 1) & ~given),
                          validation=np.flatnonzero((row_role == 2) & ~given),
                          history=np.flatnonzero((row_role > 0) & given))


def check_split(split: str) -> str:
    """Returns the split name if towerkit's built-in datasets know it."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    return split
