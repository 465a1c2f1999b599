"""The plugin author's kit: contract checks and a pytest fixture.

Call the checks from your plugin's own tests::

    from towerkit.testing import check_dataset_contract, check_index_contract, check_tower_contract

    def test_my_tower(tmp_path):
        tower = towerkit.create_tower("my-tower", vocabulary=["a", "b"])
        check_tower_contract(tower, {"user_id": ["a", "b", "zz"]}, tmp_path)

    def test_my_index(tmp_path):
        check_index_contract("my-index", tmp_path, min_recall=0.9)

    def test_my_dataset():
        check_dataset_contract(towerkit.load_dataset("my-dataset"))

Each raises :class:`ContractError` (an ``AssertionError``) saying what is broken.

The ``towerkit_plugin`` fixture (installed through towerkit's ``pytest11``
entry point, so it needs no import) registers a plugin object for one test::

    def test_with_my_plugin(towerkit_plugin):
        towerkit_plugin(MyPlugin())
        assert "my-tower" in towerkit.list_towers()

This module is loaded into every pytest run of an environment where towerkit
is installed, so it imports neither TensorFlow (each check imports it when it
runs) nor, at module level, anything pytest-specific beyond the fixture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from towerkit import plugins
from towerkit.components import get_registry
from towerkit.contracts import ContractError, check_tower_output, component_label, dataset_problems
from towerkit.errors import ConfigError

try:
    import pytest
except ImportError:  # the checks work without pytest; only the fixture needs it
    pytest = None

__all__ = ["ContractError", "check_dataset_contract", "check_index_contract", "check_tower_contract",
           "towerkit_plugin"]

PYTEST_MISSING = ("towerkit.testing's towerkit_plugin fixture needs pytest, which is not installed; "
                  "`pip install 'towerkit[test]'` (or pytest itself).")


def check_tower_contract(tower: Any, features: Mapping[str, Sequence[Any]], directory: str | os.PathLike,
                         atol: float = 1e-6) -> None:
    """Checks a tower against the tower contract.

    It must declare its ``feature_keys``, return a float tensor
    ``[batch, embedding_dim]`` (``output_dim``, where a tower defines it),
    rebuild from ``get_config`` with the same outputs, and survive a
    SavedModel round trip.

    Args:
        tower: A built tower (adapted, if it learns vocabularies).
        features: A small batch of raw features, by key.
        directory: An empty directory for the SavedModel.
        atol: Allowed difference between outputs.

    Raises:
        ContractError: with what is broken.
    """
    import tensorflow as tf

    label = component_label(tower)
    keys = getattr(tower, "feature_keys", None)
    if not isinstance(keys, (tuple, list)) or not keys or not all(isinstance(k, str) for k in keys):
        raise ContractError(f"tower '{label}' must declare feature_keys, a non-empty tuple of feature names; "
                            f"got {keys!r}.")
    if not callable(getattr(tower, "get_config", None)) or not callable(getattr(type(tower), "from_config", None)):
        raise ContractError(f"tower '{label}' must be a Keras layer with get_config and from_config; subclass "
                            "towerkit.Tower.")
    inputs = {key: tf.constant(list(values)) for key, values in features.items()}
    missing = [k for k in keys if k not in inputs]
    if missing:
        raise ContractError(f"the batch lacks the tower's declared feature(s) {missing}; pass them in `features`.")
    output = tower(inputs)
    check_tower_output(tower, output, len(next(iter(features.values()))))
    expected = output.numpy()

    try:
        clone = type(tower).from_config(tower.get_config())
        clone(inputs)
    except Exception as exc:  # noqa: BLE001 - any failure here means the config is incomplete
        raise ContractError(f"tower '{label}' cannot be rebuilt with from_config(get_config()) ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())}); get_config must record every constructor argument.") from exc
    clone.set_weights(tower.get_weights())
    if not np.allclose(clone(inputs).numpy(), expected, atol=atol):
        raise ContractError(f"tower '{label}': from_config(get_config()) with the same weights gives different "
                            "outputs; get_config must record every constructor argument.")
    _check_saved_model(tower, inputs, expected, Path(directory) / "tower", atol)


def _check_saved_model(tower: Any, inputs: dict[str, Any], expected: np.ndarray, path: Path, atol: float) -> None:
    import tensorflow as tf

    module = tf.Module()
    module.tower = tower
    specs = {key: tf.TensorSpec([None], value.dtype, name=key) for key, value in inputs.items()
             if key in tower.feature_keys}
    module.serve = tf.function(lambda batch: module.tower(batch), input_signature=[specs])
    tf.saved_model.save(module, str(path))
    reloaded = tf.saved_model.load(str(path))
    if not np.allclose(reloaded.serve({k: inputs[k] for k in specs}).numpy(), expected, atol=atol):
        raise ContractError(f"tower '{component_label(tower)}' gives different outputs after a SavedModel round trip.")


def _check_results(name: str, what: str, results: Any, rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Checks that an index answered ``(scores, ids)``: TF tensors, float ``[rows, k]`` and string ``[rows, k]``."""
    import tensorflow as tf

    if not isinstance(results, (tuple, list)) or len(results) != 2:
        raise ContractError(f"index '{name}': {what} must return a pair (scores, ids), got {type(results).__name__}.")
    scores, ids = results
    for part, value, dtype in (("scores", scores, "float32"), ("ids", ids, "string")):
        if not isinstance(value, tf.Tensor):
            raise ContractError(f"index '{name}': {what} returned {part} as {type(value).__name__}; return TF tensors "
                                "(e.g. tf.constant(array)), as the export and evaluation expect.")
        if value.dtype.name != dtype:
            raise ContractError(f"index '{name}': {what} returned {part} of dtype {value.dtype.name}; they must be "
                                f"{dtype} ({'float scores' if part == 'scores' else 'the identifiers, as bytes'}).")
        if value.shape.as_list() != [rows, k]:
            raise ContractError(f"index '{name}': {what} returned {part} of shape {value.shape.as_list()}; "
                                f"expected [{rows}, {k}] ([queries, k]).")
    return scores.numpy(), ids.numpy().astype(str)


