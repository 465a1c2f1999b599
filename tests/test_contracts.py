"""The contracts the author's kit enforces (towerkit.testing), and the probe that assemble runs."""

import sys

import numpy as np
import pytest
import tensorflow as tf

import towerkit
from towerkit.contracts import ContractError
from towerkit.testing import check_dataset_contract, check_index_contract, check_tower_contract

from conftest import run_python


# Towers with the shape mistakes plugin authors make ------------------------------------------------
class BagOfIdsTower(towerkit.Tower):
    """A hashed id embedding; ``mistake`` breaks its output on purpose.

    Args:
        mistake: "" (none), "narrow" ([batch, 8]), "extra_axis" ([batch, 1, dim]), "numpy" (a NumPy array),
            "ints" (int embeddings) or "raises" (call fails).
        embedding_dim: Declared width.
    """

    def __init__(self, mistake="", embedding_dim=32, **kwargs):
        super().__init__(embedding_dim=embedding_dim, **kwargs)
        self.mistake = mistake
        self.hashing = tf.keras.layers.Hashing(64)
        self.embedding = tf.keras.layers.Embedding(64, 8 if mistake == "narrow" else embedding_dim)

    @property
    def feature_keys(self):
        return ("user_id",)

    def call(self, features):
        ids = self.hashing(self.select(features)["user_id"])
        if self.mistake == "raises":
            raise ValueError("cannot embed these ids")
        if self.mistake == "extra_axis":
            ids = tf.expand_dims(ids, -1)
        out = self.embedding(ids)
        if self.mistake == "ints":
            return tf.cast(out, tf.int32)
        return out.numpy() if self.mistake == "numpy" else out

    def get_config(self):
        return {**super().get_config(), "mistake": self.mistake}


class _BagOfIds:
    @towerkit.hookimpl
    def register_towers(self, register):
        register("bag-of-ids", BagOfIdsTower)


FEATURES = {"user_id": ["a", "b", "c"]}


def test_a_sound_tower_passes(tmp_path):
    check_tower_contract(BagOfIdsTower(embedding_dim=4), FEATURES, tmp_path)
    check_tower_contract(towerkit.create_tower("user", vocabulary=["a", "b"], embedding_dim=4, layers=[8, 6]),
                         FEATURES, tmp_path / "deep")


@pytest.mark.parametrize("mistake, message", [
    ("narrow", r"returns shape \[3, 8\] for a batch of 3, but a tower must return \[3, 32\]"),
    ("extra_axis", r"returns shape \[3, 1, 32\]"),
    ("numpy", "returned a ndarray, not a tensor"),
    ("ints", "returns int32 embeddings"),
])
def test_tower_contract_fails_wrong_outputs(tmp_path, towerkit_plugin, mistake, message):
    towerkit_plugin(_BagOfIds())
    tower = towerkit.create_tower("bag-of-ids", mistake=mistake, embedding_dim=32)
    with pytest.raises(ContractError, match=message) as info:
        check_tower_contract(tower, FEATURES, tmp_path)
    assert "'bag-of-ids'" in str(info.value) and "bag_of_ids_tower" not in str(info.value)
    assert isinstance(info.value, AssertionError) and isinstance(info.value, towerkit.TowerkitError)


def test_tower_contract_needs_feature_keys(tmp_path):
    class Keyless(BagOfIdsTower):
        @property
        def feature_keys(self):
            return ()

    with pytest.raises(ContractError, match="must declare feature_keys"):
        check_tower_contract(Keyless(), FEATURES, tmp_path)


def test_tower_contract_needs_a_complete_config(tmp_path):
    class Forgetful(BagOfIdsTower):
        def __init__(self, feature, **kwargs):
            super().__init__(**kwargs)
            self.feature = feature

        def get_config(self):  # forgets "feature"
            return super().get_config()

    with pytest.raises(ContractError, match="cannot be rebuilt with from_config.*must record every constructor"):
        check_tower_contract(Forgetful("user_id", embedding_dim=4), FEATURES, tmp_path)


# The probe in assemble ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return towerkit.load_dataset("synthetic", num_users=30, num_items=15, num_interactions=400, seed=5)


@pytest.mark.parametrize("mistake, message", [
    ("narrow", r"query tower 'bag-of-ids' returns shape \[3, 8\] for a batch of 3, but a tower must return \[3, 32\]"),
    ("extra_axis", r"query tower 'bag-of-ids' returns shape \[3, 1, 32\]"),
    ("raises", r"query tower 'bag-of-ids' fails on a probe batch of 3 rows of 'synthetic' \(ValueError: cannot"),
])
def test_assemble_probes_both_towers_and_names_the_component(tiny, towerkit_plugin, mistake, message):
    towerkit_plugin(_BagOfIds())
    with pytest.raises(ContractError, match=message):
        towerkit.assemble(query={"name": "bag-of-ids", "mistake": mistake},
                          candidate={"name": "movie", "embedding_dim": 32}, data=tiny)


