"""Searches: Optuna trials over a recipe's keys (``search:``), run as sweep points, ask and tell.

A sweep knows its points in advance; a search asks Optuna for the next values once the earlier
trials are told, so its sampler (TPE) learns where to look. A trial is the recipe with the
trial's values set as overrides, run through :func:`metalr.running.api.run` with every seed of
``search.seeds``; its objective is the mean final metric (``search.split``) of ``search.method``
over them, maximised or minimised as the task's ``higher_is_better`` says. Trials run in
batches of ``parallel`` through the sweep's executors (``local``: a process pool; with one
worker, in this process), each batch asked before it starts and told as each trial ends.

Optuna's own storage is ``optuna.db`` (SQLite) in ``<output_dir>/<name>-search/``, the study
named after the recipe: running the search again keeps its finished trials and adds trials up
to ``search.trials``. Workers report each evaluation to the trial through that file, so the
median pruner works across processes too; a pruned trial's suite stops at its next step (the
runs KILLED in the tracker, PRUNED in Optuna). In MLflow one parent run ``<name>-search`` holds
each trial's suite run, tagged ``metalr.search.<key>`` and ``metalr.search.trial``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from metalr.contracts.problems import Problem
from metalr.contracts.protocols import ItemFailed
from metalr.contracts.registry import Registry, get_registry
from metalr.recipes.loader import RecipeError, load_recipe
from metalr.recipes.schema import (
    Distribution,
    PrunerConfig,
    Recipe,
    SamplerConfig,
    SearchConfig,
)
from metalr.running import rundir
from metalr.running.results import _csv, _markdown
from metalr.running.sweep import executor_failure, run_records
from metalr.running.tracking import HOST, HOST_TAG, OUTPUT_TAG, start_run

SEARCH_RECORD = "search.json"
TRIAL_RECORD = "trial.json"
STORAGE = "optuna.db"
TAG = "metalr.search."
STATUS = "metalr.status"
"""The trial's user attribute: FINISHED, FAILED (counted as a trial), PRUNED, KILLED (not)."""
EXTRA = "the search needs Optuna, the `search` extra: pip install 'metalr[search]'"


class MissingExtraError(rundir.RunError):
    """Optuna, of the ``search`` extra, is not installed."""


def optuna_module() -> ModuleType:
    """Optuna, or one line that says how to get it (not an ImportError's traceback)."""
    try:
        import optuna
    except ModuleNotFoundError as exc:
        if exc.name != "optuna":
            raise  # Optuna is there but broken: its own error
        raise MissingExtraError(EXTRA) from None
    # its INFO lines (a study created, each trial told) repeat ours; with -v they show
    verbose = logging.getLogger("metalr").isEnabledFor(logging.INFO)
    optuna.logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
    return optuna


def value_text(value: Any) -> str:
    """A value as an override that reads back with its type: JSON, a float's exponent with a
    dot (YAML 1.1 reads ``1e-05`` as a string, ``1.0e-05`` as a float)."""
    text = json.dumps(value)
    if isinstance(value, float) and "e" in text and "." not in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def label(values: Sequence[tuple[str, Any]]) -> str:
    return ",".join(f"{k}={value_text(v)}" for k, v in values)


@dataclass(frozen=True)
class TrialCall:
    """What a worker needs to run one trial: plain values, so it pickles across processes."""

    recipe_path: str
    overrides: tuple[str, ...]  # the command line's and the seeds'
    number: int
    trial_id: int
    values: tuple[tuple[str, Any], ...]
    folder: str
    parent_run: str | None
    study: str
    storage: str  # Optuna's storage URL: evaluations reported there, for the pruner
    pruner: dict[str, Any]
    method: str
    key: str  # the objective's metric key, e.g. test_accuracy
    progress: bool = False

    def run_overrides(self) -> list[str]:
        items = [f"{k}={value_text(v)}" for k, v in self.values]
        return [*self.overrides, *items, "sweep=null", "search=null",
                f"output_dir={json.dumps(self.folder)}"]

    def tags(self) -> dict[str, str]:
        return {**{f"{TAG}{k}": json.dumps(v) for k, v in self.values},
                f"{TAG}trial": str(self.number)}


