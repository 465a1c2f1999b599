"""The contracts towerkit relies on, checked where a broken component would otherwise fail late.

``towerkit.assemble`` calls :func:`check_assembly`: it checks the dataset's
shape (its id keys, columns and splits) and runs a probe batch of real rows
through both towers, so that a tower returning ``[batch, 8]`` against an
``embedding_dim`` of 32, or ``[batch, 1, 32]``, is one clear error naming the
registered component, not an 80-line traceback at ``fit`` or a gather error in
evaluation. ``towerkit.testing`` builds its fuller checks on the same pieces.

TensorFlow is imported only inside the functions that run a tower.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from towerkit.errors import TowerkitError, unwrap_keras_message

PROBE_ROWS = 3


class ContractError(TowerkitError, AssertionError):
    """A component breaks a contract towerkit relies on.

    It is a :class:`towerkit.TowerkitError` (one line, exit 2 on the CLI) and
    an ``AssertionError`` (a plain test failure in a plugin's own tests).
    """


def component_label(component: Any) -> str:
    """The name to show for a component: its registered name, else its own name, else its class."""
    return (getattr(component, "registered_name", None) or getattr(component, "name", None)
            or type(component).__name__)


def tower_width(tower: Any) -> int | None:
    """The output width a tower declares: ``output_dim``, else ``embedding_dim``, else None."""
    for attribute in ("output_dim", "embedding_dim"):
        width = getattr(tower, attribute, None)
        if isinstance(width, int) and not isinstance(width, bool):
            return width
    return None


def check_tower_output(tower: Any, output: Any, batch_size: int, role: str = "") -> None:
    """Raises ContractError unless ``output`` is a float tensor ``[batch_size, declared width]``.

    Args:
        tower: The tower that produced ``output``.
        output: What ``tower(batch)`` returned.
        batch_size: Rows in the batch.
        role: ``"query"`` or ``"candidate"``, for the message.
    """
    import tensorflow as tf

    what = f"{role + ' ' if role else ''}tower '{component_label(tower)}'"
    if not isinstance(output, (tf.Tensor, tf.Variable)):
        raise ContractError(f"{what} returned a {type(output).__name__}, not a tensor; its call must return a "
                            "float tf.Tensor [batch, embedding_dim].")
    width = tower_width(tower)
    expected = f"[{batch_size}, {width if width is not None else 'dim'}]"
    shape = output.shape.as_list()
    if len(shape) != 2 or shape[0] != batch_size or (width is not None and shape[1] != width):
        raise ContractError(
            f"{what} returns shape {shape} for a batch of {batch_size}, but a tower must return {expected} "
            "([batch, embedding_dim]); fix its call (e.g. pool or squeeze extra axes, or project to embedding_dim)."
        )
    if not output.dtype.is_floating:
        raise ContractError(f"{what} returns {output.dtype.name} embeddings; a tower must return floats "
                            "(e.g. cast with tf.cast(x, tf.float32)).")


def probe_towers(query_tower: Any, candidate_tower: Any, data: Any) -> None:
    """Runs a few real training rows through both towers and checks their outputs agree.

    The candidate tower runs first, as the retrieval task's candidate pass
    does, so that the towers' weights are created in their usual order.

    Raises:
        ContractError: A tower's output is not ``[batch, width]``, or the two
            widths differ.
    """
    from towerkit.datasets.base import to_tf_dataset

    rows = np.asarray(data.train_rows)[:PROBE_ROWS]
    keys = dict.fromkeys([*query_tower.feature_keys, *candidate_tower.feature_keys])
    # to_tf_dataset turns lists (e.g. genres) into ragged columns exactly as training batches them.
    batch = next(iter(to_tf_dataset({k: data.column(k, rows) for k in keys}).batch(len(rows))))
    outputs = {}
    for role, tower in (("candidate", candidate_tower), ("query", query_tower)):
        try:
            outputs[role] = tower(batch)
        except TowerkitError:
            raise
        except Exception as exc:  # noqa: BLE001 - report any failure of a plugin's call as its own
            raise ContractError(f"{role} tower '{component_label(tower)}' fails on a probe batch of {len(rows)} "
                                f"rows of '{data.name}' ({type(exc).__name__}: {_first_line(exc)}).") from exc
        check_tower_output(tower, outputs[role], len(rows), role)
    query_width, candidate_width = outputs["query"].shape[1], outputs["candidate"].shape[1]
    if query_width != candidate_width:
        raise ContractError(
            f"query tower '{component_label(query_tower)}' returns {query_width}-wide embeddings but candidate "
            f"tower '{component_label(candidate_tower)}' returns {candidate_width}-wide ones; give both the same "
            "embedding_dim."
        )


def _first_line(exc: BaseException) -> str:
    text = unwrap_keras_message(str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def dataset_problems(dataset: Any) -> list[str]:
    """What is wrong with a dataset's structure, cheaply (no pass over tf.data); empty when sound.

    Checks that the id keys are strings naming columns of the interactions
    (and the candidate id a column of the candidate set), that every column of
    a table has one value per row, and that the train/test rows are non-empty
    integer indices into the interactions.
    """
    name = component_label(dataset)
    problems = []
    for attribute in ("interactions", "candidate_features", "train_rows", "test_rows", "query_id_key",
                      "candidate_id_key"):
        if not hasattr(dataset, attribute):
            problems.append(f"dataset '{name}' has no attribute '{attribute}'; subclass towerkit.RetrievalDataset "
                            "and set it (see docs/plugins.md, 'The dataset contract').")
    if not callable(getattr(dataset, "column", None)):
        problems.append(f"dataset '{name}' has no column() method, which towerkit reads interaction rows with; "
                        "subclass towerkit.RetrievalDataset (see docs/plugins.md, 'The dataset contract').")
    if problems:
        return problems
    problems += _table_problems(name, "interactions", dataset.interactions)
    problems += _table_problems(name, "candidate_features", dataset.candidate_features)
    for attribute, table in (("query_id_key", "interactions"), ("candidate_id_key", "interactions"),
                             ("candidate_id_key", "candidate_features")):
        key, columns = getattr(dataset, attribute), getattr(dataset, table)
        if not isinstance(key, str) or not isinstance(columns, Mapping) or key not in columns:
            available = ", ".join(sorted(columns)) if isinstance(columns, Mapping) else "(not a mapping)"
            problems.append(f"dataset '{name}' has {attribute}={key!r}, which is not a column of its {table} "
                            f"({available}); set {attribute} on the class to the right column.")
    if not problems:
        problems += _split_problems(name, dataset)
    return problems


def _table_problems(name: str, table: str, columns: Any) -> list[str]:
    if not isinstance(columns, Mapping) or not columns:
        return [f"dataset '{name}': {table} must be a non-empty dict of column arrays, got {type(columns).__name__}."]
    lengths = {key: len(values) for key, values in columns.items()}
    if len(set(lengths.values())) > 1:
        return [f"dataset '{name}': the columns of {table} have different lengths ({lengths}); give every column "
                "one value per row."]
    return []


def _split_problems(name: str, dataset: Any) -> list[str]:
    num_rows = len(next(iter(dataset.interactions.values())))
    problems = []
    for attribute in ("train_rows", "test_rows"):
        rows = np.asarray(getattr(dataset, attribute))
        if rows.ndim != 1 or not len(rows) or not np.issubdtype(rows.dtype, np.integer):
            problems.append(f"dataset '{name}': {attribute} must be a non-empty 1-D array of integer row indices, "
                            f"got shape {rows.shape} of {rows.dtype}.")
        elif rows.min() < 0 or rows.max() >= num_rows:
            problems.append(f"dataset '{name}': {attribute} holds indices outside 0..{num_rows - 1}, the rows of "
                            "its interactions.")
    return problems


def check_dataset(dataset: Any) -> None:
    """Raises ContractError with the first of :func:`dataset_problems`, if any."""
    problems = dataset_problems(dataset)
    if problems:
        raise ContractError(problems[0])


def check_assembly(query_tower: Any, candidate_tower: Any, data: Any | None) -> None:
    """What ``towerkit.assemble`` checks once the towers are built and adapted: the dataset, then a probe batch."""
    if data is None:  # without data there is no real batch to probe with; fit will run the towers
        return
    check_dataset(data)
    probe_towers(query_tower, candidate_tower, data)