def test_assemble_refuses_towers_of_different_widths(tiny):
    with pytest.raises(ContractError, match="query tower 'user' returns 16-wide embeddings but candidate tower "
                                            "'movie' returns 32-wide ones"):
        towerkit.assemble(query={"name": "user", "embedding_dim": 16}, candidate={"name": "movie"}, data=tiny)


def test_assemble_accepts_sound_towers(tiny, towerkit_plugin):
    towerkit_plugin(_BagOfIds())
    model = towerkit.assemble(query={"name": "bag-of-ids", "embedding_dim": 8},
                              candidate={"name": "movie", "embedding_dim": 8}, data=tiny)
    assert model.query_tower.registered_name == "bag-of-ids"


# Indexes --------------------------------------------------------------------------------------------
class NumpyIndex:
    """An exact index in NumPy; ``mistake`` breaks one part of the index contract on purpose.

    Args:
        query_model: Embeds raw query features (a dict); None to query with embeddings.
        k: Default results per query.
        mistake: "", "numpy", "float64", "int_ids", "ignores_k", "private_k", "wrong_backend" or "keeps_excluded".
    """

    saves_itself = False

    def __init__(self, query_model=None, k=10, mistake=""):
        self.query_model, self.mistake = query_model, mistake
        if mistake == "private_k":
            self._k = towerkit.check_k(k, None, "numpy-index")
        else:
            self.k = towerkit.check_k(k, None, "numpy-index")
        self.backend = "numpy" if mistake == "wrong_backend" else "numpy-index"
        self.saves_itself = mistake in ("wrong_backend", "saves")

    def index(self, candidates, identifiers=None):
        self.candidates = np.asarray(candidates, dtype=np.float32)
        self.ids = np.asarray(identifiers).astype(str)
        return self

    def _top(self, queries, k, exclusions=None):
        default = self._k if self.mistake == "private_k" else self.k
        k = towerkit.check_k(default if k is None or self.mistake == "ignores_k" else k, len(self.ids), "numpy-index")
        if isinstance(queries, dict):
            queries = self.query_model(queries)
        scores = np.asarray(queries, dtype=np.float32) @ self.candidates.T
        if exclusions is not None and self.mistake != "keeps_excluded":
            scores = np.where(np.isin(self.ids[None, :], exclusions), -np.inf, scores)
        top = np.argsort(-scores, axis=1)[:, :k]
        found_scores, found_ids = np.take_along_axis(scores, top, axis=1), self.ids[top]
        if self.mistake == "numpy":
            return found_scores, found_ids
        if self.mistake == "float64":
            return tf.constant(found_scores.astype(np.float64)), tf.constant(found_ids)
        if self.mistake == "int_ids":
            return tf.constant(found_scores), tf.constant(top)
        return tf.constant(found_scores), tf.constant(found_ids)

    def __call__(self, queries, k=None):
        return self._top(queries, k)

    def query_with_exclusions(self, queries, exclusions, k=None):
        return self._top(queries, k, np.asarray(exclusions).astype(str))

    def parameters(self):
        return {"backend": self.backend, "k": getattr(self, "k", None)}

    def save(self, path):
        path.mkdir(parents=True)
        np.save(path / "candidates.npy", self.candidates)
        np.save(path / "ids.npy", self.ids)

    @classmethod
    def load(cls, path, query_model=None):
        return cls(mistake="saves").index(np.load(path / "candidates.npy"), np.load(path / "ids.npy"))


class _NumpyIndexPlugin:
    @towerkit.hookimpl
    def register_indexes(self, register):
        register("numpy-index", NumpyIndex)


def test_a_sound_index_passes(tmp_path, towerkit_plugin):
    towerkit_plugin(_NumpyIndexPlugin())
    assert check_index_contract("numpy-index", tmp_path, min_recall=1.0, num_candidates=300) == 1.0
    assert check_index_contract("numpy-index", tmp_path, min_recall=1.0, num_candidates=300, mistake="saves") == 1.0


@pytest.mark.parametrize("mistake, message", [
    ("numpy", "returned scores as ndarray; return TF tensors"),
    ("float64", "returned scores of dtype float64; they must be float32"),
    ("int_ids", "returned ids of dtype int64; they must be string"),
    ("ignores_k", r"index\(queries, k=5\) returned scores of shape \[100, 10\]; expected \[100, 5\]"),
    ("private_k", "its public attribute k is '\\(missing\\)'; store the default k as `self.k`"),
    ("wrong_backend", "parameters\\(\\)\\['backend'\\] is 'numpy', which does not name a registered index"),
    ("keeps_excluded", "returned an identifier it was told to exclude"),
])
def test_index_contract_fails_broken_indexes(tmp_path, towerkit_plugin, mistake, message):
    towerkit_plugin(_NumpyIndexPlugin())
    with pytest.raises(ContractError, match=message):
        check_index_contract("numpy-index", tmp_path, num_candidates=300, mistake=mistake)


@pytest.mark.parametrize("name", ["brute-force", "scann"])
def test_builtin_indexes_pass_the_index_contract(tmp_path, name):
    assert check_index_contract(name, tmp_path, min_recall=0.8, num_candidates=500) >= 0.8