@dataclass
class Search:
    """A validated search: the base recipe, the objective, where its trials are kept."""

    path: str
    overrides: tuple[str, ...]
    recipe: Recipe
    folder: Path
    method: str
    metric: str
    higher_is_better: bool

    @property
    def config(self) -> SearchConfig:
        assert self.recipe.search is not None
        return self.recipe.search

    @property
    def key(self) -> str:
        return f"{self.config.split}_{self.metric}"

    @property
    def direction(self) -> str:
        return "maximize" if self.higher_is_better else "minimize"

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{self.folder / STORAGE}"

    def seed_overrides(self) -> tuple[str, ...]:
        seeds = self.config.seeds
        return (f"train.seed={seeds[0]}", f"train.seeds={json.dumps(seeds)}") if seeds else ()

    def call(self, number: int, trial_id: int, values: dict[str, Any], parent: str | None,
             progress: bool = False) -> TrialCall:
        return TrialCall(self.path, (*self.overrides, *self.seed_overrides()), number, trial_id,
                         tuple(values.items()), str(self.folder / f"t{number:03d}"), parent,
                         self.recipe.name, self.storage_url,
                         self.config.pruner.model_dump(mode="json"), self.method, self.key,
                         progress)

    def record(self) -> dict[str, Any]:
        """What makes two invocations the same study (trials, sampler, executor may change)."""
        config = self.config
        rest = {k: v for k, v in self.recipe.resolved().items() if k not in ("search", "sweep")}
        digest = hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:16]
        return {"study": self.recipe.name, "direction": self.direction, "objective": self.key,
                "method": self.method, "seeds": config.seeds,
                "space": {k: d.model_dump(mode="json") for k, d in config.space.items()},
                "recipe": digest}  # the rest of the recipe, overrides included


def plan(path: str | Path, overrides: Sequence[str] = (),
         registry: Registry | None = None) -> Search:
    """Load the recipe and check it with the space's every bound and choice; all problems in
    one RecipeError. A trial's own recipe is checked again when it starts."""
    source, overrides = str(path), tuple(overrides)
    registry = registry or get_registry()
    recipe = load_recipe(path, overrides, registry)  # in full below, at the space's bounds
    if recipe.search is None:
        raise RecipeError(source, [Problem("search", "no search: block; add one, e.g. search: "
                                           "{space: {methods.NAME.lr_policy.options.lr: "
                                           "{low: 1.0e-4, high: 1, log: true}}, trials: 20}")])
    config = recipe.search
    metric, higher = _task_info(recipe, registry)
    folder = (Path(recipe.output_dir) / f"{recipe.name}-search").resolve()
    search = Search(source, overrides, recipe, folder, config.method or next(iter(recipe.methods)),
                    metric, higher)
    problems = []
    for values in bound_points(config.space):
        try:
            load_recipe(path, search.call(0, 0, values, None).run_overrides(), registry,
                        deep=True)
        except RecipeError as exc:
            where = label(list(values.items()))
            problems += [Problem(p.path, f"{p.message} [search bounds: {where}]", p.line)
                         for p in exc.problems]
    if problems:
        raise RecipeError(source, problems)
    return search


def bound_points(space: dict[str, Distribution]) -> list[dict[str, Any]]:
    """A few points that hold every range's two ends and every choice, for the checks."""
    ends = {k: d.values() for k, d in space.items()}
    count = max(2, *(len(v) for v in ends.values()))
    return [{k: v[i % len(v)] for k, v in ends.items()} for i in range(count)]


def _task_info(recipe: Recipe, registry: Registry) -> tuple[str, bool]:
    """The task's metric and direction, known before any trial (the study's direction)."""
    task = registry.get("task", recipe.task.name).build(**recipe.task.options)
    return str(getattr(task, "metric", "metric")), bool(getattr(task, "higher_is_better", True))


def distributions(optuna: ModuleType, space: dict[str, Distribution]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, d in space.items():
        if d.choices is not None:
            out[key] = optuna.distributions.CategoricalDistribution(d.choices)
        elif d.integer:
            out[key] = optuna.distributions.IntDistribution(int(d.low), int(d.high), log=d.log)
        else:
            out[key] = optuna.distributions.FloatDistribution(float(d.low), float(d.high),
                                                              log=d.log)
    return out


def make_sampler(optuna: ModuleType, config: SamplerConfig, told: int) -> Any:
    """Seeded by ``seed`` plus the trials the study holds: the same values again for the same
    history, and a resumed search does not ask its first trials' values again."""
    seed = (config.seed + told) % 2**32
    if config.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.startup_trials)


def make_pruner(optuna: ModuleType, config: PrunerConfig | dict[str, Any]) -> Any:
    config = PrunerConfig.model_validate(config)
    if config.name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=config.startup_trials,
                                       n_warmup_steps=config.warmup_steps)


