"""What meta-learning and the toolkit cost, as ratios resolved against their targets.

    python bench/overhead.py [--pairs 30] [--steps 10] [--epochs 4] [--run-pairs 6] [--threads 1]
    python bench/overhead.py --quick      # a look in a few minutes, not a measurement

Why it is built this way: on a shared 2-core machine, two runs of whole trainings an hour apart
disagreed by up to 25% on one ratio. So every ratio is a sample over many *pairs*: the two sides
run back to back (their order rotating from pair to pair, so drift and order effects hit both
sides alike), and each pair gives one ratio. Two clocks: wall time, and the CPU time of the
process (getrusage, self + waited-for children), which other jobs on the machine do not
inflate the way they inflate wall time (with one torch thread it is close to the work done;
with several it also counts threads spinning at a barrier). Each ratio is printed per clock as
``median [lo, hi]`` over the pairs, [lo, hi] a distribution-free 95% interval of the median
(order statistics, the sign test: ranks 10 and 21 of 30 pairs, min and max of 6), with its
verdict: PASS when hi <= target, FAIL when lo > target, UNRESOLVED when the interval straddles
the target (more pairs, or a quieter machine). The interval is the median's, not the spread of
single pairs: it narrows as pairs are added, which is what lets a noisy machine resolve 2%.
``torch.set_num_threads`` is pinned (``--threads``, default 1) and printed. Freed memory is kept
for reuse (:func:`metalr.engine.device.keep_freed_memory`), as ``metalr run`` does on the CPU by
default; ``--system-malloc`` measures glibc's default instead (the runs of ratios 2-6 go through
the runner, which keeps freed memory unless the recipe says ``train.keep_freed_memory: false``).

Ratios, for the 1D-CNN on MNIST-1D widened to 128 channels (targets) and the tiny MLP 100-100
(per-step Python overhead dominates; information only):

1. a training step with a meta-update / a plain (fixed-LR) step, <= 2.1 (the floor is about 2:
   one more forward and backward, on the meta batch). Timed on the steps themselves: blocks of
   ``--steps`` calls of ``engine.step(batch, meta_batch)``, ``engine.step(batch)`` of the same
   MLR-SNet engine (printed as "no meta-update / plain", information), and of a fixed-LR
   engine, after warm-up, the same batches in every block: one pair is one block of each.
2. meta-train / fixed-LR training (T_val twice per epoch), <= 1.10
3. meta-test (frozen MLR-SNet) / fixed-LR training, <= 1.03
4. metalr fixed-LR run / a hand-written PyTorch loop doing the same work, <= 1.05
5. tracking on (MLflow, temporary store) / tracking off, whole `metalr run` of one method, <= 1.02
6. MLR-SNet with default options (LR probe of the run, cool-down) / fixed-LR training:
   information (the probe is a fixed share of steps per grid point, so the shorter the run the
   larger its share: see docs/design.md)

Ratios 1-3 use the paper's settings with gamma 0.5 (no probe). Ratios 2-6 time whole runs of
``--epochs`` epochs, one round of all seven runs per pair.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

from metalr.contracts.protocols import RunInfo
from metalr.contracts.registry import get_registry
from metalr.engine.algorithm import Engine, EngineConfig
from metalr.engine.device import keep_freed_memory
from metalr.recipes.schema import Recipe
from metalr.running.runner import Runner

SEED = 0
KEEP_FREED_MEMORY = [True]  # --system-malloc: False, for the runs that go through the runner
BATCH = 128
PAPER = {"preset": "paper", "gamma": 0.5}
MODELS = {"tiny MLP (100-100)": ("mlp", {}), "1D-CNN, 3 layers x 128 channels": (
    "cnn1d", {"channels": 128})}
# name, target (None: information)
RATIOS = [("meta-update step/plain step", 2.1), ("no meta-update/plain step", None),
          ("meta-train/fixed", 1.10), ("meta-test/fixed", 1.03), ("metalr/hand-loop", 1.05),
          ("tracking on/off", 1.02), ("untuned/fixed", None)]


def clocks() -> tuple[float, float]:
    """Wall time and CPU time (this process and its waited-for children), in seconds."""
    own, kids = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
    return time.perf_counter(), own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(work: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = clocks()
    work()
    wall2, cpu2 = clocks()
    return wall2 - wall, cpu2 - cpu


def build(reg, task, model_name, model_opts, policy_name, policy_opts, epochs, meta_train=True):
    torch.manual_seed(SEED)
    model = reg.get("model", model_name).build(task.spec, **model_opts)
    opt = reg.get("optimizer", "sgd").build(model.parameters(), momentum=0.9, weight_decay=5e-4)
    policy = reg.get("lr_policy", policy_name).build(**policy_opts)
    cfg = EngineConfig(epochs=epochs, seed=SEED, meta_train=meta_train, eval_every=epochs)
    return Engine(task, model, opt, policy, cfg)


def hand_written_loop(reg, task, model_name, model_opts, epochs) -> None:
    """The same work as a metalr fixed-LR run, written the way one would by hand."""
    torch.manual_seed(SEED)
    model = reg.get("model", model_name).build(task.spec, **model_opts)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = task.splits["train"]
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(BATCH):
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


def tracked_run(model_name, model_opts, epochs, tracking, root: Path) -> None:
    recipe = Recipe.model_validate({
        "name": "bench", "task": {"name": "mnist1d"},
        "model": {"name": model_name, "options": model_opts},
        "train": {"epochs": epochs, "seed": SEED, "device": "cpu", "eval_every": epochs,
                  "keep_freed_memory": KEEP_FREED_MEMORY[0]},
        "methods": {"fixed": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                              "lr_policy": {"name": "fixed", "options": {"lr": 0.1}}}},
        "tracking": tracking, "output_dir": str(root / "out"),
    })
    with contextlib.redirect_stdout(io.StringIO()):  # the runner's summary line
        Runner(recipe, progress=False).run()


def step_pairs(reg, task, model_name, model_opts, pairs: int, block: int) -> dict:
    """Per pair, the time of a block of steps of each kind over the plain block's (ratio 1)."""
    gen = torch.Generator().manual_seed(SEED)
    x, y = task.splits["train"]
    batches = []
    for _ in range(block):
        idx = torch.randint(len(y), (BATCH,), generator=gen)
        batches.append(((x[idx], y[idx]), task.meta_batch(BATCH, gen)))
    plain = build(reg, task, model_name, model_opts, "fixed", {"lr": 0.1}, 1)
    meta = build(reg, task, model_name, model_opts, "mlrsnet", PAPER, 1)
    for e in (plain, meta):
        e.policy.start(RunInfo(1, 1, e.optimizer, torch.device("cpu"), SEED, task))
        e.model.train()
    kinds = {"plain": lambda: [plain.step(b) for b, _ in batches],
             "no meta-update": lambda: [meta.step(b) for b, _ in batches],
             "meta-update": lambda: [meta.step(b, mb) for b, mb in batches]}
    for work in kinds.values():  # warm-up: allocator, kernels, lazy imports
        work()
    names = list(kinds)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for i in range(pairs):
        for k in names[i % 3:] + names[:i % 3]:
            times[k].append(timed(kinds[k]))
    out = {"meta-update step/plain step": [], "no meta-update/plain step": []}
    for i in range(pairs):
        base = times["plain"][i]
        for key, kind in (("meta-update step/plain step", "meta-update"),
                          ("no meta-update/plain step", "no meta-update")):
            out[key].append(tuple(t / b for t, b in zip(times[kind][i], base)))
    ms = {k: statistics.median(w for w, _ in v) / block * 1e3 for k, v in times.items()}
    return out, ms


