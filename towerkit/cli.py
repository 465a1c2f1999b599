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
from pathlib import Path
from typing import Any, Callable, Sequence

DEFAULT_RECIPE = "retrieval"
KIND_CHOICES = ("towers", "tasks", "indexes", "datasets", "baselines", "recipes")

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
    "recipes": """examples:
  towerkit recipes show basic-retrieval > my_recipe.toml
  towerkit train my_recipe.toml""",
    "list": """examples:
  towerkit list towers
  towerkit list indexes 'scann*'
  towerkit list recipes --json""",
    "recommend": """examples:
  towerkit recommend --model towerkit-runs/retrieval/model --user 42 -k 10
  towerkit recommend --model towerkit-runs/retrieval/model --user 42 --exclude-seen --json
  towerkit recommend --model runs/features/model --feature user_id=42 --feature timestamp=879024327
  echo '[{"user_id": "42"}, {"user_id": "7"}]' | towerkit recommend --model MODEL --query-json -""",
    "similar": """examples:
  towerkit train item-to-item
  towerkit similar "Star Wars (1977)" -k 10""",
    "serve": """examples:
  towerkit serve towerkit-runs/retrieval/model              # POST /v1/models/retrieval:predict on port 8501
  curl -d '{"instances": [{"user_id": "42", "k": 5}]}' localhost:8501/v1/models/retrieval:predict""",
    "data": """examples:
  towerkit data fetch movielens-100k
  towerkit data info movielens-100k --json
  towerkit data inspect events.csv --recipe-out my.toml     # your own log: schema, counts, a starter recipe
  towerkit data inspect logs/ --query-id user --candidate-id item --candidates items.parquet""",
}


class UserError(Exception):
    """An error in how the command was used."""


