"""Sweeps: a recipe run at every point of a grid over its keys, each point a whole suite.

A point is the recipe with the point's values set as overrides (``train.epochs=2``, the seed as
``train.seed``), so a point is exactly what ``metalr run RECIPE key=value ...`` would run: the
same validation, runner, checkpoints and tracking. Every point is validated (deeply) before any
starts. The sweep keeps its points in ``<output_dir>/<name>-sweep/`` (no timestamp, so that
running the sweep again finds them): ``pNNN/`` holds the point's run folder and its record
``point.json``; a FINISHED point is skipped, an unfinished one continues from its checkpoints
(:meth:`metalr.running.runner.Runner.resumable`). In MLflow one parent run holds one nested run per
point (the point's suite run), tagged with its values (``metalr.sweep.<key>``).

Where points execute is an executor plugin (``sweep.executor``; ``local``: a process pool);
``--index I`` runs one point in this process, for batch systems that start one task per index.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metalr.contracts.problems import Problem
from metalr.contracts.protocols import ItemFailed
from metalr.contracts.registry import Registry, get_registry
from metalr.recipes.loader import RecipeError, load_recipe
from metalr.recipes.schema import Recipe
from metalr.running import rundir
from metalr.running.results import SweepPointRecord, _csv, _markdown, sweep_rows

POINT_RECORD = "point.json"
SWEEP_RECORD = "sweep.json"
TAG = "metalr.sweep."


@dataclass(frozen=True)
class Point:
    """One grid point: its index and the value of each swept key (``seed`` included)."""

    index: int
    values: tuple[tuple[str, Any], ...]
    seed: int | None = None

    @property
    def label(self) -> str:
        shown = [f"{k}={json.dumps(v)}" for k, v in self.values]
        return ",".join(shown + ([f"seed={self.seed}"] if self.seed is not None else []))

    @property
    def folder(self) -> str:
        return f"p{self.index:03d}"

    def overrides(self, out: Path) -> list[str]:
        """The point as ``key=value`` overrides (JSON is YAML, so values keep their types)."""
        items = [f"{k}={json.dumps(v)}" for k, v in self.values]
        if self.seed is not None:
            items += [f"train.seed={self.seed}", f"train.seeds=[{self.seed}]"]
        return [*items, "sweep=null", f"output_dir={json.dumps(str(out / self.folder))}"]

    def tags(self) -> dict[str, str]:
        tags = {f"{TAG}{k}": json.dumps(v) for k, v in self.values}
        if self.seed is not None:
            tags[f"{TAG}seed"] = str(self.seed)
        return {**tags, f"{TAG}index": str(self.index)}


@dataclass(frozen=True)
class PointCall:
    """What a worker needs to run one point: plain values, so it pickles across processes."""

    recipe_path: str
    overrides: tuple[str, ...]
    point: Point
    folder: str
    parent_run: str | None
    progress: bool = False
    only: tuple[str, ...] = ()  # methods kept / left out (`metalr sweep --only/--skip`)
    skip: tuple[str, ...] = ()


@dataclass
class Sweep:
    """A validated sweep: the base recipe, its points and where they are kept."""

    path: str
    overrides: tuple[str, ...]
    recipe: Recipe
    points: list[Point]
    folder: Path
    keys: list[str] = field(default_factory=list)
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()

    def call(self, point: Point, parent_run: str | None, progress: bool = False) -> PointCall:
        return PointCall(self.path, (*self.overrides, *point.overrides(self.folder)), point,
                         str(self.folder / point.folder), parent_run, progress, self.only,
                         self.skip)


def grid_points(recipe: Recipe) -> list[Point]:
    """Every combination of the grid's values (first key slowest), then each seed."""
    sweep = recipe.sweep
    assert sweep is not None
    keys = list(sweep.grid)
    seeds: Sequence[int | None] = sweep.seeds or [None]
    combos = itertools.product(*(sweep.grid[k] for k in keys), seeds)
    return [Point(i, tuple(zip(keys, c[:-1])), c[-1]) for i, c in enumerate(combos)]