def open_storage(optuna: ModuleType, url: str) -> Any:
    # workers report into the same SQLite file: wait for its lock rather than fail
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


class _Reporter:
    """``on_epoch`` of a trial: each evaluation of the objective's method goes to the trial
    (step = its index over the trial's runs, seed after seed); True when it should be pruned."""

    def __init__(self, call: TrialCall):
        optuna = optuna_module()
        study = optuna.load_study(study_name=call.study, storage=open_storage(optuna, call.storage),
                                  sampler=optuna.samplers.RandomSampler(),
                                  pruner=make_pruner(optuna, call.pruner))
        self.trial = optuna.trial.Trial(study, call.trial_id)
        self.method, self.key, self.step = call.method, call.key, 0
        self.last: float | None = None

    def __call__(self, report: Any) -> bool:
        if report.method != self.method or self.key not in report.metrics:
            return False
        self.last = float(report.metrics[self.key])
        self.trial.report(self.last, self.step)
        self.step += 1
        return self.trial.should_prune()


def run_trial(call: TrialCall) -> dict[str, Any]:
    """Run one trial and write its record; the executors' ``call`` (module-level, so that a
    spawned worker can unpickle it)."""
    from metalr.running.api import RunStopped, run

    folder = Path(call.folder)
    folder.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"number": call.number, "values": dict(call.values),
                              "label": label(call.values), "status": "FAILED", "error": None,
                              "objective": None, "finals": {}, "run_id": None, "run_dir": None}
    begin = time.perf_counter()
    try:
        reporter = _Reporter(call)
        summary = run(call.recipe_path, call.run_overrides(), progress=call.progress,
                      on_epoch=reporter, parent_run=call.parent_run, tags=call.tags(),
                      run_name=f"t{call.number:03d} {record['label']}"[:250])
        runs = [r for r in summary.results if r.method == call.method]
        finals = {str(r.seed): r.final(call.key) if r.status == "FINISHED" else None
                  for r in runs}
        ok = bool(runs) and all(v is not None for v in finals.values())
        record.update(status="FINISHED" if ok else "FAILED", finals=finals,
                      run_id=summary.run_id, run_dir=str(summary.output_dir),
                      objective=statistics.fmean(finals.values()) if ok else None,
                      error=None if ok else "; ".join(
                          r.error or r.status for r in runs if r.status != "FINISHED"))
    except RunStopped as exc:
        suite = rundir.read_json(Path(exc.output_dir) / rundir.SUITE) if exc.output_dir else None
        at = exc.report
        record.update(status="PRUNED", run_dir=str(exc.output_dir),
                      run_id=(suite or {}).get("parent_run_id"),
                      error=f"pruned at step {at.step} ({at.method}/seed{at.seed}, epoch "
                            f"{at.epoch}: {call.key} {at.metrics.get(call.key, float('nan')):.4g})")
    except KeyboardInterrupt:
        record.update(status="KILLED", error="interrupted; run the search again to go on")
    except Exception as exc:  # noqa: BLE001  (one trial's failure is reported, the search goes on)
        record["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    record["wall_s"] = round(time.perf_counter() - begin, 3)
    rundir.write_json(folder / TRIAL_RECORD, record)
    return record


def lost_trial(failed: ItemFailed) -> dict[str, Any]:
    """The record of a trial whose job gave back nothing (killed, out of memory): FAILED."""
    call: TrialCall = failed.item
    record = rundir.read_json(Path(call.folder) / TRIAL_RECORD)
    if record is not None and record.get("status") in ("FINISHED", "PRUNED"):
        return record
    return {"number": call.number, "values": dict(call.values), "label": label(call.values),
            "status": "FAILED", "error": failed.error, "objective": None, "finals": {},
            "run_id": None, "run_dir": None}


def counted(optuna: ModuleType, study: Any) -> int:
    """Trials that count towards ``trials``: completed, pruned, or failed by their own doing
    (diverged); not those interrupted (a new trial takes their place)."""
    state = optuna.trial.TrialState
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (state.COMPLETE, state.PRUNED)
               or (t.state == state.FAIL and t.user_attrs.get(STATUS) == "FAILED"))


def tell(optuna: ModuleType, study: Any, trial: Any, record: dict[str, Any]) -> None:
    """The trial's outcome to Optuna, with metalr's record as user attributes."""
    state = optuna.trial.TrialState
    for key in ("status", "error", "finals", "run_id", "run_dir"):
        if record.get(key) is not None:
            trial.set_user_attr(f"metalr.{key}", record[key])
    if record["status"] == "FINISHED":
        study.tell(trial, record["objective"])
    elif record["status"] == "PRUNED":
        study.tell(trial, state=state.PRUNED)
    else:
        study.tell(trial, state=state.FAIL)


