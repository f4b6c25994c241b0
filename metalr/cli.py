"""The `metalr` command: plugins, validate, run, resume, sweep, runs, nets, report, new-plugin.

Exit codes: 0 success, 1 a run failed (or the output folder or tracker could not be used), 2 a
bad recipe or override, or under ``METALR_STRICT_PLUGINS=1`` a plugin that did not load or was
refused (nothing tracked, nothing written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metalr.contracts.registry import KINDS, PluginLoadError, UnknownComponentError, get_registry
from metalr.engine.checkpoint import CheckpointError
from metalr.recipes.loader import RecipeError, load_recipe
from metalr.running.rundir import SUITE, RunError, read_json

if TYPE_CHECKING:
    from metalr.running.results import RunSummary


def option_rows(component: Any) -> list[dict[str, str]]:
    """A component's options as its schema states them: name, type, default, description."""
    from pydantic_core import PydanticUndefined

    rows = []
    for name, field in (component.options.model_fields if component.options else {}).items():
        if field.default_factory is not None:
            default = repr(field.default_factory())
        else:
            default = "required" if field.default is PydanticUndefined else repr(field.default)
        rows.append({"option": name, "type": _type_name(field.annotation), "default": default,
                     "description": field.description or ""})
    return rows


def _type_name(annotation: Any) -> str:
    """``'auto' | 'paper'``, ``float | None``, ``list[str]``: what a recipe may write."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:  # constraints (> 0, ...) are in the description or checked
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    if origin is not None and args:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _cmd_plugins(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # broken plugins are listed below instead
        registry = get_registry()
    if args.kind is not None:
        if args.name is None:
            raise RunError(f"`metalr plugins {args.kind}` needs a component name too, e.g. "
                           f"`metalr plugins lr_policy mlrsnet`")
        try:
            component = registry.get(args.kind, args.name)
        except UnknownComponentError as exc:
            raise RunError(str(exc)) from None
        rows = option_rows(component)
        if args.json:
            print(json.dumps({"kind": component.kind, "name": component.name,
                              "source": component.source, "summary": component.summary,
                              "options": rows}, indent=2))
            return 0
        print(f"{component.kind} {component.name} ({component.source}): {component.summary}")
        if not rows:
            print("no options")
        widths = [max([len(h)] + [len(r[h]) for r in rows]) for h in ("option", "type", "default")]
        for r in rows:
            print(f"  {r['option']:<{widths[0]}}  {r['type']:<{widths[1]}}  "
                  f"{r['default']:<{widths[2]}}  {r['description']}")
        return 0
    components = [
        {"kind": c.kind, "name": c.name, "source": c.source, "summary": c.summary}
        for c in registry.all()
    ]
    broken = [{"source": b.source, "error": b.error} for b in registry.broken]
    refused = [{"kind": r.kind, "name": r.name, "source": r.source, "kept": r.kept,
                "message": str(r)} for r in registry.refused]
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


def _selection(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """``--only a,b`` / ``--skip c`` (repeatable) as ``load_recipe``'s keywords."""
    def names(values: list[str] | None) -> tuple[str, ...]:
        return tuple(n.strip() for v in values or () for n in v.split(",") if n.strip())
    return {"only": names(args.only), "skip": names(args.skip)}


def _cmd_validate(args: argparse.Namespace) -> int:
    from metalr.recipes.validation import temporary_files_removed

    with temporary_files_removed():  # validate writes nothing, temporary files included
        recipe = load_recipe(args.recipe, args.overrides, deep=True, **_selection(args))
    methods = ", ".join(recipe.methods)
    if _is_main_rank():
        print(f"{args.recipe}: ok ({recipe.name}: task {recipe.task.name}, "
              f"model {recipe.model.name}, methods {methods}, {recipe.train.epochs} epochs)")
    return 0


def _is_main_rank() -> bool:
    """Rank 0 of a torchrun launch (or no torchrun): the one process that prints."""
    return os.environ.get("RANK", "0") == "0"


def _cmd_run(args: argparse.Namespace) -> int:
    from metalr.running.runner import Runner  # torch-heavy; not needed by the other commands

    recipe = load_recipe(args.recipe, args.overrides, deep=True, **_selection(args))
    args.runner = Runner(recipe, progress=not args.quiet)  # -q: result lines still print
    summary = args.runner.run()
    return _report(summary, recipe.tracking is not None and recipe.tracking.name == "mlflow")


