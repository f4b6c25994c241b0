"""The suites a report is made of: a recipe run, its methods and seeds, as tracked.

The page (:mod:`metalr.reporting.html`), its Markdown (:mod:`metalr.reporting.markdown`), the
comparisons (:mod:`metalr.reporting.comparisons`) and `metalr reproduce` all read these objects, and
the results tables come from one place (:func:`results_rows`, :func:`seed_rows`), so a number in
docs/ and on the page cannot differ. They are filled from a store by
:mod:`metalr.reporting.suite_reader`.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field

from metalr.running.results import SeedRecord, method_rows, number

CURVES = (("train_batch_loss", "training loss (batch mean)", True),
          ("test_loss", "test loss", True),
          ("test_{metric}", "test {metric}", False),
          ("meta_loss", "meta-set loss", True))
"""The per-epoch curves a suite keeps (key, title, log scale): the ones read from the store and
drawn as panels, as in :func:`metalr.running.figures.plot_curves`."""


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
    meta_learned: bool = False  # its meta-updates were tracked: it trained a net

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

    def sweep_values(self) -> dict[str, object]:
        """The swept keys' values of a sweep point's suite (its ``metalr.sweep.<key>`` tags, as
        JSON), the seed left out; empty for a suite that is no sweep point."""
        out = {}
        for tag, value in self.provenance.items():
            key = tag.removeprefix("sweep.")
            if key != tag and key not in ("seed", "index"):
                try:
                    out[key] = json.loads(value)
                except ValueError:
                    out[key] = value
        return out

    def trained(self) -> list[tuple[str, str]]:
        """(``method/seedN``, run id) of the finished runs that meta-learned a net by
        hypergradient (their meta-updates' loss is tracked): each saved it as the artifact
        ``theta/theta-final.safetensors``."""
        return [(f"{r.method}/seed{r.seed}", r.run_id) for r in self.runs
                if r.status == "FINISHED" and r.meta_learned]

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


def seed_records(suite: Suite) -> list[SeedRecord]:
    """The suite's runs as the one result model, :class:`metalr.running.results.SeedRecord`."""
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
    """The results table: :func:`metalr.running.results.method_rows`, as results.md has it."""
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
                row.append(number(value))
        rows.append(row)
    return rows
