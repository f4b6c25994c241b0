"""Results of a recipe run and the tables made from them (Markdown and CSV).

Statistics are over the seeds that finished; failed runs are counted and shown, never averaged.
A spread is the *sample* standard deviation (``statistics.stdev``, ddof=1) over those seeds; with
one seed none is shown. The per-seed values behind each mean are in ``results.csv`` (one column
per seed), in the per-seed table of ``results.md`` and in the parent run's tracker metrics
(``results.csv``), so a reader can recompute any other statistic.

Tuning (the DeepOBS protocol over several seeds) is decided here too. A grid point is *rejected*
when any of its tuning seeds

- did not finish (it diverged: non-finite or exploding loss or LR, or the rule failed), or has no
  finite final meta metric;
- ended at chance, for classification tasks (``spec.kind == "classification"``, a metric where
  higher is better): final meta metric <= 1 / num_outputs + ``CHANCE_MARGIN``. A net that
  collapsed to one class scores that class's share of the meta split, about 1 / num_outputs;
  the margin absorbs the class imbalance and sampling noise of a small meta split;
- ended no better than at its first evaluation, for every other task (a language model's
  perplexity, say, where no chance level is known from the task's spec): final meta metric not
  strictly better than the first evaluated epoch's. It needs two evaluations (tuning.epochs of
  at least 2 with eval_every 1); with one, only the divergence rule applies.

Among the surviving points the best mean over the tuning seeds of the final meta metric wins;
an exact tie goes to the better worst seed, then to the value listed first in the grid. When no
point survives, the method keeps its recipe's value and the tables say so.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metalr.engine.history import History

CHANCE_MARGIN = 0.05
"""Final meta accuracy up to 1 / num_outputs plus this counts as chance (see the module doc)."""


def chance_level(task: Any) -> float | None:
    """The headline metric of a model that learned nothing, where the task's spec tells it.

    Classification with a higher-is-better metric (accuracy): 1 / num_outputs. Otherwise None,
    and tuning falls back to "better than at the first evaluation".
    """
    spec = getattr(task, "spec", None)
    if (spec is not None and spec.kind == "classification" and task.higher_is_better
            and spec.num_outputs >= 2):
        return 1.0 / spec.num_outputs
    return None


def at_chance(value: float, chance: float | None) -> bool:
    """A higher-is-better ``value`` no better than ``chance`` plus ``CHANCE_MARGIN``: the one
    rule that rejects a tuning point, marks a run's console line and fails a seed in the bars
    (False where the task has no chance level)."""
    return chance is not None and value <= chance + CHANCE_MARGIN


def within_bar(value: float, best: float, higher_is_better: bool) -> bool:
    """Issue 18's "within": at most one point below ``best`` (an accuracy, higher is better)
    or at most 3% above it (a loss, RMSE, perplexity or bits per character). The one rule of
    ``bench/bars.py`` and ``bench/unseen.py``."""
    return value >= best - 0.01 if higher_is_better else value <= best * 1.03


@dataclass
class MethodResult:
    method: str
    seed: int
    status: str
    label: str = ""
    history: History | None = None
    error: str | None = None
    run_id: str | None = None
    tuned: tuple[str, float] | None = None
    tuning: bool = False
    files: dict[str, Path] = field(default_factory=dict)

    def final(self, key: str) -> float | None:
        if self.history is None:
            return None
        values = [e[key] for e in self.history.epochs if key in e]
        return values[-1] if values else None

    def best(self, key: str, higher_is_better: bool) -> float | None:
        if self.history is None:
            return None
        values = [e[key] for e in self.history.epochs if key in e]
        if not values:
            return None
        return max(values) if higher_is_better else min(values)


def number(value: float) -> str:
    """A table's number: four decimals, or four significant digits from a million on (a run
    that blew up without diverging past the guard can end at 1e263: 260 digits say nothing)."""
    return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"


def mean_std(values: Sequence[float]) -> str:
    """Mean ± sample std (ddof=1): the spread of the seeds as a sample of possible seeds."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return number(mean)  # one seed: no spread to report
    return f"{number(mean)} ± {number(statistics.stdev(values))}"


def _value(value: float | None) -> str:
    return "-" if value is None else number(value)