def _report(summary: RunSummary, tracked: bool) -> int:
    if not _is_main_rank():  # under torchrun every rank has the summary; rank 0 shows it
        return 0 if summary.ok else 1
    print()
    print(summary.markdown())
    print(f"\nfigures and tables: {summary.output_dir}/ "
          "(lr.png, curves.png, results.md, results.csv)")
    if tracked:
        # the store named in full: `mlflow ui`'s own default store differs across versions
        uri = (read_json(summary.output_dir / SUITE) or {}).get("tracking_uri")
        ui = f"mlflow ui --backend-store-uri {shlex.quote(uri)}" if uri else "mlflow ui"
        print(f"tracked in MLflow experiment {summary.name!r}: `{ui}` browses it")
    return 0 if summary.ok else 1


def _cmd_sweep(args: argparse.Namespace) -> int:
    from metalr.running.sweep import execute, plan

    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise RunError("a sweep cannot run under torchrun (its executor starts its own "
                       "processes); run `metalr sweep` without torchrun, or torchrun "
                       "`metalr run` on each point's recipe")
    sweep = plan(args.recipe, args.overrides, **_selection(args))  # all points validated first
    if args.list:
        for point in sweep.points:
            print(f"{point.index}\t{point.label}")
        return 0
    if args.index is not None and not 0 <= args.index < len(sweep.points):
        print(f"metalr: --index {args.index}: the sweep of {args.recipe} has points "
              f"0..{len(sweep.points) - 1} (`--list` shows them)", file=sys.stderr)
        return 2
    print(f"sweep of {len(sweep.points)} points in {sweep.folder}", flush=True)
    outcome = execute(sweep, args.index, progress=not args.quiet)
    print(f"\ntables and figures: {sweep.folder}/ (results.md, results.csv, sweep-<key>.png)")
    return _exit_status(outcome, "continue")


def _exit_status(outcome: Any, rerun: str) -> int:
    """A sweep's or a search's exit status: 130 interrupted (saying how to go on), 1 failed."""
    if outcome.interrupted:
        print(f"interrupted: runs marked KILLED; run the same command again to {rerun}",
              file=sys.stderr)
        return 130
    return 0 if outcome.ok else 1


def _cmd_search(args: argparse.Namespace) -> int:
    from metalr.running.search import execute, optuna_module, plan

    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise RunError("a search cannot run under torchrun (its executor starts its own "
                       "processes); run `metalr search` without torchrun")
    optuna_module()  # a missing extra: one line, before the recipe is checked
    search = plan(args.recipe, args.overrides)  # the space's bounds checked first
    print(f"search of {search.config.trials} trials in {search.folder}", flush=True)
    outcome = execute(search, progress=not args.quiet)  # -q: each trial's line still prints
    print(f"\n{outcome.table}\n\n{outcome.best}")
    print(f"\ntables: {search.folder}/ (results.md, results.csv; Optuna's study: optuna.db)")
    return _exit_status(outcome, "go on")


def _cmd_resume(args: argparse.Namespace) -> int:
    from metalr.running.runner import Runner

    args.runner = Runner.resumable(args.run_dir, progress=not args.quiet)
    args.runner.tracking_uri = args.tracking_uri  # else the store the folder recorded
    summary = args.runner.run()
    return _report(summary, summary.run_id is not None)


