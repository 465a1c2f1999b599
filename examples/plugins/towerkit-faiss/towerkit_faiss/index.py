"""The faiss index backend: searches in faiss, saves and loads itself in faiss' format."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from towerkit import ConfigError, check_dims, check_k, check_positive_int

KINDS = ("flat", "ivf")


class FaissIndex:
    """Top-k by inner product with faiss.

    Args:
        query_model: Maps raw query features to embeddings; None to query with embeddings.
        k: Default number of results.
        kind: ``"flat"`` (exact) or ``"ivf"`` (inverted file, approximate).
        nlist: IVF lists; default about sqrt(number of candidates).
        nprobe: IVF lists searched per query.

    Example:
        >>> index = towerkit.create_index("faiss", query_model=model.query_tower, kind="ivf")
    """

    backend = "faiss"
    # Not a TF layer: the export holds the query tower, and this index saves itself beside it.
    saves_itself = True

    def __init__(self, query_model: Any = None, k: int = 10, kind: str = "flat", nlist: int | None = None,
                 nprobe: int = 8):
        if kind not in KINDS:
            raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}.")
        self.query_model, self.k, self.kind = query_model, check_k(k, None, "faiss"), kind
        self.nlist = None if nlist is None else check_positive_int(nlist, "nlist")
        self.nprobe = check_positive_int(nprobe, "nprobe")
        self.name = "faiss"
        self._index = None
        self.ids: np.ndarray | None = None
        self.num_candidates: int | None = None
        self.dim: int | None = None

    def index(self, candidates: Any, identifiers: Any = None) -> "FaissIndex":
        import faiss

        vectors = np.ascontiguousarray(np.asarray(candidates, dtype=np.float32))
        if vectors.ndim != 2 or not len(vectors):
            raise ConfigError(f"candidates must be a non-empty [num_candidates, dim] matrix, got {vectors.shape}.")
        self.num_candidates, self.dim = vectors.shape
        ids = np.arange(len(vectors)) if identifiers is None else np.asarray(identifiers)
        if len(ids) != len(vectors):
            raise ConfigError(f"got {len(vectors)} candidates but {len(ids)} identifiers; pass one per candidate.")
        self.ids = np.array([i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in ids.tolist()])
        if self.kind == "flat":
            index = faiss.IndexFlatIP(self.dim)
        else:
            nlist = min(self.nlist or max(1, int(math.sqrt(len(vectors)))), len(vectors))
            self.nlist = nlist
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            index.nprobe = min(self.nprobe, nlist)
        index.add(vectors)
        self._index = index
        check_k(self.k, self.num_candidates, self.name)
        return self

    def _embed(self, queries: Any) -> np.ndarray:
        # Raw features (a dict, or string ids) go through the query model; embeddings pass as they are.
        raw = isinstance(queries, Mapping) or tf.convert_to_tensor(queries).dtype == tf.string
        if raw:
            if self.query_model is None:
                raise ConfigError("index 'faiss' has no query model, so it needs query embeddings, not raw features.")
            queries = self.query_model(queries)
        queries = tf.convert_to_tensor(queries, dtype=tf.float32)
        check_dims(queries, self.dim, self.name)
        return np.ascontiguousarray(queries.numpy())

    def _search(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self._index.search(embeddings, k)
        found = np.where(rows >= 0, self.ids[np.maximum(rows, 0)], "")
        scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
        return scores, found

    def __call__(self, queries: Any, k: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        if self._index is None:
            raise ConfigError("index 'faiss' is empty; call index() with candidates before querying.")
        k = check_k(self.k if k is None else k, self.num_candidates, self.name)
        scores, found = self._search(self._embed(queries), k)
        return tf.constant(scores), tf.constant(found)

    def query_with_exclusions(self, queries: Any, exclusions: Any, k: int | None = None):
        k = check_k(self.k if k is None else k, self.num_candidates, self.name)
        excluded = np.asarray(tf.convert_to_tensor(exclusions).numpy()).astype(str)
        wanted = min(k + excluded.shape[1], self.num_candidates)
        scores, found = self._search(self._embed(queries), wanted)
        keep = ~(found[:, :, None] == excluded[:, None, :]).any(axis=2) & (found != "")
        rows_scores, rows_found = [], []
        for row_scores, row_found, row_keep in zip(scores, found, keep):
            picked_scores = list(row_scores[row_keep][:k]) + [-np.inf] * k
            picked = list(row_found[row_keep][:k]) + [""] * k
            rows_scores.append(picked_scores[:k])
            rows_found.append(picked[:k])
        return tf.constant(np.array(rows_scores, dtype=np.float32)), tf.constant(np.array(rows_found))

    def parameters(self) -> dict[str, Any]:
        return {"backend": self.backend, "external": True, "kind": self.kind, "nlist": self.nlist,
                "nprobe": self.nprobe, "k": self.k, "num_candidates": self.num_candidates, "dim": self.dim}

    def save(self, path: str | Path) -> None:
        """Writes the faiss index, the identifiers and the parameters into a directory."""
        import faiss

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(path / "faiss.index"))
        (path / "ids.json").write_text(json.dumps(self.ids.tolist()), encoding="utf-8")
        (path / "params.json").write_text(json.dumps(self.parameters()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, query_model: Any = None) -> "FaissIndex":
        """Reads an index written by :meth:`save`."""
        import faiss

        path = Path(path)
        params = json.loads((path / "params.json").read_text(encoding="utf-8"))
        index = cls(query_model, params["k"], params["kind"], params["nlist"], params["nprobe"])
        index._index = faiss.read_index(str(path / "faiss.index"))
        index.ids = np.array(json.loads((path / "ids.json").read_text(encoding="utf-8")))
        index.num_candidates, index.dim = params["num_candidates"], params["dim"]
        return index
