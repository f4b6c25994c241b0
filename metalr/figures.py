"""Figures of runs: the LR each method applied (paper Fig. 4) and the training curves."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from metalr.engine import History


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def plot_lr(histories: Mapping[str, History], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, h in histories.items():
        ax.plot(range(1, len(h.lrs) + 1), h.lrs, label=name, lw=1)
    ax.set(xlabel="step", ylabel="learning rate", yscale="log", title="Applied learning rate")
    ax.legend()
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.15, top=0.9)  # tight_layout costs ~0.3 s
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(histories: Mapping[str, History], path: Path, metric: str = "accuracy") -> Path:
    plt = _pyplot()
    panels = [("train_batch_loss", "training loss (batch mean)"), ("test_loss", "test loss"),
              (f"test_{metric}", f"test {metric}"), ("meta_loss", "meta-set loss")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for ax, (key, title) in zip(axes, panels):
        for name, h in histories.items():
            points = [(e["epoch"], e[key]) for e in h.epochs if key in e]
            if points:
                ax.plot(*zip(*points), label=name, marker=".", lw=1)
        ax.set(xlabel="epoch", title=title)
    axes[0].legend()
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.15, top=0.9, wspace=0.25)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