# Datasets -------------------------------------------------------------------------------------------
class LogsDataset(towerkit.RetrievalDataset):
    """A small dataset of customer logs; ``mistake`` breaks one part of the dataset contract.

    Args:
        mistake: "", "default_query_key", "overlap", "duplicate_candidates", "unknown_candidate" or "bad_rows".
    """

    name = "logs"
    query_id_key = "customer_id"
    candidate_id_key = "item_id"

    def __init__(self, mistake=""):
        customers = np.array([f"c{i % 7}" for i in range(40)])
        items = np.array([f"i{i % 5}" for i in range(40)])
        catalogue = np.array([f"i{i}" for i in range(5)])
        train, test = np.arange(30), np.arange(30, 40)
        if mistake == "default_query_key":
            self.query_id_key = towerkit.RetrievalDataset.query_id_key  # forgot to set it: "user_id"
        if mistake == "overlap":
            test = np.arange(25, 40)
        if mistake == "duplicate_candidates":
            catalogue = np.concatenate([catalogue, catalogue[:1]])
        if mistake == "unknown_candidate":
            catalogue = catalogue[:-1]
        if mistake == "bad_rows":
            test = np.arange(30, 45)
        super().__init__({"customer_id": customers, "item_id": items}, {"item_id": catalogue}, train, test)


def test_a_sound_dataset_passes():
    check_dataset_contract(LogsDataset())
    check_dataset_contract(towerkit.load_dataset("synthetic", num_users=20, num_items=10, num_interactions=200))


@pytest.mark.parametrize("mistake, message", [
    ("default_query_key", "dataset 'logs' has query_id_key='user_id', which is not a column of its interactions "
                          r"\(customer_id, item_id\); set query_id_key"),
    ("overlap", "has rows in both train and test"),
    ("duplicate_candidates", "lists some candidate ids twice"),
    ("unknown_candidate", "1 candidate id\\(s\\) in test interactions are not in candidate_features"),
    ("bad_rows", "test_rows holds indices outside 0..39"),
])
def test_dataset_contract_fails_broken_datasets(mistake, message):
    with pytest.raises(ContractError, match=message):
        check_dataset_contract(LogsDataset(mistake))


def test_assemble_refuses_a_dataset_without_its_query_id_key():
    data = LogsDataset("default_query_key")
    with pytest.raises(ContractError, match="query_id_key='user_id'"):
        towerkit.assemble(query={"name": "id-embedding", "feature": "customer_id", "embedding_dim": 4},
                          candidate={"name": "id-embedding", "feature": "item_id", "embedding_dim": 4}, data=data)


def test_dataset_without_the_attributes_is_told_to_subclass():
    class Bare:
        name = "bare"

    with pytest.raises(ContractError, match="dataset 'bare' has no attribute 'interactions'; subclass "
                                            "towerkit.RetrievalDataset"):
        check_dataset_contract(Bare())


def test_a_look_alike_dataset_that_does_not_subclass_is_told_to():
    """Every attribute of the contract but not a RetrievalDataset: towerkit reads rows with column(), so it is refused."""
    import types

    real = LogsDataset()
    look_alike = types.SimpleNamespace(name="logs", **{key: getattr(real, key) for key in (
        "interactions", "candidate_features", "train_rows", "test_rows", "query_id_key", "candidate_id_key")})
    with pytest.raises(ContractError, match="dataset 'logs' has no column\\(\\) method.*subclass towerkit.RetrievalDataset"):
        check_dataset_contract(look_alike)
    check_dataset_contract(real)


# The kit as a pytest plugin -------------------------------------------------------------------------
def test_kit_imports_neither_tensorflow_nor_needs_pytest():
    code = ("import sys\nsys.modules['pytest'] = None  # as if pytest were not installed\n"
            "import towerkit.testing as kit\nprint('tensorflow' in sys.modules, callable(kit.check_tower_contract))\n"
            "try:\n    kit.towerkit_plugin\nexcept ImportError as exc:\n    print(exc)\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    first, message = result.stdout.strip().splitlines()
    assert first == "False True"
    assert message.startswith("towerkit.testing's towerkit_plugin fixture needs pytest, which is not installed")


def test_an_empty_test_run_does_not_import_tensorflow(tmp_path):
    (tmp_path / "test_empty.py").write_text(
        "import sys\n\n\ndef test_empty(towerkit_plugin):\n"
        "    assert callable(towerkit_plugin)\n    assert 'tensorflow' not in sys.modules\n")
    import subprocess

    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_empty.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_a_missing_feature_names_the_registered_tower(tiny, towerkit_plugin):
    towerkit_plugin(_BagOfIds())
    keyed = {k: v for k, v in tiny.interactions.items() if k != "user_id"}
    data = towerkit.RetrievalDataset(keyed, tiny.candidate_features, tiny.train_rows, tiny.test_rows)
    with pytest.raises(towerkit.FeatureError, match="query tower 'bag-of-ids' needs feature"):
        towerkit.assemble(query={"name": "bag-of-ids"}, candidate={"name": "movie"}, data=data)
