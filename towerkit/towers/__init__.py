"""Tower layers: each maps a dict of raw features to embeddings ``[batch, dim]``."""