def table_rows(search: Search, study: Any) -> list[dict[str, str]]:
    """One row per trial: its values, objective, per-seed finals, Optuna's state."""
    keys = list(search.config.space)
    trials = study.get_trials(deepcopy=False)
    seeds = sorted({s for t in trials for s in (t.user_attrs.get("metalr.finals") or {})}, key=int)
    objective = f"{search.method}: final {search.config.split} {search.metric}"
    rows = []
    for t in trials:
        finals = t.user_attrs.get("metalr.finals") or {}
        state = t.state.name
        if state == "FAIL":
            state += f" ({t.user_attrs.get(STATUS, 'KILLED')})"
        row = {"trial": str(t.number)}
        row.update({k: _short(t.params[k]) if k in t.params else "-" for k in keys})
        row[objective] = "-" if t.value is None or state != "COMPLETE" else f"{t.value:.4f}"
        row.update({f"seed {s}": "-" if finals.get(s) is None else f"{finals[s]:.4f}"
                    for s in seeds})
        row["state"] = state
        row["note"] = (t.user_attrs.get("metalr.error") or "").replace("|", "/")[:120]
        rows.append(row)
    return rows


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_line(search: Search, study: Any) -> str:
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        return "best: no trial completed yet"
    best = study.best_trial
    values = ", ".join(f"{k}={_short(v)}" for k, v in best.params.items())
    return (f"best: trial {best.number} ({values}): {search.method} final "
            f"{search.config.split} {search.metric} {best.value:.4f} "
            f"(mean of {len(best.user_attrs.get('metalr.finals') or {}) or 1} seed(s))")


def write_outputs(search: Search, study: Any) -> list[Path]:
    """``results.md``/``results.csv`` from the study (rewritten after every trial)."""
    rows = table_rows(search, study)
    md, csv = search.folder / "results.md", search.folder / "results.csv"
    md.write_text(f"# search {search.recipe.name}\n\n{_markdown(rows)}\n\n"
                  f"{best_line(search, study)}\n")
    csv.write_text(_csv(rows))
    return [md, csv]


@dataclass
class SearchOutcome:
    """How a ``metalr search`` invocation ended."""

    folder: Path
    table: str
    best: str
    records: list[dict[str, Any]] = field(default_factory=list)
    before: int = 0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r["status"] in ("FINISHED", "PRUNED")
                                            for r in self.records)


def execute(search: Search, progress: bool = True, report: bool = True,
            registry: Registry | None = None) -> SearchOutcome:
    """Ask, run and tell trials until the study holds ``trials`` of them (those of earlier
    invocations count), then write the tables. One invocation at a time per search folder.
    ``progress``: the progress bars of trials run in this process; ``report``: a line per
    trial as it ends."""
    optuna = optuna_module()
    registry = registry or get_registry()
    recipe, config = search.recipe, search.config
    ref = config.executor
    try:  # built before anything is written: a missing extra costs nothing
        executor = registry.get("executor", ref.name).build(**ref.options)
    except Exception as exc:
        raise rundir.RunError(f"search.executor: {ref.name!r}: "
                              f"{' '.join(str(exc).split())}") from exc
    workers = getattr(executor, "workers", None) if ref.name == "local" else None
    in_process = workers == 1  # no pool to start for one trial at a time
    parallel = config.parallel or workers or 1
    search.folder.mkdir(parents=True, exist_ok=True)
    tracker = None
    if recipe.tracking is not None:
        tracker = registry.get("tracker", recipe.tracking.name).build(**recipe.tracking.options)
    try:
        with rundir.locked(search.folder):  # RUNNING parent alive for `runs --clean`
            return _execute(optuna, search, executor, in_process, parallel, tracker,
                            progress and in_process, report)
    finally:
        if tracker is not None:
            tracker.close()


