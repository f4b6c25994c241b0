"""Suites read back from a tracking store, through the tracker's reader contract.

The report is built from the store, not from output folders: the store is what outlives a
run's folder and where runs of several machines meet, and it holds all a page needs (params:
task, model, method, seed, nets; ``step_lr`` per step; metrics per epoch). It is read through
:class:`metalr.contracts.protocols.StoreReader`, which the tracker plugin provides
(:mod:`metalr.running.stores`), so nothing here knows MLflow; whatever the store cannot give is one
:class:`ReportError` line.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

from metalr.contracts.protocols import StoredRun, StoreReader
from metalr.reporting.suites import CURVES, SeedRun, Suite
from metalr.running.rundir import StoreError
from metalr.running.stores import DEFAULT_TRACKER, open_store

Progress = Callable[[str], None]


class ReportError(Exception):
    """A report that cannot be made (no store, an unknown name, nothing tracked): one line."""


def open_reader(location: str | None = None, tracker: str = DEFAULT_TRACKER) -> StoreReader:
    """The store opened read-only: one that is missing, not the tracker's, or of an older
    schema is a one-line :class:`ReportError` naming it, never created or migrated."""
    try:
        return open_store(location, tracker)
    except StoreError as exc:
        raise ReportError(str(exc)) from None


def existing_store(uri: str, tracker: str = DEFAULT_TRACKER) -> None:
    """Check, reading only, that ``uri`` is an existing store of the tracker (`metalr runs`
    does before it builds the tracker, which would create a missing one)."""
    open_reader(uri, tracker).close()


def _is_suite(run: StoredRun) -> bool:
    return "task.name" in run.params and "name" in run.params


def _latest_per_name(runs: Iterable[StoredRun]) -> list[StoredRun]:
    """The latest suite run of each run name: a recipe run twice shows once, the points of a
    sweep (named apart) all show."""
    latest: dict[str, StoredRun] = {}
    for run in sorted(runs, key=lambda r: r.start_time):
        latest[run.name] = run
    return sorted(latest.values(), key=lambda r: r.start_time)


def select_suites(reader: StoreReader, targets: Sequence[str],
                  progress: Progress | None = None) -> list[StoredRun]:
    """The suite (parent) runs that ``targets`` name, every argument checked before any data is
    read: an experiment name stands for the latest run of each name in it; a run id for that
    suite (a sweep's run: its points; a method's run: its suite); none: every experiment."""
    say = progress or (lambda _: None)
    experiments = set(reader.experiments())
    chosen: dict[str, StoredRun] = {}
    if not targets:
        suites = [r for r in reader.runs() if _is_suite(r)]
        if not suites:
            raise ReportError(f"no metalr runs in the MLflow store {reader.uri}")
        for run in _latest_per_name(suites):
            chosen[run.run_id] = run
        return list(chosen.values())
    unknown = []
    for target in targets:
        if target in experiments:
            suites = [r for r in reader.runs(target) if _is_suite(r)]
            if not suites:
                raise ReportError(f"the experiment {target!r} holds no metalr runs")
            for run in _latest_per_name(suites):
                chosen[run.run_id] = run
            continue
        run = reader.run(target)
        if run is None:
            unknown.append(target)
            continue
        if _is_suite(run):
            chosen[run.run_id] = run
            continue
        points = [r for r in reader.children(target) if _is_suite(r)]
        if points:  # a sweep's run
            say(f"{target}: a sweep of {len(points)} points")
            for r in points:
                chosen[r.run_id] = r
        elif run.parent is not None and (suite := reader.run(run.parent)) is not None and \
                _is_suite(suite):
            say(f"{target}: a run of the suite {run.parent} ({suite.name}), reported whole")
            chosen[suite.run_id] = suite
        else:
            raise ReportError(f"the run {target} is not a metalr suite, sweep or method run")
    if unknown:
        names = ", ".join(sorted(experiments)) or "none"
        raise ReportError(f"{', '.join(map(repr, unknown))}: neither an experiment nor a run id "
                          f"in {reader.uri} (experiments: {names})")
    return list(chosen.values())


def _task_metric(task: str, metric_keys: set[str]) -> tuple[str, bool]:
    """The task's headline metric and its direction: from the task component when installed
    (as the runner does), else from the ``test_*`` keys the runs logged."""
    try:
        from metalr.contracts.registry import get_registry

        factory = get_registry().get("task", task).factory
        return str(factory.metric), bool(factory.higher_is_better)
    except Exception:  # noqa: BLE001  (a store from a machine with other plugins)
        found = sorted(k[5:] for k in metric_keys if k.startswith("test_") and k != "test_loss")
        metric = found[0] if found else "loss"
        return metric, not any(w in metric for w in ("loss", "perplexity", "error"))


def read_suite(reader: StoreReader, run: StoredRun, warn: Progress | None = None) -> Suite:
    """A suite and its method runs (tuning runs left out: the tables report the final runs).
    A run whose params are not metalr's (a seed that is no integer: written by hand, or by
    another tool) is left out with a ``warn`` line, not a traceback."""
    params = run.params
    children = [r for r in reader.children(run.run_id)
                if "method" in r.params and r.params.get("tuning") != "True"]
    keys = set().union(*(r.metrics for r in children)) if children else set()
    metric, higher = _task_metric(params["task.name"], keys)
    suite = Suite(run.run_id, run.name, run.experiment, run.status, run.start_time,
                  params["task.name"], params.get("model.name", "?"), metric, higher,
                  provenance={k.removeprefix("metalr."): v for k, v in run.tags.items()
                              if k.startswith("metalr.")})
    wanted = ({k.format(metric=metric) for k, _, _ in CURVES}
              | {f"test_{metric}", "wall_time", "probe_seconds"})
    for child in sorted(children, key=lambda r: r.start_time):
        p = child.params
        try:
            seed = int(p.get("seed", 0))
        except ValueError:
            if warn is not None:
                warn(f"{run.name} ({run.run_id[:8]}): run {child.run_id} "
                     f"left out: its seed param {p['seed'][:40]!r} is not an integer")
            continue
        seed_run = SeedRun(p["method"], seed, child.status, child.run_id, dict(p),
                           meta_learned="virtual_meta_loss" in child.metrics)
        if "step_lr" in child.metrics:
            seed_run.lrs = reader.history(child.run_id, "step_lr")
        for key in wanted & child.metrics:
            seed_run.epochs[key] = reader.history(child.run_id, key)
        suite.runs.append(seed_run)
    order = suite.methods()  # the recipe's order: the runner starts the methods in it
    suite.runs.sort(key=lambda r: (order.index(r.method), r.seed))
    return suite


def load_suites(targets: Sequence[str], tracking_uri: str | None = None,
                progress: Progress | None = None,
                warn: Progress | None = None) -> tuple[list[Suite], str]:
    """Every suite ``targets`` names (see :func:`select_suites`), read from the store, and the
    store's URI. A store that fails while read (a damaged database) is a one-line
    :class:`ReportError`; ``warn`` gets a line for each run left out (default: a Python
    warning)."""
    say = progress or (lambda _: None)
    warn = warn or (lambda line: warnings.warn(line, stacklevel=3))
    reader = open_reader(tracking_uri)
    try:
        runs = select_suites(reader, targets, say)
        suites = []
        for i, run in enumerate(runs, 1):
            suite = read_suite(reader, run, warn)
            say(f"[{i}/{len(runs)}] {suite.name} ({suite.run_id[:8]}): task {suite.task}, "
                f"{len(suite.methods())} methods, {len(suite.runs)} runs")
            suites.append(suite)
    except StoreError as exc:
        raise ReportError(str(exc)) from exc
    finally:
        reader.close()
    return suites, reader.uri
