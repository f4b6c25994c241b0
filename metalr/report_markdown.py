"""The report as Markdown: the tables of `metalr report`'s page, for docs/ and `metalr reproduce`.

Read from the same :class:`~metalr.report.Suite` objects and built with the same row functions
as the HTML page (:func:`~metalr.report.results_rows`, :func:`~metalr.report.seed_rows`), so a
number in docs/ and on the page cannot differ. Each suite is stamped with what decides its
numbers on a machine (commit, torch, threads, CPU kernel set: docs/design.md, Determinism), and
a page whose suites come from more than one commit says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from metalr.comparisons import COMPARISON_HEAD, Comparison, comparison_rows
from metalr.report import Suite, results_rows, seed_rows
from metalr.results import markdown_table

def stamp(suites: Sequence[Suite]) -> str:
    """Where the numbers come from: one line per distinct environment of the suites."""
    seen: dict[tuple[str, ...], list[str]] = {}
    for suite in suites:
        p = suite.provenance
        commit = p.get("git_commit", "unknown")[:10]
        if p.get("git_dirty") == "true":
            commit += " with uncommitted changes"
        key = (commit, p.get("version", "?"), p.get("torch_version", "?"),
               p.get("torch_threads", "?"), p.get("cpu_capability", "?"), p.get("device", "?"),
               p.get("python_version", "?"))
        seen.setdefault(key, []).append(suite.name)
    lines = []
    for (commit, version, torch, threads, cpu, device, python), names in seen.items():
        lines.append(f"metalr {version} at commit {commit}; torch {torch}, {threads} "
                     f"thread(s), CPU kernels {cpu}, device {device}, Python {python}"
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
