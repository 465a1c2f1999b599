"""Index backends: top-k retrieval over candidate embeddings, exportable as SavedModels."""
