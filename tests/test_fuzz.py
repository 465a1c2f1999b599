"""Property tests: arbitrary names and recipes never fail with anything but a towerkit error."""

import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import towerkit
from towerkit import config as recipe_config
from towerkit.errors import TowerkitError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
                    st.lists(st.integers(), max_size=4))
sections = st.sampled_from(["recipe", "dataset", "query_tower", "candidate_tower", "task", "model", "optimizer",
                            "train", "evaluate", "index", "export", "bogus"])
keys = st.one_of(st.sampled_from(["name", "epochs", "batch_size", "embedding_dim", "k", "ks", "style",
                                  "learning_rate", "logq_correction", "temperature", "seed"]), st.text(max_size=10))


@FUZZ
@given(st.text(max_size=40))
def test_any_registry_name_is_found_or_a_towerkit_error(name):
    for kind in ("towers", "tasks", "indexes", "datasets"):
        try:
            towerkit.get_registry(kind).get(name)
        except TowerkitError as exc:
            assert str(exc)


@FUZZ
@given(st.text(max_size=200))
def test_any_toml_text_parses_or_is_a_towerkit_error(text):
    try:
        raw = recipe_config.read_toml(text, "fuzz.toml")
        recipe_config.resolve(raw, "fuzz.toml")
    except TowerkitError as exc:
        assert str(exc)


@FUZZ
@given(st.dictionaries(sections, st.dictionaries(keys, scalars, max_size=4), max_size=6))
def test_any_recipe_structure_resolves_or_is_a_towerkit_error(raw):
    base = recipe_config.load_recipe("basic-retrieval")[0]
    merged = {**base, **{k: {**base.get(k, {}), **v} for k, v in raw.items()}}
    try:
        resolved = recipe_config.resolve(merged, "fuzz")
    except TowerkitError as exc:
        assert str(exc)
        return
    # Whatever resolves writes back as TOML that resolves to the same config.
    assert recipe_config.resolve(tomllib.loads(recipe_config.to_toml(resolved)), "round trip") == resolved


@FUZZ
@given(st.text(max_size=60))
def test_any_set_override_parses_or_is_a_towerkit_error(assignment):
    try:
        keys_, _ = recipe_config.parse_override(assignment)
        assert len(keys_) == 2
    except TowerkitError as exc:
        assert str(exc)
