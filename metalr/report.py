"""`metalr report`: one static HTML page of tracked runs, read back from the MLflow store.

Built from the store, not from output folders: the store is what outlives a run's folder and
where runs of several machines meet, and it holds all a page needs (params: task, model,
method, seed, nets; ``step_lr`` per step; metrics per epoch).

The page is a folder, ``index.html`` plus ``assets/``, that opens from ``file://`` with no
network: tables and model cards are HTML written here; charts are drawn in the browser by
uPlot (1.6.32, MIT, 51 kB, vendored in ``metalr/report_assets``; plotly would be 3.5 MB) from
JSON embedded in the page. Statistics follow :mod:`metalr.results`: over the seeds that
finished, mean ± *sample* standard deviation (``statistics.stdev``, ddof=1).

Performance profile (docs/report.md): per task t and method m a cost ``c[t][m]`` from the mean
final test metric (lower is better as is; higher is better: the error ``1 - value`` for a metric
within [0, 1] such as accuracy, else ``1 / value``), the ratio ``r = c / min over methods of c``
(1 when equal, infinite for a method missing or failed on t), and
``rho_m(tau) = |{t : r[t][m] <= tau}| / |tasks|`` for tau >= 1.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
import os
import shutil
import sqlite3
import statistics
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from metalr.results import SeedRecord, method_rows

MAX_POINTS = 2000
"""Points per LR series at most: a long run's 100k steps would make a page of tens of MB; the
thinned series keeps every k-th step and the last."""

ASSETS = ("uPlot.iife.min.js", "uPlot.min.css", "uPlot-LICENSE", "report.js", "report.css")
CURVES = (("train_batch_loss", "training loss (batch mean)", True),
          ("test_loss", "test loss", True),
          ("test_{metric}", "test {metric}", False),
          ("meta_loss", "meta-set loss", True))
"""The per-epoch panels (key, title, log scale), as in :func:`metalr.figures.plot_curves`."""

Progress = Callable[[str], None]


class ReportError(Exception):
    """A report that cannot be made (no store, an unknown name, nothing tracked): one line."""


# -- what the store holds ------------------------------------------------------------------------

@dataclass
class SeedRun:
    """One method's run with one seed, as tracked."""

    method: str
    seed: int
    status: str
    run_id: str
    params: dict[str, str]
    lrs: list[tuple[int, float]] = field(default_factory=list)
    epochs: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def final(self, key: str) -> float | None:
        values = self.epochs.get(key) or []
        return values[-1][1] if values else None

    def best(self, key: str, higher_is_better: bool) -> float | None:
        values = [v for _, v in self.epochs.get(key) or []]
        if not values:
            return None
        return max(values) if higher_is_better else min(values)

    @property
    def tuned(self) -> str:
        """``option=value`` for a method whose option was tuned on the meta split."""
        option = self.params.get("tune", "None")
        if option in ("None", ""):
            return ""
        return f"{option}={self.params.get(f'lr_policy.options.{option}', '?')}"


@dataclass
class Suite:
    """One recipe run (the parent run): a task, its methods and seeds."""

    run_id: str
    name: str
    experiment: str
    status: str
    start_time: int
    task: str
    model: str
    metric: str
    higher_is_better: bool
    runs: list[SeedRun] = field(default_factory=list)
    provenance: dict[str, str] = field(default_factory=dict)  # the run's metalr.* tags

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.runs))

    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})

    def finished(self, method: str) -> list[SeedRun]:
        return [r for r in self.runs if r.method == method and r.status == "FINISHED"]

    def score(self, method: str) -> float | None:
        """Mean final test metric over the finished seeds (None: none finished with one)."""
        values = [v for r in self.finished(method)
                  if (v := r.final(f"test_{self.metric}")) is not None and math.isfinite(v)]
        return statistics.fmean(values) if values else None

    def nets(self) -> dict[str, list[str]]:
        """Per method, the meta-learned nets its runs started from or transferred (as named in
        their params: ``lr_policy.options.nets``, ``meta.weights``)."""
        out: dict[str, list[str]] = {}
        for r in self.runs:
            for key, value in r.params.items():
                if not (key.endswith(".nets") or key == "meta.weights") or value == "None":
                    continue
                try:
                    names = json.loads(value)
                except ValueError:
                    names = value
                for name in [names] if isinstance(names, str) else names:
                    out.setdefault(r.method, [])
                    if str(name) not in out[r.method]:
                        out[r.method].append(str(name))
        return out


