"""Serving an export: load it and query it from Python (and, later, over HTTP)."""

from towerkit.serving.loaded import LoadedExport, load_export, read_metadata

__all__ = ["LoadedExport", "load_export", "read_metadata"]
