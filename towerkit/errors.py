"""Exception types raised by towerkit.

Every user-facing error derives from :class:`TowerkitError`, so callers (and
the CLI, which turns these into exit code 2) can tell a user's mistake from a
bug.
"""

from __future__ import annotations


class TowerkitError(Exception):
    """Base class of every error caused by the user's input or environment."""


class UnknownComponentError(TowerkitError, KeyError):
    """A component name is not registered under the kind asked for.

    It subclasses ``KeyError`` so that ``except KeyError`` keeps working, but
    its message is shown as plain text rather than KeyError's quoted repr.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DuplicateComponentError(TowerkitError):
    """Two different factories were registered under one name."""


class ConfigError(TowerkitError, ValueError):
    """A configuration value or key is invalid."""


class DataError(TowerkitError):
    """Input data is missing, malformed or fails verification."""


class FeatureError(TowerkitError, KeyError):
    """A component needs a feature key that the data does not have."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
