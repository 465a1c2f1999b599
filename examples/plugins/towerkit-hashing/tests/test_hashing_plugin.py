import numpy as np
import pytest

import towerkit
from towerkit.testing import check_tower_contract


def test_registered_through_its_entry_point():
    entry = towerkit.get_registry("towers").get("hashing")
    assert entry.source == "towerkit-hashing" and entry.version == "0.1.0"


def test_tower_contract(tmp_path):
    tower = towerkit.create_tower("hashing", num_bins=64, embedding_dim=8)
    check_tower_contract(tower, {"user_id": ["1", "2", "never-seen-before"]}, tmp_path)


def test_unseen_ids_get_their_own_rows():
    tower = towerkit.create_tower("hashing", num_bins=10_000, embedding_dim=4)
    out = tower({"user_id": np.array(["a", "b", "a"])}).numpy()
    np.testing.assert_array_equal(out[0], out[2])
    assert not np.allclose(out[0], out[1])


def test_bad_options_are_clear():
    with pytest.raises(towerkit.ConfigError, match="num_bins must be a positive integer"):
        towerkit.create_tower("hashing", num_bins=0)
