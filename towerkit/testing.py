"""The plugin author's kit: contract checks and pytest fixtures.

Call the checks from your plugin's own tests::

    from towerkit.testing import check_tower_contract, check_index_contract

    def test_my_tower(tmp_path):
        tower = towerkit.create_tower("my-tower", vocabulary=["a", "b"])
        check_tower_contract(tower, {"user_id": ["a", "b", "zz"]}, tmp_path)

    def test_my_index(tmp_path):
        check_index_contract("my-index", tmp_path, min_recall=0.9)

The ``towerkit_plugin`` fixture (installed through towerkit's ``pytest11``
entry point, so it needs no import) registers a plugin object for one test::

    def test_with_my_plugin(towerkit_plugin):
        towerkit_plugin(MyPlugin())
        assert "my-tower" in towerkit.list_towers()
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pytest

from towerkit import plugins  # first: it selects Keras 2 before TensorFlow loads
from towerkit.registry import registry

import tensorflow as tf  # noqa: E402


class ContractError(AssertionError):
    """A component breaks the contract towerkit relies on."""


def _features(features: Mapping[str, Sequence[Any]]) -> dict[str, tf.Tensor]:
    return {key: tf.constant(list(values)) for key, values in features.items()}


def check_tower_contract(tower: Any, features: Mapping[str, Sequence[Any]], directory: str | os.PathLike,
                         atol: float = 1e-6) -> None:
    """Checks that a tower declares its features, round-trips its config, and survives a SavedModel.

    Args:
        tower: A built tower (adapted, if it learns vocabularies).
        features: A small batch of raw features, by key.
        directory: An empty directory for the SavedModel.
        atol: Allowed difference between outputs.

    Raises:
        ContractError: with what is broken.
    """
    inputs = _features(features)
    missing = [k for k in tower.feature_keys if k not in inputs]
    if missing:
        raise ContractError(f"the batch lacks the tower's declared feature(s) {missing}; pass them in `features`.")
    expected = tower(inputs).numpy()
    if expected.ndim != 2 or expected.shape[0] != len(next(iter(features.values()))):
        raise ContractError(f"a tower must return [batch, dim]; got shape {expected.shape}.")

    clone = type(tower).from_config(tower.get_config())
    clone(inputs)
    clone.set_weights(tower.get_weights())
    if not np.allclose(clone(inputs).numpy(), expected, atol=atol):
        raise ContractError("from_config(get_config()) with the same weights gives different outputs; "
                            "get_config must record every constructor argument.")

    module = tf.Module()
    module.tower = tower
    specs = {key: tf.TensorSpec([None], value.dtype, name=key) for key, value in inputs.items()
             if key in tower.feature_keys}
    module.serve = tf.function(lambda batch: module.tower(batch), input_signature=[specs])
    path = str(Path(directory) / "tower")
    tf.saved_model.save(module, path)
    reloaded = tf.saved_model.load(path)
    if not np.allclose(reloaded.serve({k: inputs[k] for k in specs}).numpy(), expected, atol=atol):
        raise ContractError("the tower gives different outputs after a SavedModel round trip.")


def check_index_contract(name: str, directory: str | os.PathLike | None = None, *, min_recall: float = 0.9,
                         num_candidates: int = 2_000, dim: int = 16, num_queries: int = 100, seed: int = 0,
                         **options: Any) -> float:
    """Checks an index backend against exact search on random data, and its k validation.

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
    from towerkit.errors import ConfigError

    rng = np.random.default_rng(seed)
    candidates = rng.normal(size=(num_candidates, dim)).astype(np.float32)
    ids = np.array([f"c{i}" for i in range(num_candidates)])
    queries = rng.normal(size=(num_queries, dim)).astype(np.float32)
    index = registry("indexes").create(name, k=10, **options)
    index.index(candidates, identifiers=ids)
    _, found = index(queries)
    found = np.asarray(found).astype(str)
    exact = ids[np.argsort(-(queries @ candidates.T), axis=1)[:, :10]]
    recall = float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)]))
    if recall < min_recall:
        raise ContractError(f"index '{name}' has recall@10 {recall:.3f} against exact search, below {min_recall}.")
    for bad_k in (0, num_candidates + 1):
        try:
            index(queries[:1], k=bad_k)
        except ConfigError:
            continue
        raise ContractError(f"index '{name}' accepted k={bad_k}; raise towerkit.ConfigError (see towerkit.indexes.base.check_k).")
    if getattr(index, "saves_itself", False):
        if directory is None:
            raise ContractError(f"index '{name}' saves itself; pass a directory to test save and load.")
        path = Path(directory) / "index"
        index.save(path)
        reloaded = type(index).load(path)
        if not np.array_equal(np.asarray(reloaded(queries)[1]).astype(str), found):
            raise ContractError(f"index '{name}' answers differently after save and load.")
    return recall


def check_dataset_contract(dataset: Any) -> None:
    """Checks that a dataset yields the feature keys it declares, and a sound split."""
    for key in (dataset.query_id_key, dataset.candidate_id_key):
        if key not in dataset.interactions:
            raise ContractError(f"dataset '{dataset.name}' declares id key '{key}' but its interactions lack it.")
    if dataset.candidate_id_key not in dataset.candidate_features:
        raise ContractError(f"dataset '{dataset.name}': the candidate set lacks '{dataset.candidate_id_key}'.")
    for view in (dataset.train, dataset.test):
        element = next(iter(view.take(1)))
        if set(element) != set(dataset.feature_keys):
            raise ContractError(f"dataset '{dataset.name}' yields {sorted(element)}, but declares {dataset.feature_keys}.")
    if not len(dataset.train_rows) or not len(dataset.test_rows):
        raise ContractError(f"dataset '{dataset.name}' has an empty train or test split.")
    if set(dataset.train_rows.tolist()) & set(dataset.test_rows.tolist()):
        raise ContractError(f"dataset '{dataset.name}' has rows in both train and test.")


@pytest.fixture()
def towerkit_plugin() -> Iterator[Callable[..., Any]]:
    """Registers plugin objects for the duration of one test, and unregisters them after."""
    names: list[str] = []

    def register(plugin: Any, name: str | None = None) -> Any:
        name = name or f"test-plugin-{len(names)}-{id(plugin)}"
        names.append(name)
        return plugins.register_plugin(plugin, name=name)

    yield register
    for name in reversed(names):
        plugins.unregister_plugin(name)
