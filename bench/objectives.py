"""What each meta-objective costs: one whole meta-training run over one plain run (issue 19).

    python bench/objectives.py              # 6 rounds of 20-epoch runs, about 6 minutes
    python bench/objectives.py --rounds 3 --epochs 10   # a look, not a measurement

The runs go through the runner, as `metalr run` makes them (tracking off): the quickstart's
MNIST-1D MLP with SGD momentum, one seed, each method on its own. Per round every method runs
once, in a rotating order, and each gives its ratios to that round's runs of

- ``fixed``: a plain run at a fixed LR (no probe, nothing learned): what the whole cost is
  measured against;
- ``control``: the same probe, brake, recheck and cool-down with nothing learned
  (``probed-wsd``): what the learning itself adds.

The objectives: ``one-step`` (Algorithm 1, the default), ``averaged`` (the one-step loss at an
average of the weights), ``unroll`` at k = 5 and 20 (truncated backpropagation through k real
steps), and ``mlrsnet-es`` (evolution strategies over whole runs, meta-trained offline: every
run of every antithetic pair counts, then the frozen run). Each ratio is the median over the
rounds with a distribution-free 95% interval (min and max below 6 rounds), on wall and CPU
time; nothing is a target, so every line is information.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from metalr.recipes.schema import Recipe
from metalr.running.runner import Runner

sys.path.insert(0, str(Path(__file__).parent))
from overhead import median_interval, timed  # the same clocks and statistics

MOMENTUM = {"name": "sgd", "options": {"momentum": 0.9, "weight_decay": 5e-4}}
METHODS: dict[str, dict] = {
    "fixed": {"lr_policy": {"name": "fixed", "options": {"lr": 0.1}}},
    "control": {"lr_policy": {"name": "probed-wsd"}},
    "one-step": {"lr_policy": {"name": "mlrsnet"}},
    "averaged": {"lr_policy": {"name": "mlrsnet"}, "meta": {"objective": {"name": "averaged"}}},
    "unroll-5": {"lr_policy": {"name": "mlrsnet"},
                 "meta": {"objective": {"name": "unroll", "options": {"k": 5}}}},
    "unroll-20": {"lr_policy": {"name": "mlrsnet"},
                  "meta": {"objective": {"name": "unroll", "options": {"k": 20}}}},
    "es": {"lr_policy": {"name": "mlrsnet-es"}},
}


def whole_run(method: str, epochs: int, root: Path) -> Callable[[], object]:
    recipe = Recipe.model_validate({
        "name": f"bench-{method}", "task": {"name": "mnist1d", "options": {"meta_size": 500}},
        "model": {"name": "mlp", "options": {"hidden": [100, 100]}},
        "train": {"epochs": epochs, "seed": 0, "batch_size": 128, "device": "cpu",
                  "threads": 1, "eval_every": epochs},
        "methods": {method: {"optimizer": MOMENTUM, **METHODS[method]}},
        "tracking": "none", "output_dir": str(root / method),
    })

    def work() -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # the runner's summary line
            Runner(recipe, progress=False).run()
    return work


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds of every method")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = list(METHODS)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {m: whole_run(m, args.epochs, Path(tmp)) for m in names}
        runs["fixed"]()  # warm-up: imports, the task's data, kernels
        times: dict[str, list[tuple[float, float]]] = {m: [] for m in names}
        for i in range(args.rounds):
            shift = i % len(names)
            for m in names[shift:] + names[:shift]:
                times[m].append(timed(runs[m]))
    print(f"torch {torch.__version__}, 1 thread, MNIST-1D MLP 100-100, SGD momentum, "
          f"{args.epochs}-epoch runs (28 steps an epoch), {args.rounds} rounds, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"  {'method':10} {'run (s)':>8}   {'over fixed, wall [interval]':30}"
          f"{'over fixed, CPU':24}{'over control, wall [interval]':30}")
    out: dict[str, dict[str, float]] = {}
    for m in names:
        cells, out[m] = [], {"seconds": statistics.median(w for w, _ in times[m])}
        for base, column in (("fixed", 0), ("fixed", 1), ("control", 0)):
            ratios = [t[column] / b[column] for t, b in zip(times[m], times[base])]
            med, lo, hi = median_interval(ratios)
            out[m][f"over {base} {'wall' if column == 0 else 'cpu'}"] = med
            cells.append(f"{med:7.2f} [{lo:.2f}, {hi:.2f}]")
        print(f"  {m:10} {out[m]['seconds']:8.2f}   {cells[0]:30}{cells[1]:24}{cells[2]}")
    return out


if __name__ == "__main__":
    main()