def plan(path: str | Path, overrides: Sequence[str] = (), registry: Registry | None = None,
         only: Sequence[str] = (), skip: Sequence[str] = ()) -> Sweep:
    """Load the recipe and validate every point of its sweep; all problems in one RecipeError.
    ``only``/``skip`` select methods in every point
    (:func:`metalr.recipes.loader.select_methods`)."""
    source, overrides, only, skip = str(path), tuple(overrides), tuple(only), tuple(skip)
    recipe = load_recipe(path, overrides, registry, only=only, skip=skip)
    if recipe.sweep is None:
        raise RecipeError(source, [Problem("sweep", "no sweep: block; add one, e.g. "
                                           "sweep: {grid: {train.epochs: [1, 2]}, seeds: [0, 1]}")])
    folder = (Path(recipe.output_dir) / f"{recipe.name}-sweep").resolve()
    sweep = Sweep(source, overrides, recipe, grid_points(recipe), folder, list(recipe.sweep.grid),
                  only, skip)
    problems = []
    for point in sweep.points:
        try:
            load_recipe(path, sweep.call(point, None).overrides, registry, deep=True, only=only,
                        skip=skip)
        except RecipeError as exc:
            problems += [Problem(p.path, f"{p.message} [sweep point {point.index}: {point.label}]",
                                 p.line) for p in exc.problems]
    if problems:
        raise RecipeError(source, problems)
    return sweep


