"""The `metalr` command: plugins, validate, run, nets.

Exit codes: 0 success, 1 a run failed, 2 a bad recipe or override (nothing tracked, nothing
written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings

from metalr.plugins import KINDS, get_registry
from metalr.recipe import RecipeError, load_recipe


def _cmd_plugins(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # broken plugins are listed below instead
        registry = get_registry()
    components = [
        {"kind": c.kind, "name": c.name, "source": c.source, "summary": c.summary}
        for c in registry.all()
    ]
    broken = [{"source": b.source, "error": b.error} for b in registry.broken]
    refused = [{"kind": r.kind, "name": r.name, "source": r.source, "kept": r.kept}
               for r in registry.refused]
    if args.json:
        print(json.dumps({"components": components, "broken": broken, "refused": refused},
                         indent=2))
        return 0
    width = max((len(c["name"]) for c in components), default=4)
    kind_width = max(len(k) for k in KINDS)
    for c in components:
        print(f"{c['kind']:<{kind_width}}  {c['name']:<{width}}  {c['source']:<22}  {c['summary']}")
    for b in broken:
        print(f"BROKEN {b['source']}: {b['error']}")
    for r in registry.refused:
        print(f"REFUSED {r}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    methods = ", ".join(recipe.methods)
    print(f"{args.recipe}: ok ({recipe.name}: task {recipe.task.name}, model {recipe.model.name}, "
          f"methods {methods}, {recipe.train.epochs} epochs)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from metalr.runner import Runner  # torch-heavy; not needed by the other commands

    recipe = load_recipe(args.recipe, args.overrides)
    summary = Runner(recipe, progress=not args.quiet).run()
    print()
    print(summary.markdown())
    print(f"\nfigures and tables: {summary.output_dir}/ (lr.png, curves.png, results.md, results.csv)")
    if recipe.tracking is not None:
        print(f"tracked in MLflow experiment {recipe.name!r}: run `mlflow ui` to browse")
    return 0 if summary.ok else 1


def _cmd_nets(args: argparse.Namespace) -> int:
    from metalr.scheduler import describe_shipped_nets

    nets = describe_shipped_nets()
    if args.json:
        print(json.dumps(nets, indent=2))
        return 0
    for n in nets:
        print(f"{n['name']}: {len(n['files'])} x {n['policy']} {json.dumps(n['options'])}, "
              f"gamma {n['gamma']:g}\n  {n['summary']}\n  files: {', '.join(n['files'])}\n"
              f"  card: {n['card']}")
    if not nets:
        print("no shipped nets")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metalr", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list every component, its kind and its source")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_plugins)
    p = sub.add_parser("nets", help="list the meta-learned nets shipped with metalr")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_nets)
    for name, func, text in [("validate", _cmd_validate, "check a recipe without running it"),
                             ("run", _cmd_run, "run a recipe")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("recipe", help="path to a recipe YAML file")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="override recipe keys, e.g. train.epochs=20")
        if name == "run":
            p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=func)
    return parser


def _interrupt(signum, frame):  # SIGTERM ends a run like Ctrl-C: runs are marked KILLED
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.func(args)
    except RecipeError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: runs marked KILLED", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
