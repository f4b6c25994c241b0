"""How hard does the one-step hypergradient pull, and is the pull at the right LR the same?

    python bench/hypergradient_bias.py OPTIMIZER [...] [--case CASE] [--factors 0.3 1 3]

The measurement behind docs/design.md, "Where the pull points": a correction of the one-step
objective's short-horizon bias that holds across tasks needs the pull at the LR that whole runs
prefer to be one number. For seeds 0-2 of the case (``bench/cooldown_judge.py``'s cases), fixed
runs at multiples of the probe's LR (the real probe, as ``metalr run`` makes it) with the last
20% cooled down linearly, as the control's; every ``--every`` steps of the stable phase (10% to
80% of the run) the run's own next step, at ``lr (1 +- eps)``, is taken from copies of the
weights and the optimizer state, and

    r = [L_meta(step at lr (1 + eps)) - L_meta(step at lr (1 - eps))] / (2 eps) / L_meta(here)

is the one-step objective's derivative in log LR, relative to the meta loss, on a fresh meta
batch (Algorithm 1's hypergradient, by a central difference, for any optimizer). ``r > 0``: a
smaller LR looks better one step ahead. Printed per multiple: r's mean over the stable phase and
seeds (and its standard error over the seeds), and the final test metric of the run.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
from pathlib import Path

import torch

from metalr.contracts.registry import get_registry

sys.path.insert(0, str(Path(__file__).parent))  # also when imported from its file (the tests)
from cooldown_judge import CASES, OPTIMIZERS, endless, start_run  # the same cases (after the path)

COOLDOWN = 0.2  # the control's: the last 20% linear to 0
CASES = {**CASES,  # and the CPU suites' other models (recipes/cpu/, recipes/transfer/)
         "digits": (("digits", {"meta_size": 200}), ("cnn-digits", {}), 30, 128),
         "cnn1d": (("mnist1d", {"meta_size": 500}), ("cnn1d", {"channels": 32}), 40, 128),
         "pydoc-lm": (("pydoc-lm", {"bptt": 35}),
                      ("lstm-lm", {"emb_size": 64, "hidden_size": 64, "num_layers": 2,
                                   "dropout": 0.2}), 6, 32)}
OPTIMIZERS = {**OPTIMIZERS, "sgd-lm": ("sgd", {"momentum": 0.0, "weight_decay": 5e-6})}


def one_step_r(task, model, opt, lr: float, meta_batch, eps: float) -> float:
    """The relative one-step hypergradient at the current weights, state and gradient."""
    weights, state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    model.eval()
    with torch.no_grad():
        here = float(task.loss(model, meta_batch))
    after = []
    for factor in (1 - eps, 1 + eps):
        model.load_state_dict(weights)
        opt.load_state_dict(copy.deepcopy(state))
        for group in opt.param_groups:
            group["lr"] = lr * factor
        opt.step()  # the gradients stay where backward() left them (clipped, if the run clips)
        with torch.no_grad():
            after.append(float(task.loss(model, meta_batch)))
    model.load_state_dict(weights)
    opt.load_state_dict(state)
    model.train()
    return (after[1] - after[0]) / (2 * eps) / here


def run(task, model, opt, batch: int, seed: int, total: int, lr: float, every: int,
        eps: float) -> tuple[list[float], float]:
    """The run at ``lr`` with the cool-down; r at every ``every``-th stable step."""
    batches = endless(task, batch, seed)
    meta_gen = torch.Generator().manual_seed(seed + 7)
    clip = getattr(task, "clip_grad_norm", None)  # the engine clips where the task says so
    stable = range(round(0.1 * total), round((1 - COOLDOWN) * total))
    n = round(COOLDOWN * total)
    found = []
    model.train()
    for step in range(total):
        left = total - step
        at = lr * min(1.0, left / (n + 1))
        for group in opt.param_groups:
            group["lr"] = at
        opt.zero_grad(set_to_none=True)
        task.loss(model, next(batches)).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if step in stable and step % every == 0:
            found.append(one_step_r(task, model, opt, at, task.meta_batch(batch, meta_gen), eps))
        opt.step()
    model.eval()
    with torch.no_grad():
        metric = task.evaluate(model, "test")[task.metric]
    return found, metric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("optimizers", nargs="+", choices=sorted(OPTIMIZERS))
    parser.add_argument("--case", choices=sorted(CASES), default="mlp")
    parser.add_argument("--factors", type=float, nargs="+", default=[0.3, 1.0, 3.0],
                        help="multiples of the probe's LR")
    parser.add_argument("--every", type=int, default=7, help="steps between two measurements")
    parser.add_argument("--eps", type=float, default=0.1, help="relative LR step of the difference")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    reg = get_registry()
    epochs, batch = CASES[args.case][2:]
    print(f"{args.case}: {epochs} epochs, fixed LR then {COOLDOWN:.0%} cool-down; r = d L_meta / "
          f"d log lr / L_meta one step ahead, stable phase, every {args.every} steps")
    for name in args.optimizers:
        rows: dict[float, tuple[list[float], list[float]]] = {f: ([], []) for f in args.factors}
        starts = []
        for seed in args.seeds:
            for factor in args.factors:
                task, model, opt, start, total = start_run(reg, CASES[args.case],
                                                           OPTIMIZERS[name], seed)
                if factor == args.factors[0]:
                    starts.append(start)
                found, metric = run(task, model, opt, batch, seed, total, factor * start,
                                    args.every, args.eps)
                rows[factor][0].append(statistics.fmean(found))
                rows[factor][1].append(metric)
        print(f"{name}: probe start per seed " + " / ".join(f"{s:.3g}" for s in starts))
        for factor, (rs, metrics) in rows.items():
            finite = all(math.isfinite(r) for r in rs)  # a diverged run has no meta loss
            se = statistics.stdev(rs) / math.sqrt(len(rs)) if finite and len(rs) > 1 else math.nan
            print(f"  x{factor:g}: r {statistics.fmean(rs):+.4f} (se {se:.4f}; per seed "
                  + " / ".join(f"{r:+.4f}" for r in rs) + f")  final test {task.metric} "
                  + " / ".join(f"{m:.4g}" for m in metrics), flush=True)


if __name__ == "__main__":
    main()