def run_point(call: PointCall) -> dict[str, Any]:
    """Run (or continue) one point and write its record; the executors' ``call``.

    Module-level and importing the runner lazily, so that a spawned worker can unpickle it.
    """
    from metalr.running.runner import Runner

    folder = Path(call.folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = _failed_record(call, None)
    started = sorted(p.parent for p in folder.glob("*/recipe.yaml"))
    begin, cpu = time.perf_counter(), time.process_time()
    try:
        if started:  # an earlier attempt: continue it, finished runs are read back
            runner = Runner.resumable(started[-1], progress=call.progress,
                                      report=call.progress)
        else:
            runner = Runner(load_recipe(call.recipe_path, call.overrides, only=call.only,
                                        skip=call.skip), progress=call.progress,
                            report=call.progress)  # points report through sweep's own lines
        runner.parent_run, runner.extra_tags = call.parent_run, call.point.tags()
        runner.run_name = f"p{call.point.index:03d} {call.point.label}"[:250]
        try:
            summary = runner.run()
        finally:
            record["run_dir"] = str(runner.output_dir) if runner.output_dir else None
        finals: dict[str, list[float]] = {}
        for r in summary.results:
            value = r.final(f"test_{summary.metric}") if r.status == "FINISHED" else None
            finals.setdefault(r.method, [])
            if value is not None:
                finals[r.method].append(value)
        record.update(status="FINISHED" if summary.ok else "FAILED", metric=summary.metric,
                      higher_is_better=summary.higher_is_better, finals=finals,
                      run_id=summary.run_id,
                      error=None if summary.ok else "; ".join(
                          r.error or r.status for r in summary.results if r.status != "FINISHED"))
    except KeyboardInterrupt:
        record.update(status="KILLED", error="interrupted; run the sweep again to continue")
    except Exception as exc:  # noqa: BLE001  (one point's failure is reported, the sweep goes on)
        record["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    # this attempt's wall and CPU time (all threads of this process), for bench/sweep.py
    record["wall_s"] = round(time.perf_counter() - begin, 3)
    record["cpu_s"] = round(time.process_time() - cpu, 3)
    rundir.write_json(folder / POINT_RECORD, record)
    return record


def _failed_record(call: PointCall, error: str | None) -> dict[str, Any]:
    return {"index": call.point.index, "label": call.point.label,
            "values": dict(call.point.values), "seed": call.point.seed,
            "status": "FAILED", "error": error, "run_dir": None}


def record_lost_point(failed: ItemFailed) -> dict[str, Any]:
    """The record of a point whose job gave back nothing (killed, or failed outside
    :func:`run_point`): FAILED with the executor's one-line error, written as the point would
    have, so the table shows it and the next invocation runs it again. A FINISHED record the
    point wrote before its job failed is kept."""
    call: PointCall = failed.item
    path = Path(call.folder) / POINT_RECORD
    record = rundir.read_json(path)
    if record is not None and record.get("status") == "FINISHED":
        return record
    run_dir = (record or {}).get("run_dir")
    record = {**_failed_record(call, failed.error), "run_dir": run_dir}
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_json(path, record)
    return record


def run_records(fn: Callable[[Any], dict[str, Any]], calls: Sequence[Any], executor: Any,
                folder: Path, lost: Callable[[ItemFailed], dict[str, Any]]
                ) -> Iterator[dict[str, Any]]:
    """Each call's record as it ends, run in this process (no executor) or by the executor; a job
    the executor lost becomes ``lost(failed)``. Closing it stops the executor and waits for the
    jobs still running (a sweep's points, a search's trials): use it under
    ``contextlib.closing``."""
    results = (fn(c) for c in calls) if executor is None else executor.run(fn, calls, folder)
    try:
        for result in results:
            yield lost(result) if isinstance(result, ItemFailed) else result
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


@contextlib.contextmanager
def executor_failure(folder: Path, kept: str) -> Iterator[None]:
    """An executor that fails (a worker killed, out of memory) as one line naming the folder,
    not a traceback; what finished is kept and the same command goes on from it."""
    try:
        yield
    except (KeyboardInterrupt, rundir.RunError):
        raise
    except Exception as exc:
        raise rundir.RunError(f"{folder}: the executor failed ({type(exc).__name__}: {exc}); "
                              f"finished {kept} are kept: run the same command again to go on"
                              ) from exc


def read_record(sweep: Sweep, point: Point) -> dict[str, Any] | None:
    return rundir.read_json(sweep.folder / point.folder / POINT_RECORD)


def table_rows(sweep: Sweep) -> list[dict[str, str]]:
    """The sweep's table from its points' records (:func:`metalr.running.results.sweep_rows`, as
    `metalr reproduce` builds it from the store)."""
    records = [read_record(sweep, p) for p in sweep.points]
    metric = next((r["metric"] for r in records if r and "metric" in r), "metric")
    points = []
    for point, record in zip(sweep.points, records):
        finals = {m: None for m in sweep.recipe.methods}
        finals.update({m: v[0] if v else None
                       for m, v in ((record or {}).get("finals") or {}).items()})
        points.append(SweepPointRecord(tuple((k, json.dumps(v)) for k, v in point.values),
                                       point.seed, finals,
                                       bool(record) and record["status"] == "FINISHED"))
    return sweep_rows(points, metric)


def write_outputs(sweep: Sweep) -> list[Path]:
    """``results.md``/``results.csv`` and one figure per swept key, from the points' records
    (written again after every point, so a partial sweep has a partial table)."""
    rows = table_rows(sweep)
    out = sweep.folder
    md, csv = out / "results.md", out / "results.csv"
    md.write_text(f"# sweep {sweep.recipe.name}\n\n{_markdown(rows)}\n")
    csv.write_text(_csv(rows))
    return [md, csv, *(plot_key(sweep, key) for key in sweep.keys)]


def plot_key(sweep: Sweep, key: str) -> Path:
    """The final test metric against ``key``'s values, mean ± std over seeds (and over nothing
    else: each combination of the other keys is its own line, per method)."""
    from metalr.running.figures import plot_swept

    values = sweep.recipe.sweep.grid[key]
    lines: dict[str, dict[int, list[float]]] = {}
    metric = "metric"
    for point in sweep.points:
        record = read_record(sweep, point)
        if not record or "finals" not in record:
            continue
        metric = record["metric"]
        others = ",".join(f"{k}={json.dumps(v)}" for k, v in point.values if k != key)
        at = next(i for i, v in enumerate(values) if repr(v) == repr(dict(point.values)[key]))
        for method, scores in record["finals"].items():
            label = method + (f" ({others})" if others else "")
            lines.setdefault(label, {}).setdefault(at, []).extend(scores)
    return plot_swept(key, values, lines, metric, sweep.folder / f"sweep-{key}.png")


@dataclass
class SweepOutcome:
    """How a ``metalr sweep`` invocation ended: the records of the points it saw."""

    folder: Path
    records: list[dict[str, Any]]
    skipped: list[int]
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r["status"] == "FINISHED" for r in self.records)


def execute(sweep: Sweep, index: int | None = None, progress: bool = True,
            registry: Registry | None = None) -> SweepOutcome:
    """Run the sweep's unfinished points (or only point ``index``, in this process), then write
    the tables and figures. Finished points are skipped."""
    from metalr.running.tracking import HOST, HOST_TAG, OUTPUT_TAG, flatten, resume_run, start_run

    registry = registry or get_registry()
    recipe = sweep.recipe
    executor = None
    if index is None:  # built before anything is written: a missing extra costs nothing
        ref = recipe.sweep.executor
        try:
            executor = registry.get("executor", ref.name).build(**ref.options)
        except Exception as exc:  # one line that names the key, not a traceback
            raise rundir.RunError(f"sweep.executor: {ref.name!r}: "
                                  f"{' '.join(str(exc).split())}") from exc
    sweep.folder.mkdir(parents=True, exist_ok=True)
    tracker = None
    if recipe.tracking is not None:
        tracker = registry.get("tracker", recipe.tracking.name).build(**recipe.tracking.options)
    labels = [p.label for p in sweep.points]
    # a whole sweep holds the folder's lock while its parent is RUNNING, as a run does: so
    # `metalr runs --clean` sees it alive, and a second `metalr sweep` of it is refused
    held = contextlib.ExitStack()
    try:
        if index is None:
            held.enter_context(rundir.locked(sweep.folder))
        with _file_lock(sweep.folder):  # concurrent --index tasks agree on one parent run
            state = rundir.read_json(sweep.folder / SWEEP_RECORD)
            if state is not None and state.get("points") != labels:
                raise rundir.RunError(
                    f"{sweep.folder / SWEEP_RECORD}: this folder holds a sweep with other "
                    f"points; restore the recipe's sweep block or move {sweep.folder} away")
            parent = (state or {}).get("parent_run_id")
            if parent is None and tracker is not None:
                params = flatten({"sweep": recipe.sweep.model_dump(mode="json"),
                                  "points": len(sweep.points)})
                parent = start_run(tracker, recipe.name, f"{recipe.name}-sweep", params, None,
                                   {OUTPUT_TAG: str(sweep.folder), HOST_TAG: HOST})
                if index is not None:  # a batch task never leaves the parent RUNNING
                    tracker.end_run(parent, "FINISHED")
            elif parent is not None and tracker is not None and index is None:
                resume_run(tracker, parent)
            rundir.write_json(sweep.folder / SWEEP_RECORD,
                              {"parent_run_id": parent, "points": labels})
        chosen = sweep.points if index is None else [sweep.points[index]]
        skipped, todo = [], []
        for point in chosen:
            record = read_record(sweep, point)
            (skipped if record and record["status"] == "FINISHED" else todo).append(point)
        if progress:
            for p in skipped:
                print(f"point {p.index} ({p.label}): FINISHED before, skipped", flush=True)
        records = [read_record(sweep, p) for p in skipped]
        outcome = SweepOutcome(sweep.folder, records, [p.index for p in skipped])
        status = "FAILED"
        calls = [sweep.call(p, parent, progress if executor is None else False) for p in todo]
        try:
            with executor_failure(sweep.folder, "points"), contextlib.closing(run_records(
                    run_point, calls, executor, sweep.folder, record_lost_point)) as found:
                for record in found:
                    records.append(record)
                    if progress:
                        error = f" ({record['error']})" if record["error"] else ""
                        print(f"point {record['index']} ({record['label']}): "
                              f"{record['status']}{error}", flush=True)
                    if record["status"] == "KILLED":
                        raise KeyboardInterrupt
            status = "FINISHED" if outcome.ok else "FAILED"
        except KeyboardInterrupt:
            status, outcome.interrupted = "KILLED", True
        finally:
            paths = write_outputs(sweep)
            if tracker is not None and parent is not None:
                for path in paths:
                    tracker.log_artifact(parent, str(path))
                if index is None:
                    tracker.end_run(parent, status)
        return outcome
    finally:
        held.close()
        if tracker is not None:
            tracker.close()


@contextlib.contextmanager
def _file_lock(folder: Path):
    from filelock import FileLock

    with FileLock(str(folder / ".sweep.lock"), timeout=60):
        yield

