"""The ``towerkit`` command line.

Exit codes: 0 on success, 2 on a user error (one line, no traceback), 1 on an
internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, Sequence

DEFAULT_RECIPE = "retrieval"
KIND_CHOICES = ("towers", "tasks", "indexes", "datasets", "recipes")

EPILOGS = {
    "train": """examples:
  towerkit train                              # the tuned recipe, on MovieLens-100K
  towerkit train basic-retrieval --output runs/seed   # the TFRS tutorial, exactly
  towerkit train my_recipe.toml --set train.epochs=5 --set query_tower.embedding_dim=64
  towerkit train --resume towerkit-runs/retrieval      # after a crash or kill""",
    "evaluate": """examples:
  towerkit evaluate --model towerkit-runs/retrieval
  towerkit evaluate --model towerkit-runs/retrieval --json""",
    "export": """examples:
  towerkit export --model towerkit-runs/retrieval --set index.name=scann -o serving/scann
  towerkit export --model towerkit-runs/retrieval --set index.k=100""",
    "describe": """examples:
  towerkit describe towers user
  towerkit describe indexes scann""",
    "plugins": """examples:
  towerkit plugins
  TOWERKIT_PLUGINS=towerkit-hashing towerkit plugins --json""",
    "list": """examples:
  towerkit list towers
  towerkit list indexes 'scann*'
  towerkit list recipes --json""",
    "recommend": """examples:
  towerkit recommend --model towerkit-runs/retrieval/model --user 42 -k 10
  towerkit recommend --model towerkit-runs/retrieval/model --user 42 --exclude-seen --json""",
    "similar": """examples:
  towerkit train item-to-item
  towerkit similar "Star Wars (1977)" -k 10""",
    "data": """examples:
  towerkit data fetch movielens-100k
  towerkit data info movielens-100k --json""",
}


class UserError(Exception):
    """An error in how the command was used."""


