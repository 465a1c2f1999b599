import numpy as np
import pytest

import towerkit
from towerkit.testing import ContractError, check_index_contract


def test_registered_through_its_entry_point():
    entry = towerkit.get_registry("indexes").get("faiss")
    assert entry.source == "towerkit-faiss"


def test_flat_is_exact(tmp_path):
    assert check_index_contract("faiss", tmp_path, min_recall=1.0) == 1.0


def test_ivf_meets_the_recall_bound(tmp_path):
    check_index_contract("faiss", tmp_path, min_recall=0.8, kind="ivf", nlist=32, nprobe=16)


def test_contract_catches_a_weak_index(tmp_path):
    with pytest.raises(ContractError, match="recall@10"):
        check_index_contract("faiss", tmp_path, min_recall=0.99, kind="ivf", nlist=64, nprobe=1)


def test_exclusions_skip_given_ids():
    rng = np.random.default_rng(1)
    index = towerkit.create_index("faiss", k=5).index(rng.normal(size=(50, 8)).astype(np.float32),
                                                     identifiers=np.array([f"c{i}" for i in range(50)]))
    query = rng.normal(size=(1, 8)).astype(np.float32)
    top = index(query)[1].numpy()[0]
    rest = index.query_with_exclusions(query, np.array([top[:2]]), k=3)[1].numpy()[0]
    assert list(rest) == list(top[2:5])


def test_bad_kind_is_clear():
    with pytest.raises(towerkit.ConfigError, match="kind must be one of"):
        towerkit.create_index("faiss", kind="hnsw")