def run_pairs(reg, task, model_name, model_opts, epochs: int, pairs: int, root: Path) -> dict:
    """Per pair, one round of seven whole runs in a rotating order (ratios 2-6)."""
    def fit(policy, opts, meta_train=True):
        return lambda: build(reg, task, model_name, model_opts, policy, opts, epochs,
                             meta_train).fit()

    runs = {
        "fixed": fit("fixed", {"lr": 0.1}),
        "meta-train": fit("mlrsnet", PAPER),
        "meta-test": fit("mlrsnet", PAPER, meta_train=False),
        "untuned": fit("mlrsnet", {}),
        "hand-loop": lambda: hand_written_loop(reg, task, model_name, model_opts, epochs),
        "tracking off": lambda: tracked_run(model_name, model_opts, epochs, "none", root),
        "tracking on": lambda: tracked_run(model_name, model_opts, epochs, "mlflow", root),
    }
    names = list(runs)
    ratio_of = {"meta-train/fixed": ("meta-train", "fixed"),
                "meta-test/fixed": ("meta-test", "fixed"),
                "metalr/hand-loop": ("fixed", "hand-loop"),
                "tracking on/off": ("tracking on", "tracking off"),
                "untuned/fixed": ("untuned", "fixed")}
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in ratio_of}
    seconds: dict[str, list[float]] = {k: [] for k in names}
    for i in range(pairs):
        shift = i % len(names)
        t = {k: timed(runs[k]) for k in names[shift:] + names[:shift]}
        for key, (a, b) in ratio_of.items():
            out[key].append((t[a][0] / t[b][0], t[a][1] / t[b][1]))
        for k in names:
            seconds[k].append(t[k][0])
    return out, {k: statistics.median(v) for k, v in seconds.items()}


