"""Comparisons between two methods of one suite, computed from their per-seed results.

A sentence such as "learned beats the control" is only printed when this module says so. The
methods of a suite share, for a given seed, the data split, the data order and the initial
weights (the runner's contract), so their results pair by seed: the test is a paired t-test over
the seeds both finished (two-sided). With three seeds a real difference of a point is often not
significant; the verdict then says so instead of picking a side, and a method whose mean is
behind is never reported as passing a margin it misses.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from metalr.reporting.suites import Suite

ALPHA = 0.05
"""The significance level of the paired test."""


@dataclass(frozen=True)
class Comparison:
    """``method`` against ``other`` on the suite's headline metric (test, final epoch)."""

    method: str
    other: str
    metric: str
    higher_is_better: bool
    pairs: tuple[tuple[int, float, float], ...]  # (seed, method's value, other's value)
    margin: float | None = None  # "within": how far behind still passes (absolute)

    @property
    def gains(self) -> list[float]:
        """Per seed, how much better ``method`` did (positive: better, whatever the direction)."""
        sign = 1.0 if self.higher_is_better else -1.0
        return [sign * (a - b) for _, a, b in self.pairs]

    @property
    def gain(self) -> float | None:
        """Mean gain over the paired seeds (None: no seed both finished)."""
        return statistics.fmean(self.gains) if self.pairs else None

    @property
    def seeds_at_or_above(self) -> int:
        return sum(g >= 0 for g in self.gains)

    @property
    def p_value(self) -> float | None:
        """Two-sided paired t-test over the seeds; None with fewer than two pairs or when every
        pair differs by the same amount (no spread: the test is undefined)."""
        gains = self.gains
        if len(gains) < 2:
            return None
        if statistics.stdev(gains) == 0:
            return None if all(g == 0 for g in gains) else 0.0
        from scipy import stats

        return float(stats.ttest_rel([a for _, a, _ in self.pairs],
                                     [b for _, _, b in self.pairs]).pvalue)

    @property
    def verdict(self) -> str:
        """``better`` or ``worse`` (significant at :data:`ALPHA`), else ``no significant
        difference``; with a margin, ``within`` only when the mean is no further behind than it
        (a method behind by more is never within, whatever the test says), else
        ``not within``."""
        gain, p = self.gain, self.p_value
        if gain is None:
            return "not compared (no seed finished by both)"
        significant = p is not None and p < ALPHA
        if self.margin is not None:
            return f"{'within' if gain >= -self.margin else 'not within'} {self.margin:g}"
        if significant:
            return "better" if gain > 0 else "worse"
        return "no significant difference"


def compare(suite: Suite, method: str, other: str, margin: float | None = None) -> Comparison:
    """``method`` against ``other`` over the seeds both finished with a finite final value."""
    key = f"test_{suite.metric}"

    def finals(name: str) -> dict[int, float]:
        return {r.seed: v for r in suite.finished(name)
                if (v := r.final(key)) is not None and math.isfinite(v)}

    mine, theirs = finals(method), finals(other)
    pairs = tuple((s, mine[s], theirs[s]) for s in sorted(mine.keys() & theirs.keys()))
    return Comparison(method, other, suite.metric, suite.higher_is_better, pairs, margin)


def comparison_rows(comparisons: Sequence[Comparison]) -> list[list[str]]:
    """Table rows: method, against, mean gain, seeds at or above, p, verdict."""
    rows = []
    for c in comparisons:
        gain, p = c.gain, c.p_value
        rows.append([c.method, c.other, "-" if gain is None else f"{gain:+.4f}",
                     f"{c.seeds_at_or_above}/{len(c.pairs)}",
                     "-" if p is None else f"{p:.3f}", c.verdict])
    return rows


COMPARISON_HEAD = ["method", "against", "mean gain (per seed, paired)", "seeds at or above",
                   "paired t-test p", "verdict"]
