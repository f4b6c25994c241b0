"""What the LR probe sees with Adam at its SGD length and at longer ones (docs/design.md).

    python bench/probe_horizon.py TASK [MULTIPLE ...]     # TASK: digits, mlp, cnn, lm

For seeds 0-2 of the task as the comparison suites build it, runs the probe with Adam at each
multiple of the SGD probe length (default: 1 and 3) and prints the untrained loss, the chosen
start, the best point, the edge and the meta loss at every grid point. This is the measurement
behind ``ADAPTIVE_HORIZON``: after 20 steps Adam's losses are flat over two decades and the best
point moves with the seed; three times longer, it is the LR tuning picks.
"""

from __future__ import annotations

import argparse

import torch

from metalr.contracts.registry import get_registry
from metalr.engine import probe

CASES = {
    "digits": (("digits", {"meta_size": 200}), ("cnn-digits", {}), {}, 128, 30),
    "mlp": (("mnist1d", {"meta_size": 500}), ("mlp", {"hidden": [100, 100]}), {}, 128, 40),
    "cnn": (("mnist1d", {"meta_size": 500}), ("cnn1d", {"channels": 32}), {}, 128, 40),
    "lm": (("pydoc-lm", {"bptt": 35}),
           ("lstm-lm", {"emb_size": 64, "hidden_size": 64, "num_layers": 2, "dropout": 0.2}),
           {"betas": (0.0, 0.999), "weight_decay": 5e-6}, 32, 6),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(CASES))
    parser.add_argument("multiples", nargs="*", type=float, default=[1.0, 3.0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    reg = get_registry()
    (task_name, task_opts), (model_name, model_opts), opt_opts, batch, epochs = CASES[args.task]
    for seed in (0, 1, 2):
        task = reg.get("task", task_name).build(**task_opts)
        task.setup(seed, torch.device("cpu"))
        per_epoch = sum(1 for _ in task.train_batches(batch, torch.Generator().manual_seed(0)))
        total = per_epoch * epochs
        for multiple in args.multiples:
            torch.manual_seed(seed)
            model = reg.get("model", model_name).build(task.spec, **model_opts)
            opt = reg.get("optimizer", "adam").build(model.parameters(), **opt_opts)
            steps = max(1, round(probe.probe_steps(total, per_epoch) * multiple))
            result = probe.probe_lr(
                task, model, opt, total_steps=total, steps_per_epoch=per_epoch,
                batch_size=batch, meta_batch_size=batch, seed=seed,
                clip_grad_norm=getattr(task, "clip_grad_norm", None), steps_per_point=steps)
            grid = ", ".join(f"{lr:.3g}: {loss:.3f}" for lr, loss in result.losses.items())
            print(f"{args.task} seed {seed}, {result.steps_per_point} steps a point: untrained "
                  f"{result.initial_loss:.3f}, start {result.lr:.3g}, best {result.best:.3g}, "
                  f"edge {result.edge:.3g} | {grid}", flush=True)


if __name__ == "__main__":
    main()
