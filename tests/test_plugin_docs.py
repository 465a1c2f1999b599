"""docs/plugins.md and docs/recipes.md say what is true: the plugin they build, from their text alone, works."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli

PLUGINS_DOC = ROOT / "docs" / "plugins.md"
RECIPES_DOC = ROOT / "docs" / "recipes.md"


def code_blocks(path):
    """(language, text) of every fenced block of a markdown file."""
    return re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def file_blocks(path):
    """The blocks whose first line is a comment naming a file: path -> text."""
    files = {}
    for _, text in code_blocks(path):
        first, _, rest = text.partition("\n")
        match = re.fullmatch(r"# ([\w./-]+\.(?:py|toml))", first.strip())
        if match:
            files[match.group(1)] = rest
    return files


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The towerkit-shop plugin exactly as docs/plugins.md writes it, installed with pip."""
    folder = tmp_path_factory.mktemp("shop")
    files = file_blocks(PLUGINS_DOC)
    assert {"pyproject.toml", "towerkit_shop/__init__.py", "towerkit_shop/dataset.py", "towerkit_shop/tower.py",
            "towerkit_shop/index.py", "tests/test_shop.py", "shop.toml"} <= set(files)
    for name, text in files.items():
        (folder / "towerkit-shop" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "towerkit-shop" / name).write_text(text, encoding="utf-8")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(folder / "site"), str(folder / "towerkit-shop")],
                   check=True, capture_output=True)
    lines = ["customer,item,category"]
    for row in range(1500):  # each customer prefers the items of one category
        customer = row % 60
        item = (row * 7 % 10) * 4 + customer % 4
        lines.append(f"c{customer},item{item},cat{item % 4}")
    (folder / "purchases.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_the_documented_plugin_passes_its_documented_contract_tests(shop):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_shop.py"],
                            cwd=shop / "towerkit-shop", capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(shop / "site"),
                                 "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_the_documented_recipe_trains_exports_and_serves(shop):
    env = {"PYTHONPATH": str(shop / "site"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    (shop / "shop.toml").write_text((shop / "towerkit-shop" / "shop.toml").read_text())
    trained = run_cli("train", "shop.toml", env=env, cwd=shop)
    assert trained.returncode == 0, trained.stderr
    model = shop / "towerkit-runs" / "shop" / "model"
    meta = json.loads((model / "towerkit.json").read_text())
    assert meta["components"]["index"]["source"] == "towerkit-shop" and (model / "index" / "ids.npy").is_file()
    served = run_cli("recommend", "--model", str(model), "--user", "c7", "-k", "5", "--exclude-seen", "--json",
                     env=env, cwd=shop)
    assert served.returncode == 0, served.stderr
    answers = [row["id"] for row in json.loads(served.stdout)]
    seen = set(json.loads((model / "seen.json").read_text())["c7"])
    assert len(answers) == 5 and not set(answers) & seen
    # The "In code" snippet, run as written (it assembles a model and serves the export trained above).
    in_code = next(text for lang, text in code_blocks(PLUGINS_DOC) if "towerkit.load_export(" in text)
    script = "import towerkit, tensorflow as tf\n" + in_code + "\nprint(ids.shape)\n"
    ran = subprocess.run([sys.executable, "-c", script], cwd=shop, capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[-1] == "(1, 5)"


def test_describe_shows_the_documented_options(shop):
    result = run_cli("describe", "towers", "item-and-category", env={"PYTHONPATH": str(shop / "site")})
    assert result.returncode == 0, result.stderr
    options = json.loads(result.stdout)["options"]
    assert options["num_bins"] == {"type": "int", "default": 1000, "required": False,
                                   "doc": "Rows for the hashed item ids."}


def test_recipes_doc_lists_every_key_with_its_default():
    from towerkit.config import COMPONENT_SECTIONS, FIXED_SECTIONS, INDEX_PIPELINE_KEYS

    text = RECIPES_DOC.read_text(encoding="utf-8")
    for section, schema in FIXED_SECTIONS.items():
        for key, (_, default) in schema.items():
            assert f"| `[{section}]` | `{key}` |" in text, f"{section}.{key} is not documented"
            row = next(line for line in text.splitlines() if line.startswith(f"| `[{section}]` | `{key}` |"))
            assert f"`{json.dumps(default)}`" in row, f"{section}.{key}: the documented default is not {default!r}"
    for section in COMPONENT_SECTIONS:
        assert f"| `[{section}]` |" in text
    assert all(f"`{key}` (int, default `{default}`)" in text for key, (_, default) in INDEX_PIPELINE_KEYS.items())


def test_recipes_doc_example_is_a_valid_recipe():
    from towerkit import config

    example = next(text for lang, text in code_blocks(RECIPES_DOC) if lang == "toml")
    resolved = config.resolve(config.read_toml(example, "docs/recipes.md"), "docs/recipes.md")
    assert resolved["train"]["epochs"] == 3 and resolved["index"]["k"] == 10


def test_recipes_show_prints_a_shipped_recipe_to_copy(tmp_path):
    from towerkit import config

    shown = run_cli("recipes", "show", "basic-retrieval")
    assert shown.returncode == 0, shown.stderr
    (tmp_path / "copy.toml").write_text(shown.stdout)
    copied = config.resolve(*config.load_recipe(str(tmp_path / "copy.toml")))
    assert copied == config.resolve(*config.load_recipe("basic-retrieval"))
    unknown = run_cli("recipes", "show", "retrieva")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == ("towerkit: error: unknown recipe 'retrieva'; did you mean 'retrieval'? "
                                      "shipped recipes: basic-retrieval, cold-start, item-to-item, retrieval.")
