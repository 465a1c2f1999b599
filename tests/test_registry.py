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


def test_remove_is_public_and_exact(towers):
    first = towers.register("alpha", make_a, aliases=("first",))
    stranger = Registry("towers").register("alpha", make_a)
    assert towers.remove(stranger) is False  # an entry of another registry is not removed by name
    assert towers.remove(first) is True
    assert towers.list() == [] and towers.remove(first) is False
    with pytest.raises(UnknownComponentError):
        towers.get("first")


def test_clash_loser_is_kept_and_resolves_by_qualified_name(towers):
    towers.register("alpha", make_a, source="dist-a")
    loser = towers.register_shadowed("alpha", make_b, source="dist-b")
    assert towers.get("alpha").source == "dist-a"
    assert towers.get("dist-b:alpha") is loser and loser.shadowed_by == "dist-a"
    assert towers.create("dist-b:alpha") == ("b", 1)
    assert towers.list() == ["alpha"]
    assert [e.source for e in towers.entries(include_shadowed=True)] == ["dist-a", "dist-b"]
    # When the winner goes, the loser takes the name.
    towers.remove(towers.get("dist-a:alpha"))
    assert towers.get("alpha") is loser and loser.shadowed_by == ""


def test_override_keeps_another_sources_entry_reachable(towers):
    towers.register("alpha", make_a, source="dist-a")
    towers.register("alpha", make_b, source="dist-b", override=True)
    assert towers.get("alpha").source == "dist-b"
    assert towers.create("dist-a:alpha") == ("a", 1)


def test_alias_clash_is_a_duplicate(towers):
    towers.register("alpha", make_a, aliases=("first",), source="dist-a")
    with pytest.raises(DuplicateComponentError, match="dist-a"):
        towers.register("beta", make_b, aliases=("first",), source="dist-b")


def test_created_components_carry_their_registered_name():
    tower = towerkit.create_tower("item", vocabulary=["a", "b"], embedding_dim=4)
    assert tower.registered_name == "movie" and tower.component_name == "movie"
    assert tower.name != "movie"  # the Keras layer name, which messages no longer show


def test_submodule_is_not_hidden_by_a_function():
    import towerkit.registry

    assert towerkit.registry.Registry is Registry
    assert callable(towerkit.get_registry) and not callable(towerkit.registry)


def test_registry_storage_imports_no_plugin_loading():
    import ast
    import pathlib

    package = pathlib.Path(towerkit.__file__).parent

    def towerkit_imports(module):
        tree = ast.parse((package / f"{module}.py").read_text())
        names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        return {name for name in names if name.startswith("towerkit")}

    assert towerkit_imports("registry") == {"towerkit.errors"}
    assert "towerkit.components" not in towerkit_imports("plugins")
    assert {"towerkit.registry", "towerkit"} & towerkit_imports("components")


def test_describe_shows_type_default_and_doc_and_name_once():
    described = towerkit.describe("towers", "user")
    options = described["options"]
    assert "name" not in options
    embedding_dim = options["embedding_dim"]
    assert (embedding_dim["type"], embedding_dim["default"], embedding_dim["required"]) == ("int", 32, False)
    assert embedding_dim["doc"].startswith("Width of the embeddings")
    assert options["layers"]["type"] == "Sequence[int] | None" and options["layers"]["default"] is None
    index_options = towerkit.describe("indexes", "brute-force")["options"]
    assert index_options["k"]["default"] == 10 and index_options["k"]["doc"]


def test_describe_reads_google_style_args_of_a_class(towers):
    class Documented:
        """Something.

        Args:
            width: How wide.
            depth (int): How deep; this line is
                continued here.

        Example:
            >>> Documented(width=2)
        """

        def __init__(self, width: int, depth=3, name="x"):
            pass

    from towerkit.components import describe_options

    assert describe_options(Documented) == {
        "width": {"type": "int", "default": None, "required": True, "doc": "How wide."},
        "depth": {"type": "int", "default": 3, "required": False, "doc": "How deep; this line is"},
    }


def test_errors_print_plain_text():
    from towerkit.errors import ConfigError, FeatureError

    assert str(UnknownComponentError("unknown tower 'x'")) == "unknown tower 'x'"  # KeyError would quote it
    assert str(FeatureError("tower 'x' needs 'y'")) == "tower 'x' needs 'y'"
    decorated = ("Exception encountered when calling layer 'user_tower' (type IdEmbeddingTower).\n\n"
                 "k must be a positive integer, got 0.\n\nCall arguments received by layer 'user_tower':\n  • x=1")
    assert str(ConfigError(decorated)) == "k must be a positive integer, got 0."
    assert str(FeatureError(decorated)) == "k must be a positive integer, got 0."
    assert str(TowerkitError()) == ""


def test_public_surface_at_the_top_level():
    from towerkit.datasets.base import RetrievalDataset
    from towerkit.indexes.base import ValidatedIndex, check_k
    from towerkit.serving import load_export
    from towerkit.towers.base import Tower

    assert towerkit.Tower is Tower and towerkit.RetrievalDataset is RetrievalDataset
    assert towerkit.Index is ValidatedIndex and towerkit.check_k is check_k
    assert towerkit.load_export is load_export
    assert towerkit.check_positive_int(3, "n") == 3
    with pytest.raises(ConfigError, match="n must be a positive integer"):
        towerkit.check_positive_int(True, "n")
    assert set(towerkit.__all__) <= set(dir(towerkit))
    with pytest.raises(AttributeError):
        towerkit.no_such_thing


def test_import_towerkit_reaches_plugins_without_tensorflow():
    from conftest import run_python

    result = run_python("import sys, towerkit\n"
                        "print(callable(towerkit.plugins.register_plugin), 'tensorflow' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]