DEFAULT_URI = "sqlite:///mlflow.db"
"""MLflow's tracker's default store (``$MLFLOW_TRACKING_URI`` first)."""


def sqlite_tables(path: Path) -> set[str]:
    """The tables of the SQLite file ``path``, read without writing anything (read-only mode:
    not even a journal). ``sqlite3.Error`` for a file that is no readable SQLite database."""
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        con.close()
    return {str(name) for (name,) in rows}


def mlflow_tables() -> set[str]:
    """The tables this MLflow keeps a store in: a store missing any of them, MLflow would
    create or migrate on opening (a write)."""
    try:
        from mlflow.store.db.utils import Base  # (importing it registers every table)

        tables = set(Base.metadata.tables)
    except ImportError:  # another MLflow layout: the tables every version has
        tables = {"experiments", "runs", "metrics", "params", "tags"}
    return tables | {"alembic_version"}


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None: a server, or an in-memory database)."""
    if not uri.startswith("sqlite:///"):
        return None  # a server (it checks itself), or an in-memory database
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path.removeprefix("file:")) if path and path != ":memory:" else None


def existing_store(uri: str) -> Path | None:
    """The SQLite file of ``uri`` once checked, reading only, to be an existing MLflow store
    of this MLflow's schema: looking at a store (``report``, ``runs``) must never create,
    migrate or fill a file. A one-line :class:`ReportError` naming the file otherwise. None:
    not a SQLite store (a server answers for itself)."""
    path = sqlite_file(uri)
    if path is None:
        return None
    if not path.exists():
        raise ReportError(f"no MLflow store at {path} (set MLFLOW_TRACKING_URI or pass "
                          "--tracking-uri)")
    if not path.is_file():
        raise ReportError(f"{path} is not a file, so not an MLflow store; pass the store's "
                          "database file with --tracking-uri")
    try:
        tables = sqlite_tables(path)
    except sqlite3.Error as exc:
        raise ReportError(f"{path}: not a readable SQLite database ({exc}); restore the store "
                          "from a copy, or pass another with --tracking-uri") from None
    if not {"experiments", "alembic_version"} <= tables:
        what = ("an empty file" if path.stat().st_size == 0 else
                "an SQLite database without tables" if not tables else
                "an SQLite database of something else (tables "
                + ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "") + ")")
        raise ReportError(f"{path} is not an MLflow store: {what}; pass the store's "
                          "database file with --tracking-uri")
    missing = mlflow_tables() - tables
    if missing:
        raise ReportError(f"{path}: an MLflow store of an older MLflow (no table "
                          f"{', '.join(sorted(missing)[:3])}); upgrade it first with "
                          f"`mlflow db upgrade sqlite:///{path}`")
    try:
        default = has_default_experiment(path)
    except sqlite3.Error as exc:
        raise ReportError(f"{path}: not a readable MLflow store ({exc}); restore it from a "
                          "copy, or pass another with --tracking-uri") from None
    if not default:  # MLflow would insert it on opening the store
        raise ReportError(f"{path}: an MLflow store without its default experiment (id 0), "
                          "which MLflow would add on opening it; open it once with MLflow "
                          "(`mlflow ui --backend-store-uri ...`) to repair it")
    return path


def has_default_experiment(path: Path) -> bool:
    """Whether the store holds MLflow's default experiment (id 0), which MLflow adds, a write,
    to a store without it; read-only, ``sqlite3.Error`` if it cannot be read."""
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        found = con.execute("SELECT 1 FROM experiments WHERE experiment_id = 0").fetchone()
    finally:
        con.close()
    return found is not None


def _client(tracking_uri: str | None) -> tuple[Any, str]:
    """An MLflow client of an existing store: a SQLite path that does not exist or is not a
    complete MLflow store is an error, never a new or migrated database (nothing is written
    outside ``--out``; MLflow only reads a store that :func:`existing_store` accepts)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    path = existing_store(uri)
    from mlflow.tracking import MlflowClient

    _quiet_database_errors()
    try:
        return MlflowClient(tracking_uri=uri), uri
    except Exception as exc:  # noqa: BLE001  (MLflow's many ways to refuse a store)
        raise ReportError(f"cannot read the MLflow store {path or uri}: {_reason(exc)}") from exc