def check_index_contract(name: str, directory: str | os.PathLike | None = None, *, min_recall: float = 0.9,
                         num_candidates: int = 2_000, dim: int = 16, num_queries: int = 100, seed: int = 0,
                         **options: Any) -> float:
    """Checks an index backend against the index contract, on random data.

    The index must expose its default ``k`` as a public attribute; after
    ``index(candidates, identifiers)``, ``index(queries)``,
    ``index(queries, k=...)`` and ``query_with_exclusions`` must return TF
    tensors (float32 scores and string ids, ``[queries, k]``), with
    embeddings as queries, or raw features (a dict) when it was built with a
    ``query_model``; recall@10 against exact search must reach
    ``min_recall``; a bad ``k`` must raise ``towerkit.ConfigError``; and an
    index that saves itself must be found again by its ``parameters()["backend"]``
    and answer the same after ``save`` and ``load``.

    Args:
        name: The registered index name.
        directory: For backends that save themselves: where to test save/load.
        min_recall: The least recall@10 against brute force.
        num_candidates, dim, num_queries, seed: The random problem.
        **options: Passed to the backend.

    Returns:
        The measured recall@10.

    Raises:
        ContractError: with what is broken.
    """
    rng = np.random.default_rng(seed)
    candidates = rng.normal(size=(num_candidates, dim)).astype(np.float32)
    ids = np.array([f"c{i}" for i in range(num_candidates)])
    queries = rng.normal(size=(num_queries, dim)).astype(np.float32)
    index = get_registry("indexes").create(name, k=10, **options)
    if getattr(index, "k", None) != 10:
        raise ContractError(f"index '{name}' was built with k=10 but its public attribute k is "
                            f"{getattr(index, 'k', '(missing)')!r}; store the default k as `self.k`.")
    index.index(candidates, identifiers=ids)
    _, found = _check_results(name, "index(queries)", index(queries), num_queries, 10)
    _check_results(name, "index(queries, k=5)", index(queries, k=5), num_queries, 5)
    _check_exclusions(name, index, queries[:2], found[:2])
    exact = ids[np.argsort(-(queries @ candidates.T), axis=1)[:, :10]]
    recall = _recall(found, exact)
    if recall < min_recall:
        raise ContractError(f"index '{name}' has recall@10 {recall:.3f} against exact search, below {min_recall}.")
    _check_query_model(name, candidates, ids, queries, exact, min_recall, options)
    for bad_k in (0, num_candidates + 1):
        try:
            index(queries[:1], k=bad_k)
        except ConfigError:
            continue
        raise ContractError(f"index '{name}' accepted k={bad_k}; raise towerkit.ConfigError (see towerkit.check_k).")
    if getattr(index, "saves_itself", False):
        _check_save_and_load(name, index, queries, found, directory)
    return recall


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def _check_query_model(name: str, candidates: np.ndarray, ids: np.ndarray, queries: np.ndarray, exact: np.ndarray,
                       min_recall: float, options: dict[str, Any]) -> None:
    """With a query model, the index must take raw query features (a dict) and embed them through it."""
    import tensorflow as tf

    class FeatureQueryModel(tf.keras.layers.Layer):
        def call(self, features):
            return tf.convert_to_tensor(features["query_embedding"])

    index = get_registry("indexes").create(name, k=10, query_model=FeatureQueryModel(), **options)
    index.index(candidates, identifiers=ids)
    what = "index({feature: values}) with a query_model"
    _, found = _check_results(name, what, index({"query_embedding": tf.constant(queries)}), len(queries), 10)
    if _recall(found, exact) < min_recall:
        raise ContractError(f"index '{name}': {what} answers with recall@10 {_recall(found, exact):.3f}; it must "
                            "run the raw features through query_model and search with the embeddings.")