def _quiet_tensorflow() -> None:
    # Level 3 also hides the CUDA probe errors TF logs on machines without a GPU.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def cmd_train(args: argparse.Namespace) -> int:
    from towerkit import config as recipe_config

    if args.recipe_option:
        if args.recipe and args.recipe != args.recipe_option:
            raise UserError(f"two recipes given ({args.recipe} and --recipe {args.recipe_option}); pass one.")
        args.recipe = args.recipe_option
    if args.checkpoint_every <= 0:
        raise UserError(f"--checkpoint-every must be a positive integer, got {args.checkpoint_every}.")
    if args.resume:
        if args.recipe is not None or args.set:
            raise UserError("--resume continues a run exactly as it was configured; drop the recipe and --set.")
        saved = os.path.join(args.resume, "config.toml")
        if not os.path.isfile(saved):
            raise UserError(f"{args.resume} has no config.toml, so it is not a towerkit run to resume.")
        raw, origin = recipe_config.load_recipe(saved)
        output = args.resume
    else:
        raw, origin = recipe_config.load_recipe(args.recipe or DEFAULT_RECIPE)
        overrides = list(args.set or []) + ([f'train.strategy="{args.strategy}"'] if args.strategy else [])
        raw = recipe_config.apply_overrides(raw, overrides)
        origin += " with --set" if overrides else ""
    resolved = recipe_config.resolve(raw, origin)
    if not resolved["recipe"]["name"]:
        resolved["recipe"]["name"] = os.path.splitext(os.path.basename(args.recipe))[0]
    if not args.resume:
        output = args.output or os.path.join("towerkit-runs", resolved["recipe"]["name"])

    from towerkit import pipeline
    from towerkit.evaluation import show_progress

    show_progress(not args.json)
    log = (lambda message: None) if args.json else (lambda message: print(message, flush=True))
    # Keras redraws its progress bar in place, which only reads well on a terminal.
    verbose = 0 if args.json else (1 if sys.stdout.isatty() else 2)
    result = pipeline.run(resolved, output, log=log, verbose=verbose, resume=bool(args.resume),
                          checkpoint_every=args.checkpoint_every, tensorboard=args.tensorboard)
    if args.json:
        _print_json(result.metrics)
    else:
        print(f"done in {result.metrics['timing']['total_seconds']:.1f}s; reports in {result.output_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from towerkit.evaluation import BASELINES, evaluate_topk
    from towerkit.runs import open_run

    run = open_run(args.model)
    evaluation = run.config["evaluate"]
    ks, exclude = evaluation["ks"], evaluation["exclude_train"]
    results = {"model": evaluate_topk(run.model, run.data, ks, exclude, evaluation["batch_size"])}
    for name in getattr(run.data, "baselines", ("popularity",)):
        results[name] = BASELINES[name](run.data, ks, exclude)
    if args.json:
        _print_json({"epochs_trained": run.epochs_trained, **results})
        return 0
    print(f"{run.path}: {run.config['recipe']['name']}, {run.epochs_trained} epochs trained")
    for prefix, title in (("", "exact test top-k"), ("excl_", "excluding each user's training items")):
        if prefix and not exclude:
            continue
        print(title + ":")
        for name, values in results.items():
            print(f"  {name:<13}" + "  ".join(f"top-{k} {values[f'{prefix}top_{k}']:.4f}" for k in ks))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from towerkit import pipeline
    from towerkit.export import save_export
    from towerkit.runs import open_run

    run = open_run(args.model, args.set or [])
    index = pipeline.build_index(run.model, run.data, run.config["index"])
    target = args.output or os.path.join(args.model, "model")
    keys = list(run.model.query_tower.feature_keys)
    metrics = {"recipe": run.config["recipe"]["name"], "dataset": run.data.describe()}
    save_export(index, target, query_feature_keys=keys,
                metadata=pipeline.export_metadata(run.config, run.model, metrics),
                extra_files=pipeline.serving_files(run.data, run.model),
                query_specs=pipeline.query_specs(run.data, keys))
    print(f"exported {run.config['index']['name']} index over {index.num_candidates:,} candidates to {target}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    import towerkit

    if args.kind == "recipes":
        from towerkit import config as recipe_config

        names = [n for n in recipe_config.list_recipes() if _match(n, args.pattern)]
        rows = [{"name": n, "source": "towerkit"} for n in names]
    else:
        registry = towerkit.registry(args.kind)
        rows = [
            {"name": e.name, "aliases": list(e.aliases), "source": e.source, "version": e.version, "description": e.description}
            for e in registry.entries()
            if _match(e.name, args.pattern)
        ]
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        source = row["source"] + (f" {row['version']}" if row.get("version") else "")
        aliases = f" (aliases: {', '.join(row['aliases'])})" if row.get("aliases") else ""
        description = f"  {row['description']}" if row.get("description") else ""
        print(f"{row['name']:<18} [{source}]{aliases}{description}")
    return 0


def _match(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)


def cmd_describe(args: argparse.Namespace) -> int:
    import towerkit

    _print_json(towerkit.describe(args.kind, args.name))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from towerkit import plugins

    infos = plugins.plugin_infos()
    rows = [
        {
            "name": info.name,
            "version": info.version,
            "status": info.status,
            "error": info.error,
            "components": [f"{KIND_SINGULAR[e.kind]}:{e.name}" for e in info.components],
        }
        for info in infos
    ]
    allowed = plugins.allowed_plugins()
    if args.json:
        _print_json({"allow_list": sorted(allowed) if allowed is not None else None, "plugins": rows})
        return 0
    if allowed is not None:
        print(f"{plugins.ALLOW_ENV} allows: {', '.join(sorted(allowed)) or '(none)'}")
    for row in rows:
        version = f" {row['version']}" if row["version"] else ""
        print(f"{row['name']}{version} [{row['status']}]" + (f" {row['error']}" if row["error"] else ""))
        for component in row["components"]:
            print(f"  {component}")
    return 0


KIND_SINGULAR = {"towers": "tower", "tasks": "task", "indexes": "index", "datasets": "dataset"}


def cmd_data(args: argparse.Namespace) -> int:
    if args.action == "fetch":
        if args.name not in ("movielens-100k", "movielens"):
            raise UserError(f"only movielens-100k can be fetched, not '{args.name}'; generated datasets need no fetch.")
        from towerkit.datasets import fetch

        directory = fetch.fetch_movielens_100k(args.data_dir)
        print(directory)
        return 0
    import towerkit

    info = towerkit.load_dataset(args.name, **({"data_dir": args.data_dir} if args.data_dir else {})).describe()
    if args.json:
        _print_json(info)
    else:
        for key, value in info.items():
            print(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from towerkit.export_format import QUERY_VOCABULARY_FILE, SEEN_FILE
    from towerkit.serving import load_export

    export = load_export(args.model)
    keys = export.query_feature_keys
    if len(keys) != 1:
        raise UserError(f"this model reads {', '.join(keys)}; --user only feeds a single-feature query tower.")
    vocabulary = export.read_json(QUERY_VOCABULARY_FILE)
    if vocabulary is not None and args.user not in set(vocabulary):
        # Documented behaviour: unknown ids share the out-of-vocabulary embedding.
        print(f"towerkit: warning: {keys[0]} {args.user!r} is unknown to this model; answering from the "
              "shared out-of-vocabulary embedding.", file=sys.stderr)
    exclusions = None
    if args.exclude_seen:
        seen = export.read_json(SEEN_FILE)
        if seen is None:
            raise UserError(f"{args.model} has no {SEEN_FILE}, so --exclude-seen cannot know what was seen; re-export it.")
        exclusions = [seen.get(args.user, [])]
    scores, ids = export.recommend({keys[0]: [args.user]}, exclusions)
    available = scores.shape[1]
    if args.k > available:
        raise UserError(f"-k {args.k} is more than the {available} results this export returns; ask for at most {available}.")
    rows = [{"rank": i + 1, "id": ids[0, i].decode("utf-8"), "score": float(scores[0, i])} for i in range(args.k)
            if ids[0, i]]
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            print(f"{row['rank']:>3}. {row['id']}  ({row['score']:.3f})")
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from towerkit.serving import load_export

    export = load_export(args.model)
    keys = export.query_feature_keys
    if len(keys) != 1:
        raise UserError(f"this model reads {', '.join(keys)}; `similar` needs an item-to-item model with one query feature.")
    scores, ids = export.recommend({keys[0]: [args.item]})
    # The query item is itself a candidate; "more like this" never returns it.
    rows = [(i.decode("utf-8"), float(s)) for i, s in zip(ids[0], scores[0]) if i.decode("utf-8") != args.item]
    if args.k > len(rows):
        raise UserError(f"-k {args.k} is more than the {len(rows)} results this export returns; ask for at most {len(rows)}.")
    result = [{"rank": n + 1, "id": item, "score": score} for n, (item, score) in enumerate(rows[: args.k])]
    if args.json:
        _print_json(result)
    else:
        for row in result:
            print(f"{row['rank']:>3}. {row['id']}  ({row['score']:.3f})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="towerkit", description="Two-tower retrieval recommenders, assembled by name.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text, epilog=EPILOGS.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    train = add("train", "Train, evaluate, index and export a model from a recipe.")
    train.add_argument("recipe", nargs="?", help=f"recipe name or .toml path (default {DEFAULT_RECIPE})")
    train.add_argument("--recipe", dest="recipe_option", metavar="RECIPE", help="the same, as an option")
    train.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a recipe value (repeatable)")
    train.add_argument("--output", "-o", help="output dir (default towerkit-runs/RECIPE)")
    train.add_argument("--json", action="store_true", help="print metrics as JSON only")
    train.add_argument("--resume", metavar="DIR", help="continue a killed run from its last checkpoint")
    train.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                       help="save a checkpoint every N epochs (default 1)")
    train.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs to OUTPUT/tensorboard")
    train.add_argument("--strategy", choices=("default", "mirrored", "multi-worker"),
                       help="tf.distribute strategy (overrides train.strategy)")
    train.set_defaults(func=cmd_train)

    evaluate = add("evaluate", "Evaluate a trained run again (exact top-k against the baselines).")
    evaluate.add_argument("--model", required=True, metavar="RUN_DIR", help="output dir of `towerkit train`")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate)

    export = add("export", "Export a trained run with an index of your choice.")
    export.add_argument("--model", required=True, metavar="RUN_DIR", help="output dir of `towerkit train`")
    export.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="change the index, e.g. index.name=scann or index.k=100 (repeatable)")
    export.add_argument("--output", "-o", help="export dir (default RUN_DIR/model)")
    export.set_defaults(func=cmd_export)

    listing = add("list", "List registered components or shipped recipes.")
    listing.add_argument("kind", choices=KIND_CHOICES)
    listing.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern (default *)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)

    describe = add("describe", "Show one component's source, aliases and options.")
    describe.add_argument("kind", choices=KIND_CHOICES[:-1])
    describe.add_argument("name")
    describe.set_defaults(func=cmd_describe)

    plugins = add("plugins", "List plugins and the components each registered.")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(func=cmd_plugins)

    data = add("data", "Fetch a dataset or describe it.")
    data.add_argument("action", choices=("fetch", "info"))
    data.add_argument("name", nargs="?", default="movielens-100k")
    data.add_argument("--data-dir", help="towerkit data dir (default $TOWERKIT_DATA or ~/.cache/towerkit)")
    data.add_argument("--json", action="store_true")
    data.set_defaults(func=cmd_data)

    recommend = add("recommend", "Recommend from an exported model.")
    recommend.add_argument("--model", required=True, help="export dir written by train")
    recommend.add_argument("--user", required=True, help="the query id (e.g. a user id)")
    recommend.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    recommend.add_argument("--exclude-seen", action="store_true", help="leave out the user's training items")
    recommend.add_argument("--json", action="store_true")
    recommend.set_defaults(func=cmd_recommend)

    similar = add("similar", "Items like a given item, from an item-to-item export.")
    similar.add_argument("item", help="the query item's id, e.g. a movie title")
    similar.add_argument("--model", default=os.path.join("towerkit-runs", "item-to-item", "model"),
                         help="export dir written by `towerkit train item-to-item` (default %(default)s)")
    similar.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    similar.add_argument("--json", action="store_true")
    similar.set_defaults(func=cmd_similar)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_tensorflow()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "k", 1) is not None and getattr(args, "k", 1) <= 0:
        parser.exit(2, f"towerkit: error: -k must be a positive integer, got {args.k}.\n")
    from towerkit.errors import TowerkitError

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            return args.func(args)
    except (TowerkitError, UserError) as exc:
        message = str(exc).replace("\n", " ")
        print(f"towerkit: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("towerkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
