"""The built-in index backends: exact and approximate top-k, k and dimension checks, exclusions."""


import numpy as np
import pytest

import towerkit
from towerkit.errors import ConfigError



def _random_index(name, num=500, dim=8, seed=0, **options):
    rng = np.random.default_rng(seed)
    candidates = rng.normal(size=(num, dim)).astype(np.float32)
    ids = np.array([f"c{i}" for i in range(num)])
    index = towerkit.create_index(name, k=10, **options)
    index.index(candidates, identifiers=ids)
    return index, candidates, ids


def _exact_topk(queries, candidates, k):
    return np.argsort(-(queries @ candidates.T), axis=1)[:, :k]


def test_brute_force_is_exact():
    index, candidates, ids = _random_index("brute-force")
    queries = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    _, found = index(queries, k=5)
    expected = ids[_exact_topk(queries, candidates, 5)]
    np.testing.assert_array_equal(found.numpy().astype(str), expected)


@pytest.mark.parametrize("options", [{}, {"brute_force": False, "num_leaves": 20, "num_leaves_to_search": 10}])
def test_scann_agrees_with_brute_force(options):
    index, candidates, ids = _random_index("scann", num=2000, **options)
    queries = np.random.default_rng(2).normal(size=(50, 8)).astype(np.float32)
    _, found = index(queries, k=10)
    expected = ids[_exact_topk(queries, candidates, 10)]
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found.numpy().astype(str), expected)])
    assert recall >= 0.9


def _recall(index, candidates, ids, queries, k=10):
    _, found = index(queries, k=k)
    expected = ids[_exact_topk(queries, candidates, k)]
    return np.mean([len(set(f) & set(e)) / k for f, e in zip(found.numpy().astype(str), expected)])


@pytest.mark.parametrize("num", [1_682, 40_000])
def test_scann_defaults_follow_the_candidate_count(num):
    """Few candidates are scored exactly; many get a tree of about sqrt(N) leaves that still finds the top 10."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(64, 16))
    candidates = (centres[rng.integers(0, 64, num)] + 0.3 * rng.normal(size=(num, 16))).astype(np.float32)
    ids = np.array([f"c{i}" for i in range(num)])
    index = towerkit.create_index("scann", k=10)
    index.index(candidates, identifiers=ids)
    queries = rng.normal(size=(100, 16)).astype(np.float32)
    recall = _recall(index, candidates, ids, queries)
    chosen = index.parameters()
    if num < 20_000:
        assert chosen["brute_force"] and recall == 1.0
    else:
        assert not chosen["brute_force"] and abs(chosen["num_leaves"] - num ** 0.5) <= 1
        assert recall >= 0.9
        assert chosen["num_leaves_to_search"] < chosen["num_leaves"]


@pytest.mark.parametrize("name", ["brute-force", "scann"])
def test_k_and_dimension_errors(name):
    index, _, _ = _random_index(name, num=50)
    queries = np.zeros((1, 8), np.float32)
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        index(queries, k=0)
    with pytest.raises(ConfigError, match="more than the 50 candidates"):
        index(queries, k=51)
    with pytest.raises(ConfigError, match="queries have dimension 3"):
        index(np.zeros((1, 3), np.float32))
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        towerkit.create_index(name, k=-1)


@pytest.mark.parametrize("name", ["brute-force", "scann"])
def test_query_with_exclusions_skips_given_ids(name):
    index, _, _ = _random_index(name, num=30)
    query = np.random.default_rng(3).normal(size=(1, 8)).astype(np.float32)
    _, top = index(query, k=5)
    top = top.numpy()[0]
    _, rest = index.query_with_exclusions(query, np.array([top[:2]]), k=3)
    assert list(rest.numpy()[0]) == list(top[2:5])
    # Excluding nearly everything still answers, without asking for more than exists.
    _, few = index.query_with_exclusions(query, np.array([top[:5]]), k=25)
    assert len(few.numpy()[0]) == 25 and not set(few.numpy()[0]) & set(top[:5])