def median_interval(samples: list[float]) -> tuple[float, float, float]:
    """The median and a distribution-free 95% interval for it: the order statistics k and
    n+1-k with P(Binomial(n, 1/2) < k) <= 2.5% (the sign test; min and max below 6 samples)."""
    xs, n = sorted(samples), len(samples)
    k = 1
    while k < n - k and sum(math.comb(n, i) for i in range(k + 1)) / 2**n <= 0.025:
        k += 1
    return statistics.median(xs), xs[k - 1], xs[n - k]


def verdict(lo: float, hi: float, target: float | None) -> str:
    if target is None:
        return "info"
    return "PASS" if hi <= target else "FAIL" if lo > target else "UNRESOLVED"


def report(title: str, ratios: dict[str, list[tuple[float, float]]], pairs: dict[str, int],
           targeted: bool) -> dict[str, float]:
    print(title)
    print(f"  {'ratio':30} {'target':>7} {'pairs':>5}   {'wall: median [95% interval]':32}"
          "CPU: median [95% interval]")
    out = {}
    for name, target in RATIOS:
        target = target if targeted else None
        cells = []
        for clock, column in (("wall", 0), ("cpu", 1)):
            med, lo, hi = median_interval([s[column] for s in ratios[name]])
            out[f"{name} {clock}"] = med
            cells.append(f"{med:.3f} [{lo:.3f}, {hi:.3f}] {verdict(lo, hi, target):10}")
        shown = f"<= {target:.2f}" if target is not None else "-"
        print(f"  {name:30} {shown:>7} {pairs[name]:>5}   {cells[0]:32}{cells[1]}".rstrip())
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=30, help="pairs of step blocks (ratio 1)")
    parser.add_argument("--steps", type=int, default=10, help="steps in a block (ratio 1)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of a whole run (2-6)")
    parser.add_argument("--run-pairs", type=int, default=6, help="rounds of whole runs (2-6)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--system-malloc", action="store_true",
                        help="glibc's default allocator settings instead of keeping freed memory")
    parser.add_argument("--quick", action="store_true",
                        help="a look, not a measurement: 5 pairs of 5 steps, 3 rounds of 2 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.steps, args.epochs, args.run_pairs = 5, 5, 2, 3
    torch.set_num_threads(args.threads)
    KEEP_FREED_MEMORY[0] = not args.system_malloc
    kept = False if args.system_malloc else keep_freed_memory()
    warnings.simplefilter("ignore")
    reg = get_registry()
    task = reg.get("task", "mnist1d").build()
    task.setup(SEED, torch.device("cpu"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (pinned), python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, freed memory "
          f"{'kept' if kept else 'returned (glibc default)'}, load average "
          f"{os.getloadavg()[0]:.2f}; {args.pairs} pairs of {args.steps}-step blocks; "
          f"{args.run_pairs} rounds of {args.epochs}-epoch runs, "
          f"{task.num_train_batches(BATCH)} steps an epoch")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        tracked_run("mlp", {}, 1, "mlflow", root)  # create the store before timing anything
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its per-run INFO lines
        for index, (title, (model_name, model_opts)) in enumerate(MODELS.items()):
            targeted = index == len(MODELS) - 1
            steps, ms = step_pairs(reg, task, model_name, model_opts, args.pairs, args.steps)
            runs, seconds = run_pairs(reg, task, model_name, model_opts, args.epochs,
                                      args.run_pairs, root)
            counts = {name: args.pairs if name in steps else args.run_pairs for name, _ in RATIOS}
            note = "targets" if targeted else "information only"
            results[title] = report(f"{title} ({note}):", steps | runs, counts, targeted)
            print(f"  step (ms, median wall): plain {ms['plain']:.2f}, MLR-SNet without "
                  f"meta-update {ms['no meta-update']:.2f}, with {ms['meta-update']:.2f}; "
                  "run (s, median wall): " + ", ".join(f"{k} {v:.2f}"
                                                       for k, v in seconds.items()))
    return results


if __name__ == "__main__":
    main()
