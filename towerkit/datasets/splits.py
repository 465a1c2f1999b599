"""Validation carves and the leave-last split, shared by the built-in datasets.

The rules match the ``interactions`` dataset's: a validation carve is taken
from train, never from test, and is ``validation_fraction`` of all
interactions; the test rows are the same whether or not a validation set is
carved, so a tuned setting can be re-fitted on all of train and tested once.
"""

from __future__ import annotations

import numpy as np

from towerkit.errors import ConfigError, DataError

SPLITS = ("random", "leave-last")


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


def check_split(split: str) -> str:
    """Returns the split name if towerkit's built-in datasets know it."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    return split