def _cmd_runs(args: argparse.Namespace) -> int:
    """Lists (and cleans) an existing store only: a missing, empty, foreign or damaged SQLite
    file is a one-line error (exit 2), never created, migrated or written."""
    from metalr.reporting.suite_reader import ReportError, existing_store
    from metalr.running.rundir import StoreError, is_running
    from metalr.running.tracking import HOST, HOST_TAG, OUTPUT_TAG, mark_killed

    try:
        if args.tracker == "mlflow":  # its default store resolved by the plugin, read-only
            existing_store(args.tracking_uri, args.tracker)
        tracker = get_registry().get("tracker", args.tracker).build(
            **({"tracking_uri": args.tracking_uri} if args.tracking_uri else {}))
    except (ReportError, StoreError) as exc:
        print(f"metalr: {exc}", file=sys.stderr)
        return 2
    try:
        if not callable(getattr(tracker, "running_runs", None)):
            print(f"metalr: the tracker {args.tracker!r} cannot list its runs", file=sys.stderr)
            return 1
        if args.clean:
            killed = mark_killed(tracker)
            print(f"marked {len(killed)} run{'s' * (len(killed) != 1)} KILLED (RUNNING, but "
                  "the process that ran them is gone)" + "".join(f"\n  {r}" for r in killed))
            return 0
        for run_id, tags in tracker.running_runs():
            where = tags.get(OUTPUT_TAG)
            if tags.get(HOST_TAG, HOST) != HOST:
                alive = f"on {tags[HOST_TAG]} (not checked from here)"
            elif where is None:
                alive = "not started by metalr"
            else:
                alive = "running" if is_running(Path(where)) else "stale (process gone)"
            print(f"{run_id}  {tags.get('mlflow.runName', '')}  {alive}  {where or '-'}")
        return 0
    except StoreError as exc:  # a damaged database, found while reading it
        print(f"metalr: {exc}; repair or restore the store, or pass another with "
              "--tracking-uri", file=sys.stderr)
        return 2
    finally:
        tracker.close()


def _cmd_nets(args: argparse.Namespace) -> int:
    from metalr.scheduler.learned import describe_shipped_nets

    if getattr(args, "nets_command", None) == "import":
        return _cmd_nets_import(args)
    if getattr(args, "nets_command", None) == "ship":
        return _cmd_nets_ship(args)
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


def _cmd_nets_import(args: argparse.Namespace) -> int:
    from metalr.engine.net_import import import_nets
    from metalr.engine.weights import WeightsError

    try:
        written = import_nets(args.files, args.out, gamma=args.gamma)
    except WeightsError as exc:
        print(f"metalr: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print(f"card: {Path(args.out) / 'card.md'}; use the folder wherever a net is named, e.g. "
          f"LearnedLR.from_pretrained(optimizer, {str(args.out)!r}, ...)")
    return 0


