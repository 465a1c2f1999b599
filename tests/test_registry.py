import pytest

import towerkit
from towerkit.errors import ConfigError, DuplicateComponentError, TowerkitError, UnknownComponentError
from towerkit.registry import Registry


@pytest.fixture()
def towers():
    return Registry("towers")


def make_a(size=1):
    return ("a", size)


def make_b(size=1):
    return ("b", size)


def test_register_create_and_alias(towers):
    towers.register("alpha", make_a, aliases=("first",), description="A.")
    assert towers.create("alpha", size=3) == ("a", 3)
    assert towers.create("first") == ("a", 1)
    assert towers.get("first").name == "alpha"


def test_identical_registration_is_a_no_op(towers):
    first = towers.register("alpha", make_a)
    assert towers.register("alpha", make_a) is first


def test_duplicate_names_both_sources(towers):
    towers.register("alpha", make_a, source="dist-one")
    with pytest.raises(DuplicateComponentError) as info:
        towers.register("alpha", make_b, source="dist-two")
    assert "dist-one" in str(info.value) and "dist-two" in str(info.value)


def test_override_replaces(towers):
    towers.register("alpha", make_a)
    towers.register("alpha", make_b, override=True)
    assert towers.create("alpha") == ("b", 1)


def test_list_is_sorted_and_filtered(towers):
    for name in ("zeta", "alpha", "alpine"):
        towers.register(name, make_a)
    assert towers.list() == ["alpha", "alpine", "zeta"]
    assert towers.list("alp*") == ["alpha", "alpine"]


def test_unknown_name_suggests_close_match_unquoted():
    with pytest.raises(UnknownComponentError) as info:
        towerkit.create_tower("usr")
    message = str(info.value)
    assert "did you mean 'user'" in message
    assert not message.startswith(("'", '"'))
    assert isinstance(info.value, KeyError)


def test_name_of_another_kind_says_so():
    with pytest.raises(UnknownComponentError, match="'scann' is an index, not a tower"):
        towerkit.create_tower("scann")


def test_qualified_name_resolves():
    assert towerkit.get_registry("towers").get("towerkit:user").name == "user"
    with pytest.raises(UnknownComponentError):
        towerkit.get_registry("towers").get("other-dist:user")


def test_lazy_factory_is_imported_on_first_use(towers):
    towers.register("lazy", "collections:OrderedDict")
    assert towers.create("lazy") == {}
    towers.register("broken", "no_such_module_xyz:thing")
    with pytest.raises(TowerkitError, match="could not be imported"):
        towers.create("broken")


@pytest.mark.parametrize("factory", [42, "no-colon", ":attr", "module:"])
def test_invalid_factories_are_rejected(towers, factory):
    with pytest.raises(ConfigError):
        towers.register("bad", factory)


@pytest.mark.parametrize("name", ["", "   ", None, 3, "dist:name"])
def test_invalid_names_are_rejected(towers, name):
    with pytest.raises(ConfigError):
        towers.register(name, make_a)


def test_unknown_option_is_one_clear_error():
    with pytest.raises(ConfigError, match="has no option 'embeding_dim'; did you mean 'embedding_dim'"):
        towerkit.create_tower("user", embeding_dim=8)


def test_public_listing_and_describe():
    assert {"user", "movie"} <= set(towerkit.list_towers())
    assert towerkit.list_indexes("brute*") == ["brute-force"]
    assert "retrieval" in towerkit.list_tasks()
    assert {"movielens-100k", "synthetic"} <= set(towerkit.list_datasets())
    described = towerkit.describe("towers", "user")
    assert described["source"] == "towerkit" and "embedding_dim" in described["options"]


def test_unknown_kind():
    with pytest.raises(UnknownComponentError, match="did you mean 'towers'"):
        towerkit.get_registry("tower")