@dataclass(frozen=True)
class SeedRecord:
    """One method's run with one seed, as the results tables need it. The one result model:
    made from a run in memory (:meth:`RunSummary.records`) or read back from the tracker
    (:func:`metalr.reporting.suites.seed_records`), and turned into rows by :func:`method_rows`
    only, so results.md, results.csv, `metalr report`'s page and its Markdown show the same
    numbers."""

    method: str
    seed: int
    status: str
    final: float | None = None  # the final test metric (finished runs only)
    best: float | None = None  # the best test metric over the evaluated epochs
    last_lr: float | None = None
    wall_time: float | None = None  # training, the probe included
    probe_lr: float | str | None = None  # a number; as written where a store holds another
    probe_signal: bool = True  # False: the probe saw no signal (shown with a *)
    probe_seconds: float | None = None
    tuned: str = ""  # the tuning column: chosen value (and the grid's rejections)
    error: str | None = None  # why an unfinished run ended, where known


def _probe(record: SeedRecord) -> str:
    value = record.probe_lr
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return text + ("" if record.probe_signal else "*")


def method_rows(records: Sequence[SeedRecord], metric: str,
                per_seed: bool = False) -> list[dict[str, str]]:
    """One row per method (in the records' order): final and best test metric as mean ± sample
    std over the finished seeds, mean final LR and wall time, the probe's start per seed, the
    tuning, how many finished; ``per_seed`` adds a column per seed (``final test <metric>
    seed<N>``), as results.csv has them."""
    m = metric
    methods = list(dict.fromkeys(r.method for r in records))
    seeds = list(dict.fromkeys(r.seed for r in records))
    rows = []
    for method in methods:
        runs = [r for r in records if r.method == method]
        done = [r for r in runs if r.status == "FINISHED"]
        lrs = [r.last_lr for r in done if r.last_lr is not None]
        walls = [r.wall_time for r in done if r.wall_time is not None]
        probed = [r for r in done if r.probe_lr is not None]
        seconds = [r.probe_seconds for r in probed if r.probe_seconds is not None]
        unfinished = [r for r in runs if r.status != "FINISHED"]
        rows.append({
            "method": method,
            f"final test {m}": mean_std([r.final for r in done if r.final is not None]),
            f"best test {m}": mean_std([r.best for r in done if r.best is not None]),
            "final LR": f"{statistics.fmean(lrs):.4g}" if lrs else "-",
            "wall time per run (s)": f"{statistics.fmean(walls):.1f}" if walls else "-",
            "probe start LR (per seed)": " / ".join(_probe(r) for r in probed) or "-",
            "probe (s)": f"{statistics.fmean(seconds):.1f}" if seconds else "-",
            "tuned": next((r.tuned for r in runs if r.tuned), ""),
            "runs": f"{len(done)}/{len(runs)} finished" + (
                "" if not unfinished else " (" + "/".join(sorted(
                    {r.status for r in unfinished})) + (": " + "; ".join(
                        r.error or r.status for r in unfinished)
                    if any(r.error for r in unfinished) else "") + ")"),
        })
        if per_seed:
            by_seed = {r.seed: r.final if r.status == "FINISHED" else None for r in runs}
            rows[-1].update({f"final test {m} seed{s}": _value(by_seed.get(s)) for s in seeds})
    return rows


NO_SIGNAL_NOTE = ("\\* the LR probe saw no signal on that seed (no LR beat the untrained model "
                  "beyond its noise): the run started at half the largest LR that did no harm "
                  "(docs/design.md)")