def _quiet_tensorflow() -> None:
    # Level 3 also hides the CUDA probe errors TF logs on machines without a GPU.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TF's Python side logs through absl (e.g. a failed async checkpoint, which towerkit reports itself).
    import absl.logging

    absl.logging.set_verbosity(absl.logging.FATAL)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _train_config(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The resolved recipe and output dir of a train command (a new run, or the one to resume)."""
    from towerkit import config as recipe_config
    from towerkit.runs import load_run_config

    if args.recipe_option:
        if args.recipe and args.recipe != args.recipe_option:
            raise UserError(f"two recipes given ({args.recipe} and --recipe {args.recipe_option}); pass one.")
        args.recipe = args.recipe_option
    if args.checkpoint_every <= 0:
        raise UserError(f"--checkpoint-every must be a positive integer, got {args.checkpoint_every}.")
    if args.resume:
        if args.recipe is not None or args.set or args.force:
            raise UserError("--resume continues a run exactly as it was configured; drop the recipe, --set and --force.")
        return load_run_config(Path(args.resume)), args.resume
    raw, origin = recipe_config.load_recipe(args.recipe or DEFAULT_RECIPE)
    overrides = list(args.set or []) + ([f'train.strategy="{args.strategy}"'] if args.strategy else [])
    raw = recipe_config.apply_overrides(raw, overrides)
    resolved = recipe_config.resolve(raw, origin + (" with --set" if overrides else ""))
    if not resolved["recipe"]["name"]:
        name = os.path.splitext(os.path.basename(args.recipe))[0]
        resolved["recipe"]["name"] = recipe_config.check_recipe_name(name, f"the name of recipe file {args.recipe}")
    return resolved, args.output or os.path.join("towerkit-runs", resolved["recipe"]["name"])


def cmd_train(args: argparse.Namespace) -> int:
    config, output = _train_config(args)
    from towerkit import pipeline
    from towerkit.embedding import show_progress

    show_progress(not args.json)
    log = (lambda message: None) if args.json else (lambda message: print(message, flush=True))
    # Keras redraws its progress bar in place, which only reads well on a terminal.
    verbose = 0 if args.json else (1 if sys.stdout.isatty() else 2)
    result = pipeline.run(config, output, log=log, verbose=verbose, resume=bool(args.resume), force=args.force,
                          checkpoint_every=args.checkpoint_every, tensorboard=args.tensorboard)
    if args.json:
        _print_json(result.metrics)
    else:
        print(f"done in {result.metrics['timing']['total_seconds']:.1f}s; reports in {result.output}")
    return 0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from towerkit.pipeline import stage_evaluate
    from towerkit.runs import open_run

    run = open_run(args.model, _stderr)
    if not args.json:
        print(f"{run.output}: {run.config['recipe']['name']}, {run.epochs_trained} epochs trained")
        run.options.log = print
    stage_evaluate(run)
    if args.json:
        _print_json({"epochs_trained": run.epochs_trained, "test": run.metrics["test"]})
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from towerkit import config as recipe_config
    from towerkit import files
    from towerkit.export import EXPORT_KIND
    from towerkit.export_format import METADATA_FILE
    from towerkit.pipeline import stage_export, stage_index
    from towerkit.runs import open_run

    overrides = args.set or []
    recipe_config.check_export_overrides(overrides)
    target = Path(args.output or os.path.join(args.model, "model"))
    # Refused before any work: towerkit replaces only an export it wrote itself.
    files.recover(target)
    files.check_replaceable(target, EXPORT_KIND, legacy_files=(METADATA_FILE,))
    run = open_run(args.model, _stderr)
    run.config = recipe_config.resolve(recipe_config.apply_overrides(run.config, overrides),
                                       f"{args.model}/config.toml with --set")
    run.options.log = _stderr
    run.export_target = target
    run.metrics.update(recipe=run.config["recipe"]["name"], dataset=run.data.describe())
    run.config["export"]["enabled"] = True
    stage_index(run)
    stage_export(run)
    print(f"exported {run.config['index']['name']} index over {run.index.num_candidates:,} candidates to {run.export_dir}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    import towerkit

    if args.kind == "recipes":
        from towerkit import config as recipe_config

        names = [n for n in recipe_config.list_recipes() if _match(n, args.pattern)]
        rows = [{"name": n, "source": "towerkit"} for n in names]
    else:
        registry = towerkit.get_registry(args.kind)
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
            "components": [plugins.component_label(e) for e in info.components],
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


KIND_SINGULAR = {"towers": "tower", "tasks": "task", "indexes": "index", "datasets": "dataset", "baselines": "baseline"}


def cmd_data(args: argparse.Namespace) -> int:
    if args.action == "inspect":
        return _inspect_data(args)
    import towerkit

    entry = towerkit.get_registry("datasets").get(args.name)  # an unknown name: one error with suggestions
    if args.action == "fetch":
        if entry.name != "movielens-100k":
            raise UserError(f"only movielens-100k can be fetched, not '{args.name}'; other datasets need no fetch.")
        from towerkit.datasets import fetch

        print(fetch.fetch_movielens_100k(args.data_dir))
        return 0
    options = {}
    if args.data_dir:
        from towerkit.registry import accepted_options

        accepted, takes_any = accepted_options(entry.load())
        if "data_dir" not in accepted and not takes_any:
            raise UserError(f"dataset '{args.name}' reads no data dir, so --data-dir does not apply; drop it.")
        options["data_dir"] = args.data_dir
    info = towerkit.load_dataset(args.name, **options).describe()
    if args.json:
        _print_json(info)
    else:
        for key, value in info.items():
            print(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    return 0


def _inspect_data(args: argparse.Namespace) -> int:
    """`data inspect PATH`: an interaction log described before any training, and optionally a starter recipe."""
    from towerkit.datasets import profile

    names = ("query_id", "candidate_id", "timestamp", "candidates", "queries")
    options = {name: getattr(args, name) for name in names if getattr(args, name)}
    if args.recipe_out and os.path.lexists(args.recipe_out):
        raise UserError(f"{args.recipe_out} already exists; towerkit writes a starter recipe only to a new file.")
    report = profile.inspect(args.name, **dict(options))
    if args.recipe_out:
        from towerkit import files

        files.write_file(args.recipe_out, profile.starter_recipe(args.name, **dict(options)))
    if args.json:
        _print_json(report)
    else:
        print(profile.format_report(report))
        if args.recipe_out:
            print(f"starter recipe written to {args.recipe_out}; train it with `towerkit train {args.recipe_out}`")
    return 0


def _query_id(text: str) -> bytes:
    """The id as the bytes the user typed: ids that are not UTF-8 reach the model unchanged."""
    return os.fsencode(text)


def _warn_if_unknown(export: Any, what: str, query: bytes) -> None:
    from towerkit.export_format import QUERY_VOCABULARY_FILE

    vocabulary = export.read_json(QUERY_VOCABULARY_FILE)
    if vocabulary is not None and not isinstance(vocabulary, list):
        raise UserError(f"{export.path / QUERY_VOCABULARY_FILE} is damaged (not a list of ids); export the model again.")
    if vocabulary is not None and query.decode("utf-8", "replace") not in set(vocabulary):
        # Documented behaviour: unknown ids share the out-of-vocabulary embedding.
        shown = query.decode("utf-8", "backslashreplace")
        _stderr(f"towerkit: warning: {what} {shown!r} is unknown to this model; answering from the "
                "shared out-of-vocabulary embedding.")


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        print(f"{row['rank']:>3}. {row['id']}  ({row['score']:.3f})")


def _ranked(ids: Any, scores: Any, k: int, skip: bytes | None = None) -> list[dict[str, Any]]:
    pairs = [(i, float(s)) for i, s in zip(ids, scores) if i and i != skip]
    if k > len(pairs):
        raise UserError(f"-k {k} is more than the {len(pairs)} results this export returns; ask for at most {len(pairs)}.")
    return [{"rank": n + 1, "id": i.decode("utf-8", "backslashreplace"), "score": s} for n, (i, s) in enumerate(pairs[:k])]


def cmd_recommend(args: argparse.Namespace) -> int:
    from towerkit.serving import cli_input, load_export

    export = load_export(args.model)
    specs = export.feature_specs
    given = [name for name, value in (("--user", args.user), ("--feature", args.feature),
                                      ("--query-json", args.query_json)) if value]
    if len(given) != 1:
        raise UserError(f"pass the query with one of --user, --feature KEY=VALUE or --query-json, "
                        f"not {' and '.join(given) or 'none'}.")
    if args.user is not None:
        known = export.known_features or {"features": {}}
        if [key for key in list(specs)[1:] if key not in known["features"]]:
            raise UserError(f"this model reads {', '.join(specs)}; --user only feeds the query id, so pass each "
                            "feature with --feature KEY=VALUE (or use --query-json).")
        _warn_if_unknown(export, next(iter(specs)), _query_id(args.user))
        queries, exclusions = [{next(iter(specs)): _query_id(args.user)}], None
    elif args.feature:
        queries, exclusions = [cli_input.query_from_features(args.feature, specs)], None
    else:
        queries, exclusions = cli_input.split_exclusions(cli_input.queries_from_json(args.query_json))
    if args.exclude_seen:
        exclusions = _seen_exclusions(args.model, export, queries, exclusions)
    # A known user's other features (e.g. their latest history) come from the export when not given.
    queries = [{key: values[0] for key, values in export.with_known_features({k: [v] for k, v in query.items()}).items()}
               for query in queries]
    scores, ids = export.recommend(cli_input.columns(queries, specs), exclude=exclusions)
    results = [_ranked(ids[n], scores[n], args.k) for n in range(len(queries))]
    if args.query_json:
        _print_query_results(queries, results, args.json)
    else:
        _print_rows(results[0], args.json)
    return 0


def _seen_exclusions(model: str, export: Any, queries: list[dict[str, Any]], exclusions: Any) -> list[list[Any]]:
    """Each query's training items (looked up by its first feature, the query id), plus its own exclusions."""
    from towerkit.export_format import SEEN_FILE

    seen = export.read_json(SEEN_FILE)
    if not isinstance(seen, dict):
        raise UserError(f"{model} has no usable {SEEN_FILE}, so --exclude-seen cannot know what was seen; re-export it.")
    id_key = export.query_feature_keys[0]
    result = []
    for position, query in enumerate(queries):
        query_id = query[id_key]
        query_id = query_id.decode("utf-8", "replace") if isinstance(query_id, bytes) else str(query_id)
        items = seen.get(query_id, [])
        if not isinstance(items, list):
            raise UserError(f"{model}/{SEEN_FILE} is damaged (not lists of ids); export the model again.")
        own = list(exclusions[position]) if exclusions is not None and isinstance(exclusions[position], list) else []
        result.append(own + [str(item) for item in items])
    return result


def _print_query_results(queries: list[dict[str, Any]], results: list[list[dict[str, Any]]], as_json: bool) -> None:
    if as_json:
        _print_json([{"query": n, "results": rows} for n, rows in enumerate(results)])
        return
    for n, (query, rows) in enumerate(zip(queries, results)):
        shown = ", ".join(f"{k}={v.decode('utf-8', 'backslashreplace') if isinstance(v, bytes) else v}"
                          for k, v in query.items())
        print(f"query {n}: {shown}")
        _print_rows(rows, False)


def cmd_similar(args: argparse.Namespace) -> int:
    from towerkit.serving import load_export

    export = load_export(args.model)
    keys = export.query_feature_keys
    dataset = str(export.metadata.get("components", {}).get("dataset", {}).get("name", ""))
    if len(keys) != 1 or not export.metadata.get("query_is_candidate", "item2item" in dataset):
        raise UserError(f"{args.model} is not an item-to-item model (its queries are not candidates); "
                        "train one with `towerkit train item-to-item` and pass its export.")
    item = _query_id(args.item)
    _warn_if_unknown(export, "item", item)
    scores, ids = export.recommend({keys[0]: [item]})
    # The query item is itself a candidate; "more like this" never returns it.
    _print_rows(_ranked(ids[0], scores[0], args.k, skip=item), args.json)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from towerkit.serving.http import serve

    for value, option in ((args.port, "--port"), (args.max_body, "--max-body"), (args.workers, "--workers"),
                          (args.max_batch, "--max-batch")):
        low = 0 if option == "--port" else 1
        if not low <= value <= (65535 if option == "--port" else 1 << 30):
            raise UserError(f"{option} must be an integer from {low}{' to 65535' if option == '--port' else ' up'}, "
                            f"got {value}.")
    log = lambda message: print(message, flush=True)  # noqa: E731 - one line per event, seen at once
    return serve(args.export_dir, host=args.host, port=args.port, name=args.name, max_body=args.max_body,
                 workers=args.workers, max_batch=args.max_batch, log=log)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``towerkit: error:`` line (exit 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"towerkit: error: {message}; see `{self.prog} --help`.\n")


def _configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help=f"recipe name or .toml path (default {DEFAULT_RECIPE})")
    parser.add_argument("--recipe", dest="recipe_option", metavar="RECIPE", help="the same, as an option")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a recipe value (repeatable)")
    parser.add_argument("--output", "-o", help="output dir (default towerkit-runs/RECIPE)")
    parser.add_argument("--json", action="store_true", help="print metrics as JSON only")
    parser.add_argument("--resume", metavar="DIR", help="continue a killed run from its last checkpoint")
    parser.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                        help="save a checkpoint every N epochs (default 1)")
    parser.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs to OUTPUT/tensorboard")
    parser.add_argument("--force", action="store_true",
                        help="move another configuration's checkpoints in OUTPUT aside instead of refusing")
    parser.add_argument("--strategy", choices=("default", "mirrored", "multi-worker", "parameter-server"),
                        help="tf.distribute strategy (overrides train.strategy)")


