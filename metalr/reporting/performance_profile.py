"""The performance profile across tasks that `metalr report` draws (docs/report.md).

Per task t and method m a cost ``c[t][m]`` from the mean final test metric (lower is better as
is; higher is better: the error ``1 - value`` for a metric within [0, 1] such as accuracy, else
``1 / value``), the ratio ``r = c / min over methods of c`` (1 when equal, infinite for a method
missing or failed on t), and ``rho_m(tau) = |{t : r[t][m] <= tau}| / |tasks|`` for tau >= 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from metalr.reporting.suites import Suite


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