class _NoTraceback(logging.Filter):
    """MLflow logs a database error with its traceback before raising it; the report says it
    in one line (:class:`ReportError`) instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.levelno >= logging.ERROR)


def _quiet_database_errors() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _NoTraceback) for f in logger.filters):
        logger.addFilter(_NoTraceback())


def _reason(exc: BaseException) -> str:
    """One line for an error from the store: SQLite's own message where there is one."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        for e in (cause, getattr(cause, "orig", None)):
            if isinstance(e, sqlite3.Error):
                return " ".join(str(e).split())
        cause = cause.__cause__ or cause.__context__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def _search(client: Any, experiment_ids: list[str], filter_string: str = "") -> list[Any]:
    out, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000,
                                  page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def _is_suite(run: Any) -> bool:
    return "task.name" in run.data.params and "name" in run.data.params


def _latest_per_name(runs: Iterable[Any]) -> list[Any]:
    """The latest suite run of each run name: a recipe run twice shows once, the points of a
    sweep (named apart) all show."""
    latest: dict[str, Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        latest[run.info.run_name] = run
    return sorted(latest.values(), key=lambda r: r.info.start_time or 0)


def select_suites(client: Any, targets: Sequence[str], uri: str,
                  progress: Progress | None = None) -> list[Any]:
    """The suite (parent) runs that ``targets`` name, every argument checked before any data is
    read: an experiment name stands for the latest run of each name in it; a run id for that
    suite (a sweep's run: its points; a method's run: its suite); none: every experiment."""
    say = progress or (lambda _: None)
    experiments = {e.name: e for e in client.search_experiments()}
    chosen: dict[str, Any] = {}
    if not targets:
        ids = [e.experiment_id for e in experiments.values()]
        suites = [r for r in _search(client, ids) if _is_suite(r)] if ids else []
        if not suites:
            raise ReportError(f"no metalr runs in the MLflow store {uri}")
        for run in _latest_per_name(suites):
            chosen[run.info.run_id] = run
        return list(chosen.values())
    from mlflow.exceptions import MlflowException

    unknown = []
    for target in targets:
        if target in experiments:
            exp_id = experiments[target].experiment_id
            suites = [r for r in _search(client, [exp_id]) if _is_suite(r)]
            if not suites:
                raise ReportError(f"the experiment {target!r} holds no metalr runs")
            for run in _latest_per_name(suites):
                chosen[run.info.run_id] = run
            continue
        try:
            run = client.get_run(target)
        except MlflowException:
            unknown.append(target)
            continue
        if _is_suite(run):
            chosen[run.info.run_id] = run
            continue
        parent = run.data.tags.get("mlflow.parentRunId")
        points = [r for r in _search(client, [run.info.experiment_id],
                                     f"tags.`mlflow.parentRunId` = '{target}'") if _is_suite(r)]
        if points:  # a sweep's run
            say(f"{target}: a sweep of {len(points)} points")
            for r in points:
                chosen[r.info.run_id] = r
        elif parent is not None and _is_suite(suite := client.get_run(parent)):
            say(f"{target}: a run of the suite {parent} ({suite.info.run_name}), reported whole")
            chosen[suite.info.run_id] = suite
        else:
            raise ReportError(f"the run {target} is not a metalr suite, sweep or method run")
    if unknown:
        names = ", ".join(sorted(experiments)) or "none"
        raise ReportError(f"{', '.join(map(repr, unknown))}: neither an experiment nor a run id "
                          f"in {uri} (experiments: {names})")
    return list(chosen.values())


def _task_metric(task: str, metric_keys: set[str]) -> tuple[str, bool]:
    """The task's headline metric and its direction: from the task component when installed
    (as the runner does), else from the ``test_*`` keys the runs logged."""
    try:
        from metalr.plugins import get_registry

        factory = get_registry().get("task", task).factory
        return str(factory.metric), bool(factory.higher_is_better)
    except Exception:  # noqa: BLE001  (a store from a machine with other plugins)
        found = sorted(k[5:] for k in metric_keys if k.startswith("test_") and k != "test_loss")
        metric = found[0] if found else "loss"
        return metric, not any(w in metric for w in ("loss", "perplexity", "error"))


def _history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    points = {m.step: m.value for m in client.get_metric_history(run_id, key)}
    return sorted(points.items())


def read_suite(client: Any, run: Any, experiment: str, warn: Progress | None = None) -> Suite:
    """A suite and its method runs (tuning runs left out: the tables report the final runs).
    A run whose params are not metalr's (a seed that is no integer: written by hand, or by
    another tool) is left out with a ``warn`` line, not a traceback."""
    params = run.data.params
    children = [r for r in _search(client, [run.info.experiment_id],
                                   f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
                if "method" in r.data.params and r.data.params.get("tuning") != "True"]
    keys = set().union(*(r.data.metrics for r in children)) if children else set()
    metric, higher = _task_metric(params["task.name"], keys)
    suite = Suite(run.info.run_id, run.info.run_name, experiment, run.info.status,
                  run.info.start_time or 0, params["task.name"], params.get("model.name", "?"),
                  metric, higher,
                  provenance={k.removeprefix("metalr."): v for k, v in run.data.tags.items()
                              if k.startswith("metalr.")})
    wanted = ({k.format(metric=metric) for k, _, _ in CURVES}
              | {f"test_{metric}", "wall_time", "probe_seconds"})
    for child in sorted(children, key=lambda r: r.info.start_time or 0):
        p = child.data.params
        try:
            seed = int(p.get("seed", 0))
        except ValueError:
            if warn is not None:
                warn(f"{run.info.run_name} ({run.info.run_id[:8]}): run {child.info.run_id} "
                     f"left out: its seed param {p['seed'][:40]!r} is not an integer")
            continue
        seed_run = SeedRun(p["method"], seed, child.info.status, child.info.run_id, dict(p))
        if "step_lr" in child.data.metrics:
            seed_run.lrs = _history(client, child.info.run_id, "step_lr")
        for key in wanted & set(child.data.metrics):
            seed_run.epochs[key] = _history(client, child.info.run_id, key)
        suite.runs.append(seed_run)
    order = suite.methods()  # the recipe's order: the runner starts the methods in it
    suite.runs.sort(key=lambda r: (order.index(r.method), r.seed))
    return suite


def load_suites(targets: Sequence[str], tracking_uri: str | None = None,
                progress: Progress | None = None,
                warn: Progress | None = None) -> tuple[list[Suite], str]:
    """Every suite ``targets`` names (see :func:`select_suites`), read from the store. A store
    that fails while read (a damaged database) is a one-line :class:`ReportError`; ``warn``
    gets a line for each run left out (default: a Python warning)."""
    say = progress or (lambda _: None)
    warn = warn or (lambda line: warnings.warn(line, stacklevel=3))
    client, uri = _client(tracking_uri)
    try:
        runs = select_suites(client, targets, uri, say)
        names = {e.experiment_id: e.name for e in client.search_experiments()}
        suites = []
        for i, run in enumerate(runs, 1):
            suite = read_suite(client, run, names.get(run.info.experiment_id, "?"), warn)
            say(f"[{i}/{len(runs)}] {suite.name} ({suite.run_id[:8]}): task {suite.task}, "
                f"{len(suite.methods())} methods, {len(suite.runs)} runs")
            suites.append(suite)
    except ReportError:
        raise
    except Exception as exc:
        if not _from_store(exc):
            raise
        where = sqlite_file(uri) or uri
        raise ReportError(f"cannot read the MLflow store {where}: {_reason(exc)}; restore it "
                          "from a copy, or pass another with --tracking-uri") from exc
    return suites, uri


def _from_store(exc: BaseException) -> bool:
    """An error of the store (MLflow's, its database's), not a bug of this module."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, (MlflowException, sqlite3.Error)) or type(exc).__module__.startswith(
        "sqlalchemy")


# -- statistics and the performance profile ------------------------------------------------------

def cost(value: float | None, higher_is_better: bool, unit_interval: bool) -> float:
    """What a profile compares, lower is better: the value itself (perplexity, loss); for a
    higher-is-better metric, the error ``1 - value`` when it lives in [0, 1] (accuracy), else
    ``1 / value``. Missing or non-finite: infinite (never within any tau)."""
    if value is None or not math.isfinite(value):
        return math.inf
    if not higher_is_better:
        return value
    if unit_interval:
        return 1.0 - value
    return 1.0 / value if value > 0 else math.inf


def comparable(costs: Mapping[str, Mapping[str, float]]) -> dict[str, Mapping[str, float]]:
    """The tasks a profile counts: those with two methods or more. A suite of one method (a
    sweep point, a lone meta-train) would be a win for it by construction."""
    return {task: per for task, per in costs.items() if len(per) >= 2}


def performance_ratios(costs: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per task, each method's cost over the best cost on that task (>= 1; 1 for the best).

    ``costs``: task -> method -> cost. A method absent from a task gets an infinite ratio; a
    best cost of 0 (say 100% accuracy) makes every other method's ratio infinite. Tasks where
    no method has a finite cost are left out: they would lower every curve alike.
    """
    methods = list(dict.fromkeys(m for per in costs.values() for m in per))
    out: dict[str, dict[str, float]] = {}
    for task, per in costs.items():
        best = min((c for c in per.values() if math.isfinite(c)), default=math.inf)
        if not math.isfinite(best):
            continue
        ratios = {}
        for m in methods:
            c = per.get(m, math.inf)
            if c == best:
                ratios[m] = 1.0
            elif not math.isfinite(c) or best <= 0:
                ratios[m] = math.inf
            else:
                ratios[m] = c / best
        out[task] = ratios
    return out


def performance_profile(ratios: Mapping[str, Mapping[str, float]],
                        taus: Sequence[float]) -> dict[str, list[float]]:
    """``rho_m(tau)``: per method, the fraction of tasks with ratio <= tau, at each tau."""
    tasks = list(ratios)
    methods = list(dict.fromkeys(m for per in ratios.values() for m in per))
    if not tasks:
        return {m: [0.0] * len(taus) for m in methods}
    return {m: [sum(ratios[t].get(m, math.inf) <= tau for t in tasks) / len(tasks)
                for tau in taus] for m in methods}


def profile_taus(ratios: Mapping[str, Mapping[str, float]]) -> list[float]:
    """Where the profile steps: 1, every finite ratio, and a margin past the largest."""
    finite = sorted({r for per in ratios.values() for r in per.values() if math.isfinite(r)})
    top = max([1.05, *(1.1 * r for r in finite)])
    return sorted({1.0, *finite, top})


def suite_costs(suites: Sequence[Suite]) -> dict[str, dict[str, float]]:
    """Task label -> method -> cost of its mean final test metric (see :func:`cost`)."""
    out = {}
    for s in suites:
        scores = {m: s.score(m) for m in s.methods()}
        unit = all(0.0 <= v <= 1.0 for v in scores.values() if v is not None)
        label = s.name if sum(x.name == s.name for x in suites) == 1 else \
            f"{s.name} ({s.run_id[:8]})"
        out[label] = {m: cost(v, s.higher_is_better, unit) for m, v in scores.items()}
    return out


# -- the page ------------------------------------------------------------------------------------

def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    out = [f'<table class="{cls}"><thead><tr>'
           + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    return "".join(out) + "</tbody></table>"


def _thin(n: int) -> int:
    return max(1, math.ceil(n / MAX_POINTS))


def _aligned(series: Mapping[str, Sequence[tuple[int, float]]], thin: bool = False,
             positive: bool = False, groups: Mapping[str, str] | None = None) -> dict[str, Any]:
    """uPlot's data: one shared x array, every series on it (null where it has no point)."""
    xs = sorted({x for points in series.values() for x, _ in points})
    if thin and xs:
        k = _thin(len(xs))
        xs = [x for i, x in enumerate(xs) if i % k == 0 or i == len(xs) - 1]
    out = {"x": xs, "series": []}
    for label, points in series.items():
        values = dict(points)
        ys = []
        for x in xs:
            y = _finite(values.get(x))
            ys.append(None if y is None or (positive and y <= 0) else y)
        out["series"].append({"label": label, "group": (groups or {}).get(label, label),
                              "y": ys})
    return out


def _suite_charts(suite: Suite) -> dict[str, Any]:
    labels = {f"{r.method}/seed{r.seed}": r for r in suite.runs if r.lrs}
    lr = _aligned({k: r.lrs for k, r in labels.items()}, thin=True, positive=True,
                  groups={k: r.method for k, r in labels.items()})
    panels = []
    for key, title, log in CURVES:
        key, title = key.format(metric=suite.metric), title.format(metric=suite.metric)
        means: dict[str, list[tuple[int, float]]] = {}
        for m in suite.methods():
            per_epoch: dict[int, list[float]] = {}
            for r in suite.finished(m):
                for x, y in r.epochs.get(key, []):
                    if math.isfinite(y):
                        per_epoch.setdefault(x, []).append(y)
            n = len(suite.finished(m))
            points = [(x, statistics.fmean(v)) for x, v in sorted(per_epoch.items())
                      if len(v) == n]  # epochs every finished seed reached, as results.py
            if points:
                means[m] = points
        panels.append({"title": title, "log": log, "xlabel": "epoch",
                       **_aligned(means, positive=log)})
    return {"lr": {"title": "Applied learning rate (per seed)", "log": True, "xlabel": "step",
                   **lr}, "curves": panels}


def seed_records(suite: Suite) -> list[SeedRecord]:
    """The suite's runs as the one result model, :class:`metalr.results.SeedRecord`."""
    m, out = suite.metric, []
    for r in suite.runs:
        done = r.status == "FINISHED"
        probe = r.params.get("probe_lr") if done else None
        try:
            probe_lr: float | str | None = None if probe is None else float(probe)
        except ValueError:
            probe_lr = probe  # written by another tool: shown as written
        out.append(SeedRecord(
            r.method, r.seed, r.status,
            final=r.final(f"test_{m}") if done else None,
            best=r.best(f"test_{m}", suite.higher_is_better) if done else None,
            last_lr=r.lrs[-1][1] if r.lrs else None,
            wall_time=r.final("wall_time") if done else None,
            probe_lr=probe_lr, probe_signal=r.params.get("probe_signal") != "False",
            probe_seconds=r.final("probe_seconds") if probe is not None else None,
            tuned=r.tuned))
    return out


def results_rows(suite: Suite) -> list[dict[str, str]]:
    """The results table: :func:`metalr.results.method_rows`, as results.md has it."""
    return method_rows(seed_records(suite), suite.metric)


def seed_rows(suite: Suite) -> list[list[str]]:
    """Per method, the final test metric of each seed (or how the run ended)."""
    rows = []
    for method in suite.methods():
        row = [method]
        for seed in suite.seeds():
            run = next((r for r in suite.runs if r.method == method and r.seed == seed), None)
            value = None if run is None else run.final(f"test_{suite.metric}")
            if run is None:
                row.append("")
            elif run.status != "FINISHED" or value is None:
                row.append(run.status)
            else:
                row.append(f"{value:.4f}")
        rows.append(row)
    return rows


def find_card(name: str) -> Path | None:
    """A net's model card: a shipped name's ``nets/<name>/card.md``; a folder's (``metalr nets
    import`` writes one) or a file's folder's ``card.md``."""
    from metalr.scheduler import NETS_DIR, shipped_nets

    if name in shipped_nets():
        card = NETS_DIR / name / "card.md"
        return card if card.is_file() else None
    path = Path(name).expanduser()
    for folder in (path, path.parent):
        if (folder / "card.md").is_file():
            return folder / "card.md"
    return None


def render_markdown(text: str) -> str:
    """Markdown to HTML with raw HTML escaped and unsafe links refused: a card may come from
    any folder, and nothing from it may run in the page."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _profile_section(suites: Sequence[Suite]) -> tuple[str, dict[str, Any] | None]:
    costs = comparable(suite_costs(suites))
    ratios = performance_ratios(costs)
    if not ratios:
        empty = ("<section id='profile'><h2>Performance profile</h2><p>No task has two "
                 "methods, one of which finished with a test metric.</p></section>")
        return empty, None
    taus = profile_taus(ratios)
    rho = performance_profile(ratios, taus)
    methods = list(rho)
    chart = {"title": "Performance profile", "log": False, "xlabel": "tau",
             "stepped": True, "x": taus,
             "series": [{"label": m, "group": m, "y": rho[m]} for m in methods]}
    head = ["task", *methods]
    rows = [[t, *("not run" if m not in costs[t] else "∞" if math.isinf(r[m]) else
                  f"{r[m]:.3f}" for m in methods)] for t, r in ratios.items()]
    n = len(ratios)
    text = (f"<p>For each method, the fraction of the {n} task{'s' * (n != 1)} on which its "
            "cost is within a factor τ of the best method's on that task. Cost: the mean final "
            "test metric over the finished seeds; for accuracy (higher is better, in [0, 1]) "
            "the error 1 − accuracy, for perplexity or loss the value itself. A curve that "
            "reaches 1 early and high is better; its value at τ = 1 is the share of tasks the "
            "method won. A method missing or failed on a task never counts there; a suite "
            "of one method (a sweep point) is not a task here. "
            "<a href='https://arxiv.org/abs/2306.07179'>AlgoPerf</a> style; see docs/report.md."
            "</p>")
    body = (f"<section id='profile'><h2>Performance profile across tasks</h2>{text}"
            "<div class='chart' data-chart='profile'></div>"
            "<h3>Ratios to the best method (cost / best cost)</h3>"
            + _table(head, rows, "ratios") + "</section>")
    return body, chart


def _suite_section(i: int, suite: Suite, cards: Mapping[str, Path | None]) -> str:
    m = suite.metric
    direction = "higher is better" if suite.higher_is_better else "lower is better"
    rows = results_rows(suite)
    head = list(rows[0]) if rows else ["method"]
    seeds_head = ["method", *(f"seed {s}" for s in suite.seeds())]
    nets = suite.nets()
    net_lines = "".join(
        f"<li>{_e(method)}: " + ", ".join(
            f"<a href='#card-{_e(_slug(n))}'>{_e(n)}</a>" if cards.get(n) else
            f"{_e(n)} (no card found)" for n in names) + "</li>"
        for method, names in nets.items())
    curves = "".join(f"<div class='chart small' data-chart='s{i}-c{j}'></div>"
                     for j in range(len(CURVES)))
    return (
        f"<section class='suite' id='suite-{i}'>"
        f"<h2>{_e(suite.name)} <small>task {_e(suite.task)}, model {_e(suite.model)}</small></h2>"
        f"<p class='meta'>experiment {_e(suite.experiment)} · run {_e(suite.run_id)} · "
        f"{_e(suite.status)} · started {_e(_when(suite.start_time))} · metric test {_e(m)} "
        f"({direction})</p>"
        f"<h3>Learning-rate schedule</h3><div class='chart' data-chart='s{i}-lr'></div>"
        f"<h3>Training and test curves <small>(mean over finished seeds)</small></h3>"
        f"<div class='curves'>{curves}</div>"
        f"<h3>Results <small>mean ± sample std (ddof = 1) over the seeds that finished"
        f"</small></h3>" + _table(head, [list(r.values()) for r in rows], "results")
        + f"<h3>Final test {_e(m)} per seed</h3>" + _table(seeds_head, seed_rows(suite), "seeds")
        + (f"<h3>Meta-learned nets used</h3><ul>{net_lines}</ul>" if net_lines else "")
        + "</section>")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def _when(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M") if ms else "?"


def script_json(data: Any) -> str:
    """JSON to embed in a ``<script>`` block: ``<``, ``>`` and ``&`` as ``\\u003c`` etc., so
    that no name in it can end the block (``</script``) or switch the HTML parser into its
    escaped states (``<!--``, ``<script``) and lose the rest of the page. JSON.parse reads the
    escapes back as the characters."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(suites: Sequence[Suite], uri: str) -> str:
    """The whole page: sections, tables and the JSON its charts are drawn from."""
    charts: dict[str, Any] = {}
    names = list(dict.fromkeys(n for s in suites for ns in s.nets().values() for n in ns))
    cards = {n: find_card(n) for n in names}
    profile, chart = _profile_section(suites)
    if chart is not None:
        charts["profile"] = chart
    sections = []
    for i, suite in enumerate(suites):
        data = _suite_charts(suite)
        charts[f"s{i}-lr"] = data["lr"]
        for j, panel in enumerate(data["curves"]):
            charts[f"s{i}-c{j}"] = panel
        sections.append(_suite_section(i, suite, cards))
    colours = {m: k for k, m in enumerate(dict.fromkeys(m for s in suites for m in s.methods()))}
    for spec in charts.values():  # a method has one colour on the whole page
        for series in spec["series"]:
            series["colour"] = colours.get(series["group"], len(colours))
    card_html = "".join(
        f"<details class='card' id='card-{_e(_slug(n))}'><summary>{_e(n)} "
        f"<small>{_e(path)}</small></summary>{render_markdown(path.read_text())}</details>"
        for n, path in cards.items() if path is not None)
    toc = "".join(f"<li><a href='#suite-{i}'>{_e(s.name)}</a> — {_e(s.task)}, "
                  f"{len(s.methods())} methods, seeds {_e(', '.join(map(str, s.seeds())))}</li>"
                  for i, s in enumerate(suites))
    data = script_json(charts)
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>metalr report</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="assets/uPlot.min.css"><link rel="stylesheet" href="assets/report.css">
</head><body>
<header><h1>metalr report</h1>
<p class="meta">{len(suites)} suite{'s' * (len(suites) != 1)} from {_e(uri)} · written {now} ·
charts: drag to zoom, double-click to reset, click a legend entry to hide it</p>
<ul class="toc">{toc}<li><a href="#profile">performance profile</a></li>
<li><a href="#cards">model cards</a></li></ul></header>
<main>{profile}{''.join(sections)}
<section id="cards"><h2>Model cards</h2>{card_html or '<p>No run used a meta-learned net.</p>'}
</section></main>
<script type="application/json" id="report-data">{data}</script>
<script src="assets/uPlot.iife.min.js"></script><script src="assets/report.js"></script>
</body></html>
"""


def write_report(suites: Sequence[Suite], out: str | Path, uri: str) -> Path:
    """``out/index.html`` and ``out/assets/``; other files in ``out`` are left alone."""
    out = Path(out)
    page = render(suites, uri)  # before anything is written
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    source = resources.files("metalr") / "report_assets"
    for name in ASSETS:
        with resources.as_file(source / name) as path:
            shutil.copyfile(path, assets / name)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def build_report(targets: Sequence[str], out: str | Path, tracking_uri: str | None = None,
                 progress: Progress | None = None, warn: Progress | None = None,
                 markdown: bool = False) -> Path:
    """Read the suites ``targets`` name from the store and write the report folder ``out``
    (``markdown``: also ``report.md``, the same tables as Markdown)."""
    suites, uri = load_suites(targets, tracking_uri, progress, warn)
    index = write_report(suites, out, uri)
    if markdown:
        from metalr.report_markdown import markdown_report

        (Path(out) / "report.md").write_text(markdown_report(suites, uri), encoding="utf-8")
    return index