def _configure_run_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="RUN_DIR", help="output dir of `towerkit train`")


def _configure_evaluate(parser: argparse.ArgumentParser) -> None:
    _configure_run_dir(parser)
    parser.add_argument("--json", action="store_true")


def _configure_export(parser: argparse.ArgumentParser) -> None:
    _configure_run_dir(parser)
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="change the index, e.g. index.name=scann or index.k=100 (repeatable)")
    parser.add_argument("--output", "-o", help="export dir (default RUN_DIR/model)")


def _configure_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KIND_CHOICES)
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern (default *)")
    parser.add_argument("--json", action="store_true")


def _configure_describe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KIND_CHOICES[:-1])
    parser.add_argument("name")


def _configure_json_only(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true")


def _configure_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("fetch", "info", "inspect"))
    parser.add_argument("name", nargs="?", default="movielens-100k",
                        help="a dataset name (fetch, info) or an interaction log's path (inspect)")
    parser.add_argument("--data-dir", help="towerkit data dir (default $TOWERKIT_DATA or ~/.cache/towerkit)")
    parser.add_argument("--json", action="store_true")
    inspect = parser.add_argument_group("inspect (your own interaction log)")
    inspect.add_argument("--query-id", help="the query id column (guessed from names like user/user_id)")
    inspect.add_argument("--candidate-id", help="the candidate id column (guessed from names like item/item_id)")
    inspect.add_argument("--timestamp", help="the time column (guessed from names like ts/timestamp)")
    inspect.add_argument("--candidates", metavar="FILE", help="a table of candidate features, one row per candidate")
    inspect.add_argument("--queries", metavar="FILE", help="a table of query features, one row per query")
    inspect.add_argument("--recipe-out", metavar="FILE", help="write a starter recipe that trains as it is")