def _check_exclusions(name: str, index: Any, queries: np.ndarray, found: np.ndarray) -> None:
    import tensorflow as tf

    exclusions = tf.constant(found[:, :1])
    _, kept = _check_results(name, "query_with_exclusions(queries, exclusions, k=5)",
                             index.query_with_exclusions(queries, exclusions, k=5), len(queries), 5)
    if any(row_excluded[0] in row for row_excluded, row in zip(found[:, :1], kept)):
        raise ContractError(f"index '{name}': query_with_exclusions returned an identifier it was told to exclude.")


def _check_save_and_load(name: str, index: Any, queries: np.ndarray, found: np.ndarray,
                         directory: str | os.PathLike | None) -> None:
    if directory is None:
        raise ContractError(f"index '{name}' saves itself; pass a directory to test save and load.")
    parameters = index.parameters()
    backend = parameters.get("backend") if isinstance(parameters, Mapping) else None
    try:
        loader = get_registry("indexes").get(backend).load() if isinstance(backend, str) else None
    except KeyError:
        loader = None
    if not callable(getattr(loader, "load", None)):
        raise ContractError(f"index '{name}' saves itself, but parameters()['backend'] is {backend!r}, which does not "
                            "name a registered index with a load classmethod; an export finds its loader by that name, "
                            f"so set backend = '{name}'.")
    path = Path(directory) / "index"
    index.save(path)
    reloaded = loader.load(path)
    if not np.array_equal(np.asarray(reloaded(queries)[1]).astype(str), found):
        raise ContractError(f"index '{name}' answers differently after save and load.")


def check_dataset_contract(dataset: Any) -> None:
    """Checks a dataset against the dataset contract.

    Its id keys must name columns (the candidate id also in the candidate set),
    columns must have one value per row, the train and test rows must be
    non-empty, disjoint indices, the tf.data views must yield the declared
    feature keys, candidate ids must be unique, and every test interaction's
    candidate must be in the candidate set.

    Raises:
        ContractError: with what is broken.
    """
    problems = dataset_problems(dataset)
    if problems:
        raise ContractError(problems[0])
    label = component_label(dataset)
    if set(np.asarray(dataset.train_rows).tolist()) & set(np.asarray(dataset.test_rows).tolist()):
        raise ContractError(f"dataset '{label}' has rows in both train and test.")
    for view in ("train", "test"):
        element = next(iter(getattr(dataset, view).take(1)))
        if set(element) != set(dataset.feature_keys):
            raise ContractError(f"dataset '{label}': its {view} view yields {sorted(element)}, but it declares "
                                f"{sorted(dataset.feature_keys)}.")
    candidate_ids = np.asarray(dataset.candidate_features[dataset.candidate_id_key])
    if len(np.unique(candidate_ids)) != len(candidate_ids):
        raise ContractError(f"dataset '{label}' lists some candidate ids twice in candidate_features; give each "
                            "candidate one row.")
    tested = np.asarray(dataset.interactions[dataset.candidate_id_key])[np.asarray(dataset.test_rows)]
    unknown = np.setdiff1d(tested, candidate_ids)
    if len(unknown):
        raise ContractError(f"dataset '{label}': {len(unknown)} candidate id(s) in test interactions are not in "
                            f"candidate_features (e.g. {unknown[0]!r}); every candidate must be in the candidate set.")


def _towerkit_plugin() -> Iterator[Callable[..., Any]]:
    """Registers plugin objects for the duration of one test, and unregisters them after."""
    names: list[str] = []

    def register(plugin: Any, name: str | None = None) -> Any:
        name = name or f"test-plugin-{len(names)}-{id(plugin)}"
        names.append(name)
        return plugins.register_plugin(plugin, name=name)

    yield register
    for name in reversed(names):
        plugins.unregister_plugin(name)


if pytest is not None:
    towerkit_plugin = pytest.fixture(name="towerkit_plugin")(_towerkit_plugin)


def __getattr__(name: str) -> Any:
    if name == "towerkit_plugin":  # only reached when pytest is missing
        raise ImportError(PYTEST_MISSING)
    raise AttributeError(f"module 'towerkit.testing' has no attribute '{name}'")
