"""Checks of option values that components share; TensorFlow-free, so plugins may use them anywhere.

They raise :class:`towerkit.ConfigError` with one sentence saying what is
wrong and what to pass instead, as every towerkit error does::

    self.num_bins = towerkit.check_positive_int(num_bins, "num_bins")
"""

from __future__ import annotations

from typing import Any

from towerkit.errors import ConfigError


def check_positive_int(value: Any, name: str) -> int:
    """Returns ``value`` if it is a positive int (not a bool).

    Args:
        value: The option's value.
        name: The option's name, for the message.

    Raises:
        ConfigError: ``value`` is not a positive integer.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}; pass e.g. {name}=32.")
    return value
