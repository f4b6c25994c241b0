"""The report as Markdown: the tables of `metalr report`'s page, for docs/ and `metalr reproduce`.

Read from the same :class:`~metalr.reporting.suites.Suite` objects and built with the same row
functions as the HTML page (:func:`~metalr.reporting.suites.results_rows`,
:func:`~metalr.reporting.suites.seed_rows`), so a number in docs/ and on the page cannot differ.
Each suite is stamped with what decides its numbers on a machine (commit, torch, threads, CPU kernel
set: docs/design.md, Determinism), and a page whose suites come from more than one commit says so.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from metalr.engine.history import History
from metalr.reporting.comparisons import COMPARISON_HEAD, Comparison, comparison_rows
from metalr.reporting.suites import CURVES, Suite, results_rows, seed_rows
from metalr.running.results import SweepPointRecord, markdown_table, sweep_rows

SWEPT = "sweep."

def _environment(p: Mapping[str, str]) -> tuple[str, ...]:
    commit = p.get("git_commit", "unknown")[:10]
    if p.get("git_dirty") == "true":
        commit += " with uncommitted changes"
    return (commit, p.get("version", "?"), p.get("torch_version", "?"),
            p.get("torch_threads", "?"), p.get("cpu_capability", "?"), p.get("device", "?"),
            p.get("python_version", "?"))


def stamp(suites: Sequence[Suite], others: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """Where the numbers come from: one line per distinct environment of the suites (and of
    ``others``: a name, e.g. a bench script's, and its ``metalr.*`` provenance without the
    prefix; its thread count is the script's own, which it prints)."""
    seen: dict[tuple[str, ...], list[str]] = {}
    for suite in suites:
        seen.setdefault(_environment(suite.provenance), []).append(suite.name)
    for name, p in (others or {}).items():
        seen.setdefault(_environment({**p, "torch_threads": "as printed"}), []).append(name)
    lines = []
    for (commit, version, torch, threads, cpu, device, python), names in seen.items():
        threads = ("the thread count it prints" if threads == "as printed"
                   else f"{threads} thread(s)")
        lines.append(f"metalr {version} at commit {commit}; torch {torch}, {threads}, "
                     f"CPU kernels {cpu}, device {device}, Python {python}"
                     + (f" ({', '.join(names)})" if len(seen) > 1 else ""))
    if len({key[0] for key in seen}) > 1:
        lines.append("**These rows come from more than one commit**: rerun them at one.")
    return "\n".join(f"- {line}" for line in lines)


def suite_markdown(suite: Suite, comparisons: Sequence[Comparison] = (),
                   level: int = 4) -> str:
    """One suite: its results table, its per-seed table and its computed comparisons."""
    m = suite.metric
    direction = "higher is better" if suite.higher_is_better else "lower is better"
    rows = results_rows(suite)
    parts = [f"{'#' * level} {suite.name}: task {suite.task}, model {suite.model}",
             f"Final test {m} ({direction}), mean ± sample std (ddof = 1) over the seeds that "
             "finished; `*` after a probe's start LR: the probe saw no signal on that seed.",
             markdown_table(list(rows[0]) if rows else ["method"],
                            [list(r.values()) for r in rows]),
             f"Final test {m} per seed:",
             markdown_table(["method", *(f"seed {s}" for s in suite.seeds())], seed_rows(suite))]
    if comparisons:
        parts += ["Computed comparisons (paired over the seeds, which share data and initial "
                  "weights; two-sided paired t-test; `within x`: the mean no more than x "
                  "behind):", markdown_table(COMPARISON_HEAD, comparison_rows(comparisons))]
    return "\n\n".join(parts)


def markdown_report(suites: Sequence[Suite], uri: str,
                    comparisons: Mapping[str, Sequence[Comparison]] | None = None) -> str:
    """Every suite's tables under one stamp: `metalr report --markdown`."""
    comparisons = comparisons or {}
    body = [f"# Report of {len(suites)} suite{'s' * (len(suites) != 1)} from {uri}",
            stamp(suites)]
    body += [suite_markdown(s, comparisons.get(s.run_id, ()), level=2) for s in suites]
    return "\n\n".join(body) + "\n"


def sweep_markdown(points: Sequence[Suite], level: int = 4) -> str:
    """A sweep's points as one table (:func:`metalr.running.results.sweep_rows`, as `metalr sweep`
    writes it from its points' records): a row per combination of the swept values."""
    first = points[0]
    m = first.metric
    keys = swept_keys(points)
    records = []
    for point in sorted(points, key=lambda p: int(p.provenance.get(f"{SWEPT}index", 0))):
        finals = {}
        for method in point.methods():
            done = point.finished(method)
            finals[method] = done[0].final(f"test_{m}") if done else None
        seed = point.provenance.get(f"{SWEPT}seed")
        records.append(SweepPointRecord(
            tuple((k, _shown(point.provenance.get(SWEPT + k, "?"))) for k in keys),
            None if seed is None else int(seed), finals,
            bool(point.runs) and all(r.status == "FINISHED" for r in point.runs)))
    rows = sweep_rows(records, m)
    direction = "higher is better" if first.higher_is_better else "lower is better"
    return "\n\n".join([
        f"{'#' * level} {first.experiment}: sweep of {', '.join(keys)}, task {first.task}, "
        f"model {first.model}",
        f"Final test {m} ({direction}), mean ± sample std (ddof = 1) over the seeds that "
        "finished, then each seed (a point per value and seed):",
        markdown_table(list(rows[0]), [list(r.values()) for r in rows])])


def swept_keys(points: Sequence[Suite]) -> list[str]:
    """The keys a sweep varied (without its seed and index), as recorded on its points."""
    return [k.removeprefix(SWEPT) for k in points[0].provenance if k.startswith(SWEPT)
            and k not in (f"{SWEPT}seed", f"{SWEPT}index")]


def sweep_lines(points: Sequence[Suite], key: str
                ) -> tuple[list[Any], dict[str, dict[int, list[float]]]]:
    """For :func:`metalr.running.figures.plot_swept`: ``key``'s values in grid order and, per method
    (with the other keys' values), the finished seeds' final test metric at each value."""
    others = [k for k in swept_keys(points) if k != key]
    ordered = sorted(points, key=lambda p: int(p.provenance.get(f"{SWEPT}index", 0)))
    values = list(dict.fromkeys(p.provenance[SWEPT + key] for p in ordered))
    lines: dict[str, dict[int, list[float]]] = {}
    for point in ordered:
        at = values.index(point.provenance[SWEPT + key])
        rest = ",".join(f"{k}={point.provenance.get(SWEPT + k)}" for k in others)
        for method in point.methods():
            label = method + (f" ({rest})" if rest else "")
            for r in point.finished(method):
                value = r.final(f"test_{point.metric}")
                if value is not None and math.isfinite(value):
                    lines.setdefault(label, {}).setdefault(at, []).append(value)
    return [json.loads(v) for v in values], lines


def _shown(value: str) -> str:
    try:
        return json.dumps(json.loads(value))
    except ValueError:
        return value


def suite_histories(suite: Suite) -> tuple[dict[str, History], dict[str, History]]:
    """Per method, the applied LR of its first seed and its curves averaged over the finished
    seeds, as :class:`~metalr.engine.algorithm.History` for :mod:`metalr.running.figures`."""
    first = suite.seeds()[0] if suite.runs else None
    lrs, curves = {}, {}
    keys = [k.format(metric=suite.metric) for k, _, _ in CURVES]
    for method in suite.methods():
        run = next((r for r in suite.runs if r.method == method and r.seed == first), None)
        if run is not None and run.lrs:
            lrs[method] = History(lrs=[v for _, v in run.lrs])
        done = suite.finished(method)
        by_epoch: dict[int, dict[str, list[float]]] = {}
        for r in done:
            for key in keys:
                for epoch, value in r.epochs.get(key, []):
                    by_epoch.setdefault(epoch, {}).setdefault(key, []).append(value)
        if by_epoch:
            curves[method] = History(epochs=[
                {"epoch": e, **{k: statistics.fmean(v) for k, v in row.items()
                                if len(v) == len(done)}}
                for e, row in sorted(by_epoch.items())])
    return lrs, curves
