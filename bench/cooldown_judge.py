"""Which side of the probe's LR is a run on? A look part-way in, judged after a short cool-down.

    python bench/cooldown_judge.py OPTIMIZER [...] [--case CASE] [--cooldown 50] [--factors 0.7 1 1.4]

The measurement behind the next step of issues 18 and 19 (docs/design.md, "An objective without
the reward for annealing"): which multiple of the probe's LR is best differs by task and
optimizer (0.7x for SGD momentum on the MNIST-1D suite, 1.4x for plain SGD), and no
hypergradient objective tells them apart. For seeds 0-2 of the case, the run is trained at the
probe's LR (the real probe, as ``metalr run`` makes it) for the first ``--at`` of its steps;
from those weights and that optimizer state, each multiple (0.7, 1, 1.4) then trains
``--steps`` steps and cools down linearly to 0 over ``--cooldown`` steps, and the whole meta
split judges it. With ``--cooldown 0`` the judge is a plain short look, as the recheck's: it
favours small LRs (the short-horizon bias); the cool-down takes the annealing gain out of that
comparison. Compare the printed order with the whole runs of
``recipes/ablations/start-factor-mnist1d.yaml``. ``--case cnn1d`` and ``--case pydoc-lm`` (with
the optimizer ``sgd-lm``, the LM suite's plain SGD) are where twice the probe's LR ends worse
with plain SGD; every step clips gradients as the task asks (the LM: 0.25), as the engine does.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Iterator

import torch

from metalr.contracts.registry import get_registry
from metalr.engine import probe

FACTORS = (0.7, 1.0, 1.4)
CASES = {  # task, model, epochs, batch size
    "mlp": (("mnist1d", {"meta_size": 500}), ("mlp", {"hidden": [100, 100]}), 40, 128),
    "quickstart": (("mnist1d", {"meta_size": 500}), ("mlp", {"hidden": [100, 100]}), 60, 128),
    "regression": (("regression", {}), ("mlp", {"hidden": [64, 64]}), 60, 64),
    # the hard suite's (recipes/hard/noisy-labels.yaml, shifted.yaml)
    "noisy-labels": (("noisy-labels", {"base": "mnist1d", "noise": 0.3}),
                     ("mlp", {"hidden": [256, 256]}), 60, 128),
    "shifted": (("shifted", {"base": "mnist1d", "shift": "imbalance", "imbalance": 20.0}),
                ("mlp", {"hidden": [256, 256]}), 60, 128),
    # the suites' 1D CNN (recipes/transfer/mnist1d-cnn.yaml) and word-level LM
    # (recipes/cpu/pydoc-lm.yaml; with --case pydoc-lm use the optimizer sgd-lm)
    "cnn1d": (("mnist1d", {"meta_size": 500}), ("cnn1d", {"channels": 32}), 40, 128),
    "pydoc-lm": (("pydoc-lm", {"bptt": 35}), ("lstm-lm", {"emb_size": 64, "hidden_size": 64,
                                                        "num_layers": 2, "dropout": 0.2}), 6, 32),
}
OPTIMIZERS = {"sgdm": ("sgd", {"momentum": 0.9, "weight_decay": 5e-4}),
              "sgd": ("sgd", {"momentum": 0.0, "weight_decay": 5e-4}), "adam": ("adam", {}),
              "sgd-lm": ("sgd", {"momentum": 0.0, "weight_decay": 5e-6})}


def endless(task, batch: int, seed: int) -> Iterator:
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from task.train_batches(batch, gen)


def train(task, model, opt, batches: Iterator, steps: int, lr_at: Callable[[int], float]) -> None:
    """``steps`` steps at ``lr_at(step)``, with the task's gradient clipping as the engine's."""
    model.train()
    clip = getattr(task, "clip_grad_norm", None)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        task.loss(model, next(batches)).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()


def start_run(reg, case: tuple, optimizer: tuple[str, dict], seed: int):
    """``(task, model, opt, start, total)``: a case's task, model and optimizer for ``seed``, as
    ``metalr run`` builds them, and the probe's start LR (with the task's gradient clipping);
    ``optimizer``: its registry name and options, as in ``OPTIMIZERS``."""
    (task_name, task_opts), (model_name, model_opts), epochs, batch = case
    opt_name, opt_opts = optimizer
    task = reg.get("task", task_name).build(**task_opts)
    task.setup(seed, torch.device("cpu"))
    per_epoch = task.num_train_batches(batch)
    total = per_epoch * epochs
    torch.manual_seed(seed)
    model = reg.get("model", model_name).build(task.spec, **model_opts)
    opt = reg.get("optimizer", opt_name).build(model.parameters(), **opt_opts)
    start = probe.probe_lr(task, model, opt, total_steps=total, steps_per_epoch=per_epoch,
                           batch_size=batch, meta_batch_size=batch, seed=seed,
                           clip_grad_norm=getattr(task, "clip_grad_norm", None)).lr
    return task, model, opt, start, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("optimizers", nargs="+", choices=sorted(OPTIMIZERS))
    parser.add_argument("--case", choices=sorted(CASES), default="mlp")
    parser.add_argument("--at", type=float, default=0.1, help="share of the run before the look")
    parser.add_argument("--steps", type=int, default=150, help="steps at each multiple")
    parser.add_argument("--cooldown", type=int, default=50, help="steps of the linear cool-down")
    parser.add_argument("--factors", type=float, nargs="+", default=list(FACTORS),
                        help="multiples of the probe's LR to compare")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reg = get_registry()
    epochs, batch = CASES[args.case][2:]
    print(f"{args.case}: {epochs} epochs; look at {args.at:.0%} of the run, {args.steps} steps "
          f"at each multiple, then {args.cooldown} steps of cool-down; meta loss (metric)")
    for name in args.optimizers:
        for seed in (0, 1, 2):
            task, model, opt, start, total = start_run(reg, CASES[args.case], OPTIMIZERS[name],
                                                       seed)
            train(task, model, opt, endless(task, batch, seed), round(args.at * total),
                  lambda _, lr=start: lr)
            weights, state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
            cells = []
            for factor in args.factors:
                model.load_state_dict(weights)
                opt.load_state_dict(copy.deepcopy(state))
                look = endless(task, batch, 1000 + seed)  # the same batches for every multiple
                lr = factor * start
                train(task, model, opt, look, args.steps, lambda _, lr=lr: lr)
                n = args.cooldown
                train(task, model, opt, look, n, lambda s, lr=lr, n=n: lr * (n - s) / (n + 1))
                model.eval()
                with torch.no_grad():
                    found = task.evaluate(model, "meta")
                cells.append(f"x{factor}: {found['loss']:.4f} ({found[task.metric]:.3f})")
            print(f"{name} seed {seed}, probe {start:.3g}: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