def _execute(optuna: ModuleType, search: Search, executor: Any, in_process: bool,
             parallel: int, tracker: Any, progress: bool, report: bool) -> SearchOutcome:
    recipe, config, folder = search.recipe, search.config, search.folder
    state = rundir.read_json(folder / SEARCH_RECORD) or {}
    plan_record = search.record()
    changed = [k for k, v in plan_record.items() if k in state and state[k] != v]
    if changed:
        raise rundir.RunError(f"{folder / SEARCH_RECORD}: this folder holds a search with other "
                              f"{', '.join(changed)}; restore the recipe (and the overrides) "
                              f"or move {folder} away")
    study = optuna.create_study(storage=open_storage(optuna, search.storage_url),
                                study_name=recipe.name, direction=search.direction,
                                load_if_exists=True)
    if study.direction.name.lower() != search.direction:
        raise rundir.RunError(f"{folder / STORAGE}: its study {recipe.name!r} is set to "
                              f"{study.direction.name.lower()}, this search would "
                              f"{search.direction}; move {folder} away")
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in stale:  # asked by an invocation that was killed: told what its record says
        record = rundir.read_json(folder / f"t{t.number:03d}" / TRIAL_RECORD)
        if not record or record.get("status") not in ("FINISHED", "PRUNED", "FAILED"):
            record = {"status": "KILLED", "error": "interrupted"}
        tell(optuna, study, optuna.trial.Trial(study, t._trial_id), record)
    study.sampler = make_sampler(optuna, config.sampler, len(study.trials))
    study.pruner = make_pruner(optuna, config.pruner)
    parent = state.get("parent_run_id")
    if tracker is not None:
        if parent is None:
            params = {f"search.{k}": json.dumps(v) if isinstance(v, (dict, list)) else v
                      for k, v in config.model_dump(mode="json").items()}
            parent = start_run(tracker, recipe.name, f"{recipe.name}-search", params, None,
                               {OUTPUT_TAG: str(folder), HOST_TAG: HOST})
        elif callable(getattr(tracker, "resume_run", None)):
            tracker.resume_run(parent)
    rundir.write_json(folder / SEARCH_RECORD, {**plan_record, "parent_run_id": parent})
    before = counted(optuna, study)
    if report and before:
        print(f"{before} trials done before: kept", flush=True)
    outcome = SearchOutcome(folder, "", "", before=before)
    space = distributions(optuna, config.space)
    pending: dict[int, Any] = {}  # asked, not yet told
    told: dict[int, dict[str, Any]] = {}
    status = "FAILED"
    try:
        while counted(optuna, study) < config.trials:
            batch = min(parallel, config.trials - counted(optuna, study))
            asked = [study.ask(space) for _ in range(batch)]
            pending.update({t.number: t for t in asked})
            # the worker reports to the trial by its storage id (Optuna's own, not public)
            calls = [search.call(t.number, t._trial_id, t.params, parent, progress)
                     for t in asked]
            with executor_failure(folder, "trials"), contextlib.closing(run_records(
                    run_trial, calls, None if in_process else executor, folder,
                    lost_trial)) as found:
                for record in found:
                    told[record["number"]] = record
                    tell(optuna, study, pending[record["number"]], record)
                    del pending[record["number"]]
                    outcome.records.append(record)
                    if tracker is not None and parent is not None and \
                            record["objective"] is not None:  # a chart of trials in MLflow
                        tracker.log_metrics(parent, {f"trial_{search.key}": record["objective"]},
                                            record["number"])
                    write_outputs(search, study)
                    if report:
                        print(_line(search, record), flush=True)
                    if record["status"] == "KILLED":
                        raise KeyboardInterrupt
        status = "FINISHED" if outcome.ok else "FAILED"
    except KeyboardInterrupt:
        status, outcome.interrupted = "KILLED", True
    finally:
        for number, trial in pending.items():  # interrupted (not counted), or in its tell
            with contextlib.suppress(Exception):  # one told already is left as told
                tell(optuna, study, trial, told.get(number, {"status": "KILLED",
                                                             "error": "interrupted"}))
        paths = write_outputs(search, study)
        outcome.table = _markdown(table_rows(search, study))
        outcome.best = best_line(search, study)
        if tracker is not None and parent is not None:
            for path in paths:
                tracker.log_artifact(parent, str(path))
            done = [t for t in study.trials if t.state.name == "COMPLETE"]
            if done:
                tracker.log_metrics(parent, {f"best_{search.key}": study.best_value},
                                    len(study.trials))
            tracker.end_run(parent, status)
    return outcome


def _line(search: Search, record: dict[str, Any]) -> str:
    what = (f"{search.key} {record['objective']:.4f}" if record["objective"] is not None
            else record["status"])
    note = f" ({record['error']})" if record.get("error") else ""
    values = ", ".join(f"{k}={_short(v)}" for k, v in record["values"].items())
    return f"trial {record['number']} ({values}): {what}{note}"