def _configure_recommend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="export dir written by train")
    parser.add_argument("--user", help="the query id, for a query tower that reads one feature (e.g. a user id)")
    parser.add_argument("--feature", action="append", metavar="KEY=VALUE",
                        help="one query feature (repeatable), for any query tower; a list for a multi-valued "
                             "feature, e.g. genres=[1,4]")
    parser.add_argument("--query-json", metavar="FILE", help='several queries from a JSON file (- for stdin): one '
                        'object per query, or a list of them, e.g. [{"user_id": "42", "exclude": ["item 7"]}]')
    parser.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    parser.add_argument("--exclude-seen", action="store_true", help="leave out the user's training items")
    parser.add_argument("--json", action="store_true")


def _configure_similar(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("item", help="the query item's id, e.g. a movie title")
    parser.add_argument("--model", default=os.path.join("towerkit-runs", "item-to-item", "model"),
                        help="export dir written by `towerkit train item-to-item` (default %(default)s)")
    parser.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    parser.add_argument("--json", action="store_true")


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export_dir", metavar="EXPORT_DIR", help="export dir written by train or export")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=8501, help="port (default %(default)s, as TF Serving's REST; "
                        "0 picks a free one)")
    parser.add_argument("--name", help="model name in /v1/models/NAME (default: the recipe's name)")
    parser.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES",
                        help="largest request body accepted (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="model calls run at once (default %(default)s)")
    parser.add_argument("--max-batch", type=int, default=64, metavar="N",
                        help="most queued queries coalesced into one model call; 1 turns coalescing off "
                             "(default %(default)s)")


# name -> (help, configure the parser, run the command); a new command is one row here.
def _configure_recipes(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=OneLineParser)
    show = actions.add_parser("show", help="print a shipped recipe's TOML, to copy and edit")
    show.add_argument("name", help="a name from `towerkit list recipes`")


def cmd_recipes(args: argparse.Namespace) -> int:
    """Prints a shipped recipe as written (comments included); docs/recipes.md describes every key."""
    import difflib
    from importlib import resources

    from towerkit import config as recipe_config

    names = recipe_config.list_recipes()
    if args.name not in names:
        close = difflib.get_close_matches(args.name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown recipe '{args.name}'; {hint}shipped recipes: {', '.join(names)}.")
    print((resources.files("towerkit") / recipe_config.RECIPE_DIR / f"{args.name}.toml").read_text(encoding="utf-8"),
          end="")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train": ("Train, evaluate, index and export a model from a recipe.", _configure_train, cmd_train),
    "evaluate": ("Evaluate a trained run again (exact top-k against the baselines).", _configure_evaluate, cmd_evaluate),
    "export": ("Export a trained run with an index of your choice.", _configure_export, cmd_export),
    "list": ("List registered components or shipped recipes.", _configure_list, cmd_list),
    "describe": ("Show one component's source, aliases and options.", _configure_describe, cmd_describe),
    "plugins": ("List plugins and the components each registered.", _configure_json_only, cmd_plugins),
    "recipes": ("Show a shipped recipe, to copy and edit.", _configure_recipes, cmd_recipes),
    "data": ("Fetch a dataset or describe it.", _configure_data, cmd_data),
    "recommend": ("Recommend from an exported model.", _configure_recommend, cmd_recommend),
    "similar": ("Items like a given item, from an item-to-item export.", _configure_similar, cmd_similar),
    "serve": ("Serve an export over HTTP with TensorFlow Serving's REST predict API.", _configure_serve, cmd_serve),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="towerkit", description="Two-tower retrieval recommenders, assembled by name.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name, (help_text, configure, run) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOGS.get(name),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        configure(command)
        command.set_defaults(func=run)
    return parser


def _run(args: argparse.Namespace) -> int:
    from towerkit.errors import TowerkitError

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            code = args.func(args)
            sys.stdout.flush()
            return code
    except (TowerkitError, UserError) as exc:
        message = str(exc).replace("\n", " ")
        print(f"towerkit: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("towerkit: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_tensorflow()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "k", 1) is not None and getattr(args, "k", 1) <= 0:
        parser.exit(2, f"towerkit: error: -k must be a positive integer, got {args.k}.\n")
    try:
        return _run(args)
    except OSError as exc:
        # stdout itself failed (a full disk, a closed pipe): nothing more can be printed there.
        _silence_stdout()
        print(f"towerkit: error: writing the output failed ({exc.strerror or exc}); "
              "check where standard output goes.", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """Points stdout at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
