"""The default on classification tasks kept outside the suites, beside the control and a WSD grid.

    python bench/unseen.py TASK OPTIMIZER [--epochs 30] [--grid 0.01 0.03 0.1 0.3 1]

Issue 18's bar is checked on tasks outside the repository's suites too: nothing here was tuned
on these. Tasks (scikit-learn, offline): ``clusters``, eight classes of ``make_classification``
(4,000 points, 40 features, 12 informative, two clusters a class, 5% of labels flipped);
``clusters20``, twenty (6,000 points, 100 features, 30 informative, 2% flipped); ``moons``
(3,000 points, noise 0.3); ``cancer`` (the bundled breast-cancer data, 569 points). Features
standardised, a quarter held out as the test split, 300 (the cluster tasks) or 80 training
points as the meta split. An MLP 128-128, batch 64, seeds 0-2. Printed per method: the final test accuracy,
mean and per seed, and the probe's start. The WSD grid is the best a fixed LR can do with the
control's shape, chosen on the test split here: an upper bound for tuning, not a tuned baseline.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from metalr.contracts.protocols import ModelSpec
from metalr.contracts.registry import get_registry
from metalr.engine.algorithm import Engine, EngineConfig, TrainingDiverged
from metalr.engine.data import TensorClassificationTask

OPTIMIZERS = {"sgd": ("sgd", {"momentum": 0.0, "weight_decay": 5e-4}),
              "sgdm": ("sgd", {"momentum": 0.9, "weight_decay": 5e-4}), "adam": ("adam", {})}
TASKS = ("clusters", "clusters20", "moons", "cancer")
GRIDS = {"sgd": [0.03, 0.1, 0.3, 1.0, 3.0], "sgdm": [0.01, 0.03, 0.1, 0.3, 1.0],
         "adam": [0.0003, 0.001, 0.003, 0.01, 0.03]}


def _data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_breast_cancer, make_classification, make_moons

    if name == "clusters":
        x, y = make_classification(4000, 40, n_informative=12, n_classes=8,
                                   n_clusters_per_class=2, flip_y=0.05, class_sep=0.8,
                                   random_state=3)
    elif name == "clusters20":
        x, y = make_classification(6000, 100, n_informative=30, n_classes=20,
                                   n_clusters_per_class=1, class_sep=1.0, flip_y=0.02,
                                   random_state=5)
    elif name == "moons":
        x, y = make_moons(3000, noise=0.3, random_state=2)
    elif name == "cancer":
        x, y = load_breast_cancer(return_X_y=True)
    else:
        raise ValueError(f"unknown task {name!r}: {', '.join(TASKS)}")
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    x = (x - x.mean(0)) / x.std(0)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[order], y[order]


class Unseen(TensorClassificationTask):
    """One of the tasks above (the module docstring), as the engine takes a task."""

    def __init__(self, name: str):
        super().__init__(meta_size=300 if name.startswith("clusters") else 80)
        self.x, self.y = _data(name)
        self.spec = ModelSpec(input_shape=(self.x.shape[1],), num_outputs=int(self.y.max()) + 1)

    def load(self):
        n = len(self.y) // 4
        return (self.x[n:], self.y[n:]), (self.x[:n], self.y[:n])


def build(task_name: str, optimizer: str, policy: str, seed: int, epochs: int = 30,
          **options) -> Engine:
    """One run's engine (the tests fit it themselves to read its history): the task, an MLP
    128-128 and the optimizer, for ``seed``, batch 64; ``options`` are the LR policy's."""
    reg = get_registry()
    task = Unseen(task_name)
    task.setup(seed, torch.device("cpu"))
    torch.manual_seed(seed)
    model = reg.get("model", "mlp").build(task.spec, hidden=[128, 128])
    opt_name, opt_options = OPTIMIZERS[optimizer]
    opt = reg.get("optimizer", opt_name).build(model.parameters(), **opt_options)
    lr_policy = reg.get("lr_policy", policy).build(**options)
    return Engine(task, model, opt, lr_policy,
                  EngineConfig(epochs=epochs, batch_size=64, meta_batch_size=64, seed=seed))


def run(task_name: str, optimizer: str, policy: str, seed: int, epochs: int = 30,
        **options) -> tuple[float, float | None]:
    """``(final test accuracy, probe start or None)`` of one run (a diverged run: nan)."""
    try:
        history = build(task_name, optimizer, policy, seed, epochs, **options).fit()
    except (TrainingDiverged, FloatingPointError):  # FloatingPointError: every probe LR diverged
        return float("nan"), None
    return history.epochs[-1]["test_accuracy"], (history.probe.lr if history.probe else None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("optimizer", choices=sorted(OPTIMIZERS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--grid", type=float, nargs="*", help="WSD LRs (default: per optimizer)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    grid = GRIDS[args.optimizer] if args.grid is None else args.grid
    methods = [("mlrsnet", "mlrsnet", {}), ("control", "probed-wsd", {})]
    methods += [(f"wsd {lr:g}", "wsd", {"lr": lr}) for lr in grid]
    print(f"{args.task}, {args.optimizer}, {args.epochs} epochs: final test accuracy "
          "(per seed), probe start per seed")
    for label, policy, options in methods:
        found = [run(args.task, args.optimizer, policy, seed, args.epochs, **options)
                 for seed in args.seeds]
        accs = [acc for acc, _ in found]
        starts = " / ".join(f"{s:.3g}" for _, s in found) if found[0][1] is not None else "-"
        print(f"  {label}: {statistics.fmean(accs):.4f} ("
              + " / ".join(f"{a:.3f}" for a in accs) + f"), start {starts}", flush=True)


if __name__ == "__main__":
    main()