def _cmd_nets_ship(args: argparse.Namespace) -> int:
    from metalr.reporting.cards import CardError, NetsDiffer, ship

    try:
        shipped = ship(args.run, args.out, replace=args.replace)
    except CardError as exc:  # not a finished learned run, a broken card, other nets there
        print(f"metalr: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, NetsDiffer) else 2
    for name, sha in shipped.nets.items():
        print(f"{Path(args.out) / name}  sha256 {sha}"
              + ("  (replaced)" if name in shipped.replaced else ""))
    for name in sorted(set(shipped.replaced) - set(shipped.nets)):
        print(f"{Path(args.out) / name}  removed (not saved by the run)")
    print(f"card: {shipped.card}")
    for note in shipped.notes:
        print(f"metalr: warning: {note}", file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from metalr.reporting.html import ReportError, build_report

    say = None if args.quiet else (lambda line: print(line, flush=True))
    try:
        index = build_report(args.targets, args.out, args.tracking_uri, say,
                             warn=lambda line: print(f"metalr: warning: {line}",
                                                     file=sys.stderr, flush=True),
                             markdown=args.markdown)
    except ReportError as exc:  # an unknown name or id, no store or not one, nothing tracked
        print(f"metalr: {exc}", file=sys.stderr)
        return 2
    print(f"report: {index.resolve()}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from metalr.reporting.html import ReportError
    from metalr.reporting.reproduce import load_index, reproduce

    if args.list:
        index = load_index(args.index)
        for name, section in index.sections.items():
            minutes = f", ~{section.minutes:g} min" if section.minutes else ""
            print(f"{name}\t{section.doc}{minutes}: {', '.join(section.made_by())}")
        return 0
    if args.section is None:
        raise RunError("`metalr reproduce` needs a section name (`--list` shows them)")
    try:
        reproduce(args.section, args.index, args.out, args.store, args.doc, args.quiet)
    except ReportError as exc:
        print(f"metalr: {exc}", file=sys.stderr)
        return 2
    return 0


_SHIP_HELP = """\
Copy the nets a finished run saved (theta-epochNNNN.safetensors: the k of
meta.save_phases, else every meta.save_epochs one, else theta-final) into --out
and write --out/card.md from the run's records: the command that made it
relative to the repository, the commit, the environment, the suite's results
and the seed's training curve. No absolute path of this machine is written.

card.md keeps what is written by hand: only the part between the lines
  <!-- generated by `metalr nets ship`: begin. ... -->
  <!-- generated by `metalr nets ship`: end -->
is rewritten; a card without them gets the part appended, a new card a
template to fill in. Nets already in --out that are not bit-identical to the
run's are named (tensors, max abs diff) and kept unless --replace (exit 1).

  metalr run recipes/quickstart.yaml
  metalr nets ship metalr-out/quickstart-<stamp>/mlrsnet-seed0 --out metalr/nets/mnist1d-mlp
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metalr", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list every component, its kind and its source; "
                       "`plugins KIND NAME`: one component's options")
    p.add_argument("kind", nargs="?", help="a component kind (task, model, lr_policy, ...)")
    p.add_argument("name", nargs="?", help="a component name: show its options")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_plugins)
    p = sub.add_parser("nets", help="list the meta-learned nets shipped with metalr; "
                       "`nets import` converts the authors' released .pth files; `nets ship` "
                       "copies a run's nets with a card made from the run")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_nets)
    nets_sub = p.add_subparsers(dest="nets_command")
    imp = nets_sub.add_parser(
        "import", help="convert the authors' released MLR-SNet .pth files to safetensors + card")
    imp.add_argument("files", nargs="+", help=".pth files, in phase order (e.g. epochs 1 100 200)")
    imp.add_argument("--out", required=True, help="new folder for the nets and card.md")
    imp.add_argument("--gamma", type=float, default=None,
                     help="the LR bound (default: the format's; for the authors' nets 1, the "
                          "paper's for images)")
    shp = nets_sub.add_parser(
        "ship", help="copy a finished run's nets into a folder with a card.md made from the run",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=_SHIP_HELP)
    shp.add_argument("run", metavar="RUN_DIR/METHOD-seedN",
                     help="one seed of a learned method of a finished `metalr run`")
    shp.add_argument("--out", required=True,
                     help="the net's folder (e.g. metalr/nets/NAME); created if missing")
    shp.add_argument("--replace", action="store_true",
                     help="replace nets in --out that differ from the run's (refused otherwise)")
    for name, func, text in [("validate", _cmd_validate, "check a recipe without running it"),
                             ("run", _cmd_run, "run a recipe")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("recipe", help="path to a recipe YAML file")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="override recipe keys, e.g. train.epochs=20")
        if name == "run":
            p.add_argument("-q", "--quiet", action="store_true",
                           help="no progress bar (each run's result line still prints)")
            _add_verbose(p)
        _add_selection(p)
        p.set_defaults(func=func)
    p = sub.add_parser("sweep", help="run every point of a recipe's sweep: block (again: "
                       "finished points are skipped)")
    p.add_argument("recipe", help="path to a recipe YAML file with a sweep: block")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override recipe keys for every point, e.g. sweep.executor.options.workers=2")
    p.add_argument("--list", action="store_true", help="print the points (index, values) and exit")
    p.add_argument("--index", type=int, help="run point I alone, in this process (batch systems)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_verbose(p)
    _add_selection(p)
    p.set_defaults(func=_cmd_sweep)
    p = sub.add_parser("search", help="run Optuna trials over a recipe's search: block (again: "
                       "finished trials are kept, more added up to search.trials)")
    p.add_argument("recipe", help="path to a recipe YAML file with a search: block")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override recipe keys for every trial, e.g. search.trials=40")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars (each trial's line still prints)")
    _add_verbose(p)
    p.set_defaults(func=_cmd_search)
    p = sub.add_parser("resume", help="continue a run killed or interrupted, from its checkpoints")
    p.add_argument("run_dir", help="the output folder the run printed")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_verbose(p)
    p.add_argument("--tracking-uri", help="the store the runs are in, if it moved (default: "
                   "the one the run folder recorded)")
    p.set_defaults(func=_cmd_resume)
    p = sub.add_parser("runs", help="list runs left RUNNING; --clean marks dead ones KILLED")
    p.add_argument("--clean", action="store_true",
                   help="mark KILLED every RUNNING run whose process is gone")
    p.add_argument("--tracker", default="mlflow", help="the tracker component (default mlflow)")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.set_defaults(func=_cmd_runs)
    p = sub.add_parser("new-plugin", help="write an installable plugin package (task, model, "
                       "LR policy, conformance test) to start from")
    p.add_argument("name", help="distribution name, e.g. metalr-myrule (module metalr_myrule)")
    p.add_argument("--out", default=".", help="folder to create it in (default: here)")
    p.set_defaults(func=_cmd_new_plugin)
    p = sub.add_parser("report", help="a static HTML report (LR schedules, curves, tables, "
                       "performance profiles, model cards) of tracked runs")
    p.add_argument("targets", nargs="*", metavar="RUN_OR_EXPERIMENT",
                   help="MLflow experiment names or suite run ids (default: every experiment)")
    p.add_argument("--out", required=True, help="folder for index.html and assets/")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    p.add_argument("--markdown", action="store_true",
                   help="also report.md: the same tables as Markdown, stamped with the commit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("reproduce", help="rerun a published section's recipes into a fresh "
                       "MLflow store and rewrite its tables in docs/ (results/index.yaml)")
    p.add_argument("section", nargs="?", help="a section of the index (`--list` shows them)")
    p.add_argument("--list", action="store_true", help="list the sections and their recipes")
    p.add_argument("--index", default="results/index.yaml", help="default: results/index.yaml")
    p.add_argument("--out", default="metalr-out", help="where the runs' folder and store go")
    p.add_argument("--store", help="render from this MLflow store instead of running")
    p.add_argument("--doc", help="write into this file instead of the section's document")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_verbose(p)
    p.set_defaults(func=_cmd_reproduce)
    return parser


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true",
                   help="INFO lines of metalr and of the libraries it drives (MLflow's store "
                        "and system-metrics messages among them)")


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", action="append", metavar="A,B",
                   help="run only these methods of the recipe (comma-separated, repeatable)")
    p.add_argument("--skip", action="append", metavar="C",
                   help="leave these methods out (comma-separated, repeatable)")


def _cmd_new_plugin(args: argparse.Namespace) -> int:
    from metalr.recipes.template import TemplateError, new_plugin

    try:
        folder = new_plugin(args.name, args.out)
    except TemplateError as exc:
        print(f"metalr: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {folder}\nnext: pip install -e {folder} && pytest {folder}/tests && "
          "metalr plugins")
    return 0


def _interrupt(signum, frame):  # SIGTERM ends a run like Ctrl-C: runs are marked KILLED
    raise KeyboardInterrupt


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Like ``parse_args``, but options may come after or between the ``key=value`` overrides
    (``metalr run r.yaml train.epochs=20 -q``): argparse stops the overrides at the first option."""
    args, rest = parser.parse_known_args(argv)
    stray = [a for a in rest if a.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    return args


def _error(message: object) -> None:
    """An error line on stderr, once: by rank 0 only under torchrun (every rank has it)."""
    if _is_main_rank():
        print(message, file=sys.stderr)


_FORMAT_WARNING = warnings.formatwarning


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, line: str | None = None) -> str:
    """metalr's own warnings (a checkpoint fallback, a refused plugin, a resume with other
    settings) as one console line, not Python's ``file:line: Category: ...`` plus source line;
    other packages' warnings as Python writes them."""
    parts = Path(filename).parts
    if category.__module__.split(".")[0].startswith("metalr") or "metalr" in parts or \
            any(part.startswith("metalr_") for part in parts):
        return f"metalr: warning: {str(message).removeprefix('metalr: ')}\n"
    return _FORMAT_WARNING(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    args = parse_args(build_parser(), argv)
    # the level a tracker plugin's library follows (the MLflow tracker: its INFO lines)
    logging.getLogger("metalr").setLevel(
        logging.INFO if getattr(args, "verbose", False) else logging.WARNING)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.func(args)
    except RecipeError as exc:
        _error(exc)
        return 2
    except PluginLoadError as exc:  # strict mode: the installation, not a run, is at fault
        _error(f"metalr: {exc} (METALR_STRICT_PLUGINS=1 makes this an error)")
        return 2
    except (RunError, CheckpointError) as exc:
        _error(f"metalr: {exc}")
        return 1
    except OSError as exc:  # a read-only or full disk: the path, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"metalr: {where}{exc.strerror or exc}")
        return 1
    except KeyboardInterrupt:
        out = getattr(getattr(args, "runner", None), "output_dir", None)
        hint = f"; `metalr resume {out}` continues them" if out else ""
        _error(f"interrupted: runs marked KILLED{hint}")
        return 130


if __name__ == "__main__":
    sys.exit(main())