@dataclass
class RunSummary:
    name: str
    output_dir: Path
    metric: str
    higher_is_better: bool
    results: list[MethodResult] = field(default_factory=list)
    tuning: list[MethodResult] = field(default_factory=list)
    run_id: str | None = None
    chance: float | None = None  # the meta metric of a model that learned nothing, if known

    @property
    def ok(self) -> bool:
        return all(r.status == "FINISHED" for r in self.results + self.tuning)

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.results))

    def _rejection(self, run: MethodResult) -> str | None:
        """Why one tuning run disqualifies its grid point (the rule is in the module doc)."""
        m, key = self.metric, f"meta_{self.metric}"
        if run.status != "FINISHED":
            error = (run.error or "").removeprefix(f"{run.method}, seed {run.seed}: ")
            return f"seed {run.seed} {run.status}" + (f" ({error})" if error else "")
        value = run.final(key)
        if value is None or not math.isfinite(value):
            return f"seed {run.seed}: no finite meta {m}"
        if self.chance is not None:
            if at_chance(value, self.chance):
                return (f"seed {run.seed} at chance (meta {m} {value:.4f} <= "
                        f"{self.chance + CHANCE_MARGIN:.4f})")
            return None
        evaluated = [e[key] for e in run.history.epochs if key in e]
        if len(evaluated) >= 2:
            first = evaluated[0]
            better = value > first if self.higher_is_better else value < first
            if not better:
                return (f"seed {run.seed} no better than at its first evaluation "
                        f"(meta {m} {first:.4g} -> {value:.4g})")
        return None

    def grid_points(self) -> list[GridPoint]:
        """Every tuned method's grid points in grid order, each rejected, kept or chosen."""
        key = f"meta_{self.metric}"
        points: dict[tuple[str, float], GridPoint] = {}
        for r in self.tuning:
            point = points.setdefault((r.method, r.tuned[1]),
                                      GridPoint(r.method, r.tuned[0], r.tuned[1]))
            point.runs.append(r)
            reason = self._rejection(r)
            if reason is not None:
                point.rejected.append(reason)
            value = r.final(key) if r.status == "FINISHED" else None
            point.scores.append(value if value is not None and math.isfinite(value) else None)
        sign = 1.0 if self.higher_is_better else -1.0
        best: dict[str, tuple[tuple[float, float], GridPoint]] = {}
        for point in points.values():  # grid order: on a full tie the first listed stays
            if point.rejected:
                continue
            rank = (sign * point.mean, min(sign * v for v in point.scores))
            if point.method not in best or rank > best[point.method][0]:
                best[point.method] = (rank, point)
        for _, point in best.values():
            point.chosen = True
        return list(points.values())

    def choose_tuned(self) -> dict[str, tuple[str, float]]:
        """Per tuned method, the chosen grid value; a method with no surviving point is left out
        (it keeps the recipe's value)."""
        return {p.method: (p.option, p.value) for p in self.grid_points() if p.chosen}

    def tuning_note(self, method: str) -> str:
        """The `tuned` column: the chosen value and how many grid points were rejected."""
        points = [p for p in self.grid_points() if p.method == method]
        if not points:
            return ""
        rejected = sum(bool(p.rejected) for p in points)
        chosen = [p for p in points if p.chosen]
        if not chosen:
            return f"recipe's {points[0].option} (all {len(points)} grid points rejected)"
        return f"{chosen[0].option}={chosen[0].value:g} ({rejected} of {len(points)} rejected)"

    def seeds(self) -> list[int]:
        """The seeds of the final runs, in the order they ran."""
        return list(dict.fromkeys(r.seed for r in self.results))

    def per_seed(self) -> dict[str, dict[int, float | None]]:
        """Per method, the final test metric of each seed (None: the run did not finish)."""
        key = f"test_{self.metric}"
        out: dict[str, dict[int, float | None]] = {}
        for r in self.results:
            out.setdefault(r.method, {})[r.seed] = (r.final(key) if r.status == "FINISHED"
                                                    else None)
        return out

    def method_metrics(self) -> dict[str, float]:
        """``final_test_<metric>/<method>``: each method's mean final test metric over its
        finished seeds, what the parent run is given (MLflow's UI draws one chart per metric,
        grouped by the part before ``/``: one per method, not one per method and seed). The
        per-seed values are the table artifact ``results.csv`` and the child runs' metrics."""
        out = {}
        for method, seeds in self.per_seed().items():
            done = [v for v in seeds.values() if v is not None and math.isfinite(v)]
            if done:
                out[f"final_test_{self.metric}/{method}"] = statistics.fmean(done)
        return out

    def per_seed_markdown(self) -> str:
        """The final test metric of every method and seed, under a heading ("" without runs)."""
        table = self.per_seed()
        if not table:
            return ""
        seeds = self.seeds()
        rows = [{"method": method, **{f"seed {s}": _value(values.get(s)) for s in seeds}}
                for method, values in table.items()]
        return (f"### Final test {self.metric} per seed\n\n"
                "The table above gives mean ± sample std (ddof=1) over the finished seeds.\n\n"
                + _markdown(rows))

    def records(self) -> list[SeedRecord]:
        """The final runs as :class:`SeedRecord` s, in the order they ran."""
        m = self.metric
        notes = {method: self.tuning_note(method) for method in self.methods()}  # once each
        out = []
        for r in self.results:
            done, h = r.status == "FINISHED", r.history
            tuned = notes[r.method] or (f"{r.tuned[0]}={r.tuned[1]:g}" if r.tuned else "")
            probe = h.probe if h is not None and done else None
            out.append(SeedRecord(
                r.method, r.seed, r.status,
                final=r.final(f"test_{m}") if done else None,
                best=r.best(f"test_{m}", self.higher_is_better) if done else None,
                last_lr=h.lrs[-1] if h is not None and h.lrs else None,
                wall_time=r.final("wall_time") if done else None,
                probe_lr=probe.lr if probe else None,
                probe_signal=probe.signal if probe else True,
                probe_seconds=probe.seconds if probe else None,
                tuned=tuned, error=r.error))
        return out

    def rows(self, per_seed: bool = False) -> list[dict[str, str]]:
        """One row per method (:func:`method_rows`); ``per_seed`` adds a column per seed."""
        return method_rows(self.records(), self.metric, per_seed)

    def markdown(self) -> str:
        records = self.records()
        table = _markdown(method_rows(records, self.metric)) or "(no runs)"
        if not all(r.probe_signal for r in records):
            table += "\n\n" + NO_SIGNAL_NOTE
        return table

    def csv(self) -> str:
        return _csv(self.rows(per_seed=True))

    def tuning_rows(self) -> list[dict[str, str]]:
        """One row per grid point: mean final meta metric over the tuning seeds, and status."""
        m = self.metric
        rows = []
        for p in self.grid_points():
            finite = [v for v in p.scores if v is not None]
            rows.append({
                "method": p.method,
                "grid point": f"{p.option}={p.value:g}",
                f"mean final meta {m}": f"{statistics.fmean(finite):.4f}" if finite else "-",
                "per seed": ", ".join(
                    f"seed {r.seed}: " + (number(v) if v is not None else r.status)
                    for r, v in zip(p.runs, p.scores)),
                "status": ("chosen" if p.chosen else "rejected: " + "; ".join(p.rejected)
                           if p.rejected else "kept"),
            })
        return rows

    def tuning_markdown(self) -> str:
        """The tuning table under a heading, or "" when no method was tuned."""
        rows = self.tuning_rows()
        if not rows:
            return ""
        seeds = sorted({r.seed for r in self.tuning})
        return (f"### Tuning on the meta split (seeds {', '.join(map(str, seeds))})\n\n"
                f"A grid point is rejected when a seed diverged or {self._rule()}; among the "
                "rest the best mean wins.\n\n"
                + _markdown(rows))

    def tuning_csv(self) -> str:
        return _csv(self.tuning_rows())

    def _rule(self) -> str:
        if self.chance is not None:
            return (f"ended at chance (final meta {self.metric} <= "
                    f"{self.chance + CHANCE_MARGIN:.4g})")
        return f"ended with a meta {self.metric} no better than at its first evaluation"

    def mean_histories(self) -> dict[str, History]:
        """Per method, the epoch metrics averaged over its finished seeds (for the curves)."""
        out = {}
        for method in self.methods():
            done = [r.history for r in self.results if r.method == method
                    and r.status == "FINISHED" and r.history]
            if not done:
                continue
            epochs = []
            for rows in zip(*(h.epochs for h in done)):
                keys = set.intersection(*(set(r) for r in rows))
                epochs.append({k: statistics.fmean(r[k] for r in rows) for k in keys})
            out[method] = History(lrs=done[0].lrs, epochs=epochs)
        return out


