"""Figures of runs: the LR each method applied (paper Fig. 4), the training curves and a
sweep's metric against a swept key.

Suites compare twenty-odd methods, so colours cycle through a 20-colour map with a second line
style, and the legend sits outside the axes.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metalr.engine.history import History


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def _styles(n: int) -> list[dict]:
    plt = _pyplot()
    colours = plt.get_cmap("tab20" if n > 10 else "tab10").colors
    return [{"color": colours[i % len(colours)], "ls": ("-", "--", ":")[i // len(colours) % 3]}
            for i in range(n)]


_LEGEND_COLUMN = 1.7  # inches per legend column


def _columns(n: int) -> int:
    return 0 if n <= 1 else 1 + (n - 1) // 18


def _legend(fig, ax, n: int) -> float:
    """Put the legend right of the axes; return the figure fraction left for the plots."""
    cols = _columns(n)
    if not cols:
        return 0.98
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, ncol=cols, frameon=False)
    return 1 - (0.1 + _LEGEND_COLUMN * cols) / fig.get_figwidth()


def plot_lr(histories: Mapping[str, History], path: Path) -> Path:
    plt = _pyplot()
    n = len(histories)
    fig, ax = plt.subplots(figsize=(6.5 + _LEGEND_COLUMN * _columns(n), 3.8))
    for (name, h), style in zip(histories.items(), _styles(n)):
        ax.plot(range(1, len(h.lrs) + 1), h.lrs, label=name, lw=1, **style)
    ax.set(xlabel="step", ylabel="learning rate", yscale="log", title="Applied learning rate")
    right = _legend(fig, ax, n)
    fig.subplots_adjust(left=0.1, right=right, bottom=0.14, top=0.9)  # tight_layout costs ~0.3 s
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(histories: Mapping[str, History], path: Path, metric: str = "accuracy") -> Path:
    plt = _pyplot()
    panels = [("train_batch_loss", "training loss (batch mean)"), ("test_loss", "test loss"),
              (f"test_{metric}", f"test {metric}"), ("meta_loss", "meta-set loss")]
    n = len(histories)
    fig, axes = plt.subplots(1, 4, figsize=(16 + _LEGEND_COLUMN * _columns(n), 3.6))
    for ax, (key, title) in zip(axes, panels):
        for (name, h), style in zip(histories.items(), _styles(n)):
            points = [(e["epoch"], e[key]) for e in h.epochs if key in e]
            if points:
                ax.plot(*zip(*points), label=name, lw=1, **style)
        ax.set(xlabel="epoch", title=title)
        if key.endswith("loss"):
            ax.set_yscale("log")
    right = _legend(fig, axes[-1], n)
    fig.subplots_adjust(left=0.04, right=right, bottom=0.14, top=0.9, wspace=0.25)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_swept(key: str, values: Sequence[Any], lines: Mapping[str, Mapping[int, Sequence[float]]],
               metric: str, path: Path) -> Path:
    """A sweep's final test metric against one swept key: per line (a method, with the other
    keys' values) the mean ± std over seeds at each value (``lines[label][i]``: the scores at
    ``values[i]``)."""
    plt = _pyplot()
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    xs = list(values) if numeric else list(range(len(values)))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, by_x in lines.items():
        at = sorted(i for i in by_x if by_x[i])
        means = [statistics.fmean(by_x[i]) for i in at]
        stds = [statistics.stdev(by_x[i]) if len(by_x[i]) > 1 else 0.0 for i in at]
        ax.errorbar([xs[i] for i in at], means, yerr=stds, marker="o", capsize=3, label=label)
    if numeric and all(v > 0 for v in values) and max(values) / min(values) >= 100:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(xs, [json.dumps(v) for v in values])
    ax.set_xlabel(key)
    ax.set_ylabel(f"final test_{metric} (mean ± std over seeds)")
    if lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
