"""Results of a recipe run and the tables made from them (Markdown and CSV).

Statistics are over the seeds that finished; failed runs are counted and shown, never averaged.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from metalr.engine import History


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


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.4f}"  # one seed: no spread to report
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}"


@dataclass
class RunSummary:
    name: str
    output_dir: Path
    metric: str
    higher_is_better: bool
    results: list[MethodResult] = field(default_factory=list)
    tuning: list[MethodResult] = field(default_factory=list)
    run_id: str | None = None

    @property
    def ok(self) -> bool:
        return all(r.status == "FINISHED" for r in self.results + self.tuning)

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.results))

    def choose_tuned(self) -> dict[str, tuple[str, float]]:
        """Per tuned method, the grid value with the best final *meta*-split metric.

        A method none of whose tuning runs finished is left out: it keeps the recipe's value.
        """
        key = f"meta_{self.metric}"
        chosen: dict[str, tuple[str, float, float]] = {}
        for r in self.tuning:
            value = r.final(key) if r.status == "FINISHED" else None
            if value is None or not math.isfinite(value):
                continue
            score = value if self.higher_is_better else -value
            if r.method not in chosen or score > chosen[r.method][2]:
                chosen[r.method] = (r.tuned[0], r.tuned[1], score)
        return {m: (c[0], c[1]) for m, c in chosen.items()}

    def rows(self) -> list[dict[str, str]]:
        m = self.metric
        rows = []
        for method in self.methods():
            runs = [r for r in self.results if r.method == method]
            done = [r for r in runs if r.status == "FINISHED"]
            tuned = runs[0].tuned
            lrs = [r.history.lrs[-1] for r in done if r.history.lrs]
            rows.append({
                "method": method,
                f"final test {m}": _mean_std([r.final(f"test_{m}") for r in done]),
                f"best test {m}": _mean_std([r.best(f"test_{m}", self.higher_is_better)
                                             for r in done]),
                "final LR": f"{statistics.fmean(lrs):.4g}" if lrs else "-",
                "wall time per run (s)": (f"{statistics.fmean(r.history.wall_time for r in done):.1f}"
                                          if done else "-"),
                "tuned": f"{tuned[0]}={tuned[1]:g}" if tuned else "",
                "runs": f"{len(done)}/{len(runs)} finished" + (
                    "" if len(done) == len(runs) else " (FAILED: " + "; ".join(
                        r.error or r.status for r in runs if r.status != "FINISHED") + ")"),
            })
        return rows

    def markdown(self) -> str:
        rows = self.rows()
        if not rows:
            return "(no runs)"
        head = list(rows[0])
        lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
        lines += ["| " + " | ".join(r[h] for h in head) + " |" for r in rows]
        return "\n".join(lines)

    def csv(self) -> str:
        buffer = io.StringIO()
        rows = self.rows()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return buffer.getvalue()

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
