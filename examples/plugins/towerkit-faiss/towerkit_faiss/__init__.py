"""towerkit-faiss: registers the `faiss` index backend."""

import towerkit


@towerkit.hookimpl
def register_indexes(register):
    register(
        "faiss",
        "towerkit_faiss.index:FaissIndex",
        description="faiss-cpu inner-product search: exact (flat) or IVF.",
    )
