"""Run one recipe point from Python: ``metalr.run(recipe, overrides)``, what ``metalr run``
does (the same validation, runner, folder and tracking), returning the :class:`RunSummary`.

It is the piece a search is made of: ``metalr search`` runs each trial through it, and your own
loop (an Optuna study of yours, a bandit) can too (docs/recipes.md, Search). ``on_epoch`` sees
each evaluation as it is logged and may stop the suite there, which is how a pruner acts: the
runs stop at their next step, checkpointed and KILLED, exactly as on Ctrl-C.
"""

from __future__ import annotations

import itertools
import os
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

    ``on_epoch(report)`` is called at each evaluation of a (non-tuning) run, tracked or not;
    returning True stops the suite (:class:`RunStopped` is raised). ``parent_run``, ``tags`` and
    ``run_name`` nest the suite's tracker runs in another run and label them (a search's
    trial). Raises :class:`RecipeError` for a bad recipe, ``KeyboardInterrupt`` on Ctrl-C.
    """
    from metalr.running.runner import Runner  # torch-heavy: loaded when a run is asked for

    registry = registry or get_registry()
    runner = Runner(_load(recipe, overrides, registry), registry, progress=progress,
                    report=progress)
    runner.parent_run, runner.extra_tags = parent_run, dict(tags or {})
    runner.run_name = run_name
    stopped: list[EpochReport] = []
    if on_epoch is not None:
        reports = itertools.count()

        def watch(job: Any, epoch: int, metrics: Mapping[str, float]) -> bool:
            report = EpochReport(job.method, job.seed, epoch, dict(metrics), next(reports))
            if not stopped and on_epoch(report):
                stopped.append(report)
                return True
            return False

        runner.watch = watch
    try:
        return runner.run()
    except KeyboardInterrupt:
        if stopped:
            raise RunStopped(runner.output_dir, stopped[0]) from None
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