@dataclass
class GridPoint:
    """One value of a tuned option, run with every tuning seed."""

    method: str
    option: str
    value: float
    runs: list[MethodResult] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)  # final meta metric, per run
    rejected: list[str] = field(default_factory=list)  # why, per offending seed
    chosen: bool = False

    @property
    def mean(self) -> float:
        """Mean final meta metric over the seeds (nan when one is missing: a rejected point)."""
        if not self.scores or any(v is None for v in self.scores):
            return math.nan
        return statistics.fmean(self.scores)


@dataclass(frozen=True)
class SweepPointRecord:
    """One point of a sweep, as the one result model of sweeps: its swept values (shown as
    JSON), its seed, each method's final test metric (None: the run did not finish with one)
    and whether the point finished; from the points' records or from the store."""

    values: tuple[tuple[str, str], ...]
    seed: int | None
    finals: Mapping[str, float | None]
    finished: bool


def sweep_rows(points: Sequence[SweepPointRecord], metric: str) -> list[dict[str, str]]:
    """One row per combination of swept values (in the points' order): per method the final
    test metric, mean ± sample std over the seeds, then each seed's value; points finished."""
    methods = list(dict.fromkeys(m for p in points for m in p.finals))
    seeds = list(dict.fromkeys(p.seed for p in points))
    groups: dict[tuple, list[SweepPointRecord]] = {}
    for point in points:
        groups.setdefault(point.values, []).append(point)
    rows = []
    for values, group in groups.items():
        row = dict(values)
        for method in methods:
            finals = {p.seed: v for p in group
                      if (v := p.finals.get(method)) is not None and math.isfinite(v)}
            row[f"{method}: final test {metric}"] = mean_std(list(finals.values()))
            if len(seeds) > 1:
                row.update({f"{method}: seed {s}": _value(finals.get(s)) for s in seeds})
        row["points finished"] = f"{sum(p.finished for p in group)}/{len(group)}"
        rows.append(row)
    return rows


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table; a ``|`` inside a cell escaped."""
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _markdown(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    return markdown_table(head, ([r[h] for h in head] for r in rows))


def _csv(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()
