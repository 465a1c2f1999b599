"""Refusing an embedding table or Dense layer too large for this machine, before it is allocated.

A width such as ``embedding_dim = 1000000000`` used to end in an out-of-memory
kill (or a crash in TensorFlow's allocator) partway into a run. Towers call
:func:`check_weights_fit` when they know a table's shape, at construction or
when they adapt to data, which is before any training starts.
"""

from __future__ import annotations

from towerkit.errors import ConfigError
from towerkit.resources import available_memory_bytes, format_bytes, training_bytes


def check_weights_fit(rows: int, width: int, option: str, who: str) -> None:
    """Raises ConfigError naming ``option`` if a ``rows x width`` float32 weight cannot be trained here.

    Training holds about TRAINING_COPIES copies of every weight (the weight, its
    gradient and the optimizer's slots).

    Args:
        rows: Rows of the table (vocabulary size plus OOV rows), or a Dense layer's input width.
        width: Its width: the embedding dimension or the layer's units.
        option: The option that sets the size, as the user wrote it (e.g. ``"embedding_dim"``).
        who: What owns the weight, e.g. ``"tower 'user_tower'"``.
    """
    available = available_memory_bytes()
    if available is None:
        return
    needed = training_bytes(rows * width)
    if needed > available:
        raise ConfigError(
            f"{who} would need a {rows:,} x {width:,} weight table, about {format_bytes(needed)} of memory "
            f"to train, but only {format_bytes(available)} is available; choose a smaller {option}."
        )
