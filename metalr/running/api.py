"""Run one recipe point from Python: ``metalr.run(recipe, overrides)``, what ``metalr run``
does (the same validation, runner, folder and tracking), returning the :class:`RunSummary`.

It is the piece a search is made of: ``metalr search`` runs each trial through it, and your own
loop (an Optuna study of yours, a bandit) can too (docs/recipes.md, Search). ``on_epoch`` sees
each evaluation as it is logged and may stop the suite there, which is how a pruner acts: the
runs stop at their next step, checkpointed and KILLED, exactly as on Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from metalr.contracts.problems import Problem
from metalr.contracts.registry import Registry, get_registry
from metalr.recipes.loader import RecipeError, apply_overrides, load_recipe
from metalr.recipes.schema import Recipe
from metalr.running.results import RunSummary

__all__ = ["EpochReport", "RunStopped", "run"]


@dataclass(frozen=True)
class EpochReport:
    """One evaluation of a run, as the runner logs it: ``metrics`` holds the epoch's
    ``{train,meta,test}_{loss,<metric>}``; ``step`` counts this suite's reports (0, 1, ...),
    so that it names the same point of two suites with the same methods and seeds."""

    method: str
    seed: int
    epoch: int
    metrics: Mapping[str, float]
    step: int


class RunStopped(Exception):
    """``on_epoch`` stopped the suite: its runs were stopped (KILLED; those that had ended keep
    their status) and the tables of what ran written to ``output_dir``."""

    def __init__(self, output_dir: Path | None, report: EpochReport):
        super().__init__(f"stopped after {report.method}/seed{report.seed}, epoch "
                         f"{report.epoch}")
        self.output_dir, self.report = output_dir, report


OnEpoch = Callable[[EpochReport], "bool | None"]


def run(recipe: str | os.PathLike[str] | Recipe, overrides: Sequence[str] = (), *,
        progress: bool = False, on_epoch: OnEpoch | None = None,
        parent_run: str | None = None, tags: Mapping[str, str] | None = None,
        run_name: str | None = None, registry: Registry | None = None) -> RunSummary:
    """Run every method and seed of a recipe (a file, checked in full as by ``metalr
    validate``, or a :class:`Recipe`) with ``key=value`` overrides; return the summary.

    ``on_epoch(report)`` is called at each evaluation of a (non-tuning) run; returning True
    stops the suite (:class:`RunStopped` is raised). It reads the metrics as the tracker is
    sent them, so it is not called under ``tracking: none``. ``parent_run``, ``tags`` and
    ``run_name`` nest the suite's tracker runs in another run and label them (a search's
    trial). Raises :class:`RecipeError` for a bad recipe, ``KeyboardInterrupt`` on Ctrl-C.
    """
    from metalr.running.runner import Runner  # torch-heavy: loaded when a run is asked for

    registry = registry or get_registry()
    loaded = _load(recipe, overrides, registry)
    tap = _Tap(on_epoch) if on_epoch is not None else None
    runner = Runner(loaded, _TappedRegistry(registry, tap) if tap else registry,
                    progress=progress, report=progress)
    runner.parent_run, runner.extra_tags = parent_run, dict(tags or {})
    runner.run_name = run_name
    if tap is not None:
        tap.runner = runner
    try:
        return runner.run()
    except KeyboardInterrupt:
        if tap is not None and tap.stopped is not None and tap.stopped_suite:
            raise RunStopped(runner.output_dir, tap.stopped) from None
        raise


def _load(recipe: str | os.PathLike[str] | Recipe, overrides: Sequence[str],
          registry: Registry) -> Recipe:
    if not isinstance(recipe, Recipe):
        return load_recipe(Path(recipe), tuple(overrides), registry, deep=True)
    if not overrides:
        return recipe
    data = recipe.model_dump(mode="json")
    problems, _ = apply_overrides(data, tuple(overrides))
    if not problems:
        try:
            return Recipe.model_validate(data)
        except ValidationError as exc:
            problems = [Problem(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]
    raise RecipeError(recipe.name, problems)


class _Tap:
    """What the tapped tracker calls back: which runs are whose, and the stop request."""

    def __init__(self, on_epoch: OnEpoch):
        self.on_epoch = on_epoch
        self.runs: dict[str, tuple[str, int]] = {}
        self.steps = 0
        self.runner: Any = None
        self.stopped: EpochReport | None = None
        self.stopped_suite = False

    def started(self, run_id: str, params: Mapping[str, Any]) -> None:
        if "method" in params and "seed" in params and not params.get("tuning"):
            self.runs[run_id] = (str(params["method"]), int(params["seed"]))

    def logged(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        if self.stopped is not None or run_id not in self.runs or "step_lr" in metrics:
            return
        if not any(k.startswith("test_") for k in metrics):  # an epoch without evaluation
            return
        method, seed = self.runs[run_id]
        report = EpochReport(method, seed, step, dict(metrics), self.steps)
        self.steps += 1
        if self.on_epoch(report):
            self.stopped = report
            stop = getattr(self.runner, "stop", None)
            if stop is not None and stop.signum is None:  # as Ctrl-C: stop at the next step
                stop.signum = signal.SIGINT
                self.stopped_suite = True


class _TappedTracker:
    """The recipe's tracker, passing on every call; it tells the tap what it was sent."""

    def __init__(self, tracker: Any, tap: _Tap):
        self._tracker, self._tap = tracker, tap
        args = inspect.signature(tracker.start_run).parameters
        self._tags = "tags" in args or any(a.kind is a.VAR_KEYWORD for a in args.values())

    def start_run(self, experiment: str, name: str, params: Mapping[str, Any],
                  parent: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        if self._tags:
            run_id = self._tracker.start_run(experiment, name, params, parent, tags=tags)
        else:
            run_id = self._tracker.start_run(experiment, name, params, parent)
        self._tap.started(run_id, params)
        return run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        self._tracker.log_metrics(run_id, metrics, step)
        self._tap.logged(run_id, metrics, step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracker, name)


class _TappedRegistry:
    """The registry, but the tracker it builds is tapped (nothing else differs)."""

    def __init__(self, registry: Registry, tap: _Tap):
        self._registry, self._tap = registry, tap

    def get(self, kind: str, name: str) -> Any:
        component = self._registry.get(kind, name)
        if kind != "tracker":
            return component
        factory, tap = component.factory, self._tap
        return dataclasses.replace(
            component, factory=lambda *a, **o: _TappedTracker(factory(*a, **o), tap))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)
