"""What meta-learning and the toolkit cost, as ratios measured side by side in one process.

    python bench/overhead.py [--epochs 6] [--pairs 5]

Every ratio is the median over ``--pairs`` alternated pairs of runs with the same data, seed
and epochs. Printed first for the tiny MLP (per-step Python overhead dominates; information
only), then, on the last line, for the 1D-CNN on MNIST-1D widened to 128 channels, whose plain
training step takes about 20 ms here:

1. one meta-update / one plain training step  (meta-update = what a step with a meta-update
   costs beyond the same step without one: virtual step, meta forward/backward, Adam on theta)
2. meta-train / fixed-LR training, T_val twice per epoch
3. meta-test (frozen MLR-SNet) / fixed-LR training
4. metalr fixed-LR run / a hand-written PyTorch loop doing the same work
5. tracking on (MLflow, temporary store) / tracking off, whole `metalr run` of one method
6. MLR-SNet with default options (LR probe of the run, cool-down) / fixed-LR training: what
   running untuned costs, the probe included (a fixed share of steps per grid point, so the
   shorter the run, the larger its share: see docs/design.md)

Ratios 1-3 use the paper's settings with gamma 0.5 (no probe, meta-updates twice an epoch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.nn import functional as F

from metalr.engine import Engine, EngineConfig
from metalr.plugins import get_registry
from metalr.protocols import RunInfo
from metalr.recipe import Recipe
from metalr.runner import Runner

SEED = 0
PAPER = {"preset": "paper", "gamma": 0.5}


def build(reg, task, model_name, model_opts, policy_name, policy_opts, epochs, meta_train=True):
    torch.manual_seed(SEED)
    model = reg.get("model", model_name).build(task.spec, **model_opts)
    opt = reg.get("optimizer", "sgd").build(model.parameters(), momentum=0.9, weight_decay=5e-4)
    policy = reg.get("lr_policy", policy_name).build(**policy_opts)
    cfg = EngineConfig(epochs=epochs, seed=SEED, meta_train=meta_train, eval_every=epochs)
    return Engine(task, model, opt, policy, cfg)


def hand_written_loop(reg, task, model_name, model_opts, epochs):
    """The same work as a metalr fixed-LR run, written the way one would by hand."""
    torch.manual_seed(SEED)
    model = reg.get("model", model_name).build(task.spec, **model_opts)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = task.splits["train"]
    gen = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(128):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        for split in ("train", "meta", "test"):
            xs, ys = task.splits[split]
            out = model(xs)
            F.cross_entropy(out, ys).item(), (out.argmax(1) == ys).float().mean().item()
    return time.perf_counter() - start


def timed_fit(engine) -> float:
    start = time.perf_counter()
    engine.fit()
    return time.perf_counter() - start


def step_times(reg, task, model_name, model_opts, repeats=20):
    """Median time of a plain fixed-LR step, and of MLR-SNet steps with and without a meta-update."""
    gen = torch.Generator().manual_seed(SEED)
    x, y = task.splits["train"]
    plain = build(reg, task, model_name, model_opts, "fixed", {"lr": 0.1}, 1)
    meta = build(reg, task, model_name, model_opts, "mlrsnet", PAPER, 1)
    for e in (plain, meta):
        e.policy.start(RunInfo(1, 1, e.optimizer, torch.device("cpu"), SEED, task))
    times = {"plain": [], "meta-free": [], "meta-update": []}
    for i in range(repeats + 3):
        idx = torch.randint(len(y), (128,), generator=gen)
        batch, meta_batch = (x[idx], y[idx]), task.meta_batch(128, gen)
        for key, engine, mb in (("plain", plain, None), ("meta-free", meta, None),
                                ("meta-update", meta, meta_batch)):
            start = time.perf_counter()
            engine.step(batch, mb)
            if i >= 3:  # warm-up steps are not timed
                times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def tracked_run(task_opts, model_name, model_opts, epochs, tracking, root: Path) -> float:
    recipe = Recipe.model_validate({
        "name": "bench", "task": {"name": "mnist1d", "options": task_opts},
        "model": {"name": model_name, "options": model_opts},
        "train": {"epochs": epochs, "seed": SEED, "device": "cpu", "eval_every": epochs},
        "methods": {"fixed": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                              "lr_policy": {"name": "fixed", "options": {"lr": 0.1}}}},
        "tracking": tracking, "output_dir": str(root / "out"),
    })
    start = time.perf_counter()
    Runner(recipe, progress=False).run()
    return time.perf_counter() - start


def ratios(reg, task, model_name, model_opts, epochs, pairs, root: Path) -> list[float]:
    steps = step_times(reg, task, model_name, model_opts)
    r1 = (steps["meta-update"] - steps["meta-free"]) / steps["plain"]
    r2, r3, r4, r5, r6, extra = [], [], [], [], [], []
    for _ in range(pairs):
        fixed = timed_fit(build(reg, task, model_name, model_opts, "fixed", {"lr": 0.1}, epochs))
        r2.append(timed_fit(build(reg, task, model_name, model_opts, "mlrsnet", PAPER,
                                  epochs)) / fixed)
        r3.append(timed_fit(build(reg, task, model_name, model_opts, "mlrsnet", PAPER,
                                  epochs, meta_train=False)) / fixed)
        r6.append(timed_fit(build(reg, task, model_name, model_opts, "mlrsnet", {},
                                  epochs)) / fixed)
        r4.append(fixed / hand_written_loop(reg, task, model_name, model_opts, epochs))
        off = tracked_run({}, model_name, model_opts, epochs, "none", root)
        on = tracked_run({}, model_name, model_opts, epochs, "mlflow", root)
        r5.append(on / off)
        extra.append(on - off)
    print(f"  step times (ms): plain {steps['plain'] * 1e3:.2f}, MLR-SNet without meta-update "
          f"{steps['meta-free'] * 1e3:.2f}, with {steps['meta-update'] * 1e3:.2f}; "
          f"{task.num_train_batches(128)} steps an epoch, {epochs} epochs, {pairs} pairs; "
          f"tracking adds {statistics.median(extra):.2f} s to a run of "
          f"{off:.1f} s (untracked)")
    return [r1] + [statistics.median(r) for r in (r2, r3, r4, r5, r6)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    reg = get_registry()
    task = reg.get("task", "mnist1d").build()
    task.setup(SEED, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        tracked_run({}, "mlp", {}, 1, "mlflow", root)  # create the store before timing anything
        names = ["meta-update/step", "meta-train/fixed", "meta-test/fixed", "metalr/hand-loop",
                 "tracking on/off", "untuned/fixed"]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {sys.version.split()[0]}")
        print("tiny MLP (100-100), information only:")
        small = ratios(reg, task, "mlp", {}, args.epochs, args.pairs, root)
        print("  " + ", ".join(f"{n} {r:.3f}" for n, r in zip(names, small)))
        print("1D-CNN, 3 layers x 128 channels (targets: <=3, <=1.10, <=1.03, <=1.05, <=1.02; "
              "untuned/fixed: information):")
        big = ratios(reg, task, "cnn1d", {"channels": 128}, args.epochs, args.pairs, root)
        print("  " + ", ".join(names))
        print(" ".join(f"{r:.3f}" for r in big))


if __name__ == "__main__":
    main()
