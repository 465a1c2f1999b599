"""Serving an export: load it and query it from Python (:func:`load_export`) or over HTTP (``towerkit serve``)."""

from towerkit.serving.loaded import LoadedExport, load_export, read_metadata
from towerkit.serving.queries import QueryError

__all__ = ["LoadedExport", "QueryError", "load_export", "read_metadata"]
