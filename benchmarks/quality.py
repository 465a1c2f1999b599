"""Recommendation quality of the shipped recipes against popularity, on the seed's split.

Usage: python benchmarks/quality.py [--recipes basic-retrieval retrieval item-to-item] [--seeds 42]

Prints exact test top-k (nothing excluded, as the tutorial measures it, and
with each user's training items excluded) for each recipe and the popularity
baseline, and checks the tuned recipe's targets (issue 3):
nothing excluded top-100 >= 0.38 and top-10 >= 0.05; training items excluded
top-100 >= 0.60 and top-10 >= 0.15; and fit time no longer than the seed recipe's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import towerkit  # noqa: E402,F401  (selects Keras 2)
from towerkit import config as recipe_config  # noqa: E402
from towerkit.evaluation import TopK  # noqa: E402
from towerkit.pipeline import run  # noqa: E402

KS = (10, 100)
TARGETS = {"top_100": 0.38, "top_10": 0.05, "excl_top_100": 0.60, "excl_top_10": 0.15}


def measure(recipe: str, seed: int) -> dict:
    raw, origin = recipe_config.load_recipe(recipe)
    raw = recipe_config.apply_overrides(raw, [f"train.seed={seed}", "export.enabled=false"])
    config = recipe_config.resolve(raw, origin)
    with tempfile.TemporaryDirectory() as output:
        metrics = run(config, output, log=lambda message: None, verbose=0).metrics
    rows = {}
    for name, value in metrics["test"].items():
        result = TopK.from_json(value)
        row = {f"top_{k}": result.all[f"top_{k}"] for k in KS}
        excluded = result.excluding_train or {}
        row.update({f"excl_top_{k}": excluded.get(f"top_{k}", float("nan")) for k in KS})
        rows[name] = row
    rows["model"]["fit"] = metrics["timing"]["fit_seconds"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["basic-retrieval", "retrieval", "item-to-item"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    args = parser.parse_args()

    results = {}
    baselines = {}
    for recipe in args.recipes:
        runs = [measure(recipe, seed) for seed in args.seeds]
        recipe = recipe_config.load_recipe(recipe)[0].get("recipe", {}).get("name") or recipe
        results[recipe] = {key: statistics.mean(r["model"][key] for r in runs) for key in runs[0]["model"]}
        baselines[recipe] = {k: v for k, v in runs[0].items() if k != "model"}

    columns = ["top_10", "top_100", "excl_top_10", "excl_top_100", "fit"]
    print(f"seeds: {args.seeds}")
    print(f"{'':30}" + "".join(f"{c:>14}" for c in columns))
    shown = set()
    for recipe, row in results.items():
        for name, baseline in baselines[recipe].items():
            label = f"{name} ({recipe})"
            key = (name, tuple(baseline.values()))
            if key not in shown:
                shown.add(key)
                print(f"{label:30}" + "".join(f"{baseline[c]:14.4f}" for c in columns[:-1]) + f"{'-':>14}")
        print(f"{recipe:30}" + "".join(f"{row[c]:14.4f}" for c in columns[:-1]) + f"{row['fit']:13.1f}s")
    popularity = baselines.get("retrieval", {}).get("popularity")
    if "retrieval" in results and popularity:
        tuned = results["retrieval"]
        print()
        for key, bound in TARGETS.items():
            print(f"{'PASS' if tuned[key] >= bound else 'FAIL'}  retrieval {key} >= {bound} ({tuned[key]:.4f})")
            if tuned[key] <= popularity[key]:
                print(f"FAIL  retrieval {key} beats popularity")
        if "basic-retrieval" in results:
            ok = tuned["fit"] <= results["basic-retrieval"]["fit"]
            print(f"{'PASS' if ok else 'FAIL'}  retrieval fits no slower than basic-retrieval "
                  f"({tuned['fit']:.1f}s vs {results['basic-retrieval']['fit']:.1f}s)")


if __name__ == "__main__":
    main()
