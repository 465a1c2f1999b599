"""Exception types raised by towerkit.

Every user-facing error derives from :class:`TowerkitError`, so callers (and
the CLI, which turns these into exit code 2) can tell a user's mistake from a
bug.
"""

from __future__ import annotations


KERAS_PREFIX = "Exception encountered when calling layer"


def unwrap_keras_message(message: str) -> str:
    """Undoes Keras' re-raise decoration of errors raised inside a layer's call.

    Keras re-raises ``type(e)("Exception encountered when calling layer ...\n\n
    <message>\n\nCall arguments received ...")``; users should see the message.
    """
    if message.startswith(KERAS_PREFIX):
        parts = message.split("\n\n")
        if len(parts) >= 2:
            return parts[1].strip()
    return message


class TowerkitError(Exception):
    """Base class of every error caused by the user's input or environment.

    Its text is the message itself: Keras' re-raise decoration is undone, and
    subclasses that are also ``KeyError`` print plain text rather than
    ``KeyError``'s quoted repr (this ``__str__`` precedes ``KeyError``'s in
    their method resolution order).
    """

    def __str__(self) -> str:
        return unwrap_keras_message(str(self.args[0])) if self.args else ""


class UnknownComponentError(TowerkitError, KeyError):
    """A component name is not registered under the kind asked for.

    It subclasses ``KeyError`` so that ``except KeyError`` keeps working; its
    message is shown as plain text (see :class:`TowerkitError`).
    """


class DuplicateComponentError(TowerkitError):
    """Two different factories were registered under one name."""


class ConfigError(TowerkitError, ValueError):
    """A configuration value or key is invalid."""


class DataError(TowerkitError):
    """Input data is missing, malformed or fails verification."""


class FeatureError(TowerkitError, KeyError):
    """A component needs a feature key that the data does not have."""
