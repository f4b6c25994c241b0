"""The LR scale of a run, measured on the run itself before it starts.

A learned schedule outputs an LR in ``[0, gamma]``; what gamma should be depends on the model,
the optimizer and the data, and no single constant fits them all (gamma 1, the paper's, leaves a
momentum CNN at chance and makes Adam diverge at step 1). The probe answers "which LR is right
here?" the way a practitioner's LR sweep does, at a fraction of the cost: from the run's own
initial weights and on its own first batches, a few steps of fixed-LR training for each point of
a log grid, each judged by the loss on fixed meta batches (never the test split). Coarse decades first, then the two
half-decades around the best; a best value at the edge of the grid extends the grid once; a
best value with no headroom above it (see ``HEADROOM``) is backed off by half a decade.

Known limits (docs/design.md): training that starts on a long plateau makes every point look the
same, and noisy labels make the short-horizon winner too large for a long run.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from metalr.protocols import Batch, Task


HEADROOM = math.sqrt(10)
"""How far above the chosen LR training must still work. The point that wins a few steps is
often at the edge of stability (on a quadratic the best LR, 1/h, is half the divergent one, 2/h),
and a long run's LR does not stay put: the net's output moves, curvature grows as training goes
on. So the winner is kept only if ``HEADROOM`` times it still keeps at least half the winner's
improvement over the untrained loss; otherwise the probe backs off by that factor. Seen here:
the MLP on MNIST-1D, momentum 0.9, one seed's probe preferred 1.0 over 0.316 by 2%; started at
1.0, the run sat at chance for 40 epochs."""


@dataclass
class ProbeResult:
    """What the probe chose and every point measured (``losses[lr]``: mean meta loss after it)."""

    lr: float
    losses: dict[float, float] = field(default_factory=dict)
    steps_per_point: int = 0
    at_edge: bool = False
    best: float = 0.0  # the point with the lowest loss; ``lr`` is it or HEADROOM below it
    initial_loss: float = math.nan  # the meta loss of the untrained model

    @property
    def backed_off(self) -> bool:
        return self.lr < self.best



def is_adaptive(optimizer: torch.optim.Optimizer) -> bool:
    """Adam-like optimizers normalise the step, so their LR is the step length itself."""
    return "betas" in optimizer.defaults


def decade_grid(optimizer: torch.optim.Optimizer) -> list[float]:
    """Decades to try first, by optimizer family.

    Adam-like: 1e-5 .. 1e-1. SGD: an *effective* step of 1e-3 .. 1e2, divided by ``1/(1 - mu)``,
    the factor by which momentum ``mu`` lengthens the step, so that plain SGD, momentum and
    Nesterov are searched over the same effective steps.
    """
    if is_adaptive(optimizer):
        return [10.0 ** e for e in range(-5, 0)]
    momentum = float(optimizer.defaults.get("momentum", 0.0) or 0.0)
    return [10.0 ** e * (1.0 - momentum) for e in range(-3, 3)]


def probe_steps(total_steps: int, steps_per_epoch: int) -> int:
    """Steps per grid point: 2% of the run, at least 20, at most one epoch (or 20), at most the
    run. Ten steps were too few on the language model: LR 32 won there and 100 still looked
    fine, where 20 steps show 100 diverging and the probe backs off to 10 (the tuned LR is 20)."""
    return max(1, min(total_steps, max(20, steps_per_epoch), max(20, round(0.02 * total_steps))))


def probe_lr(
    task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, *,
    total_steps: int, steps_per_epoch: int, batch_size: int, meta_batch_size: int, seed: int,
    clip_grad_norm: float | None = None, grid: Sequence[float] | None = None,
    meta_batches: int = 2,
) -> ProbeResult:
    """Measure the best fixed LR of a short run from the model's current weights.

    The model's weights and buffers, the optimizer's state and torch's global RNG are restored
    afterwards, so the run that follows starts exactly where it would have without the probe.
    """
    steps = probe_steps(total_steps, steps_per_epoch)
    weights = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    meta_gen = torch.Generator().manual_seed(seed + 7919)
    judge = [task.meta_batch(meta_batch_size, meta_gen) for _ in range(meta_batches)]
    losses: dict[float, float] = {}
    initial = _judge(task, model, judge)

    def run(lr: float) -> float:
        known = _nearest(losses, lr)
        if known is not None:
            return known
        model.load_state_dict(weights)
        torch.set_rng_state(rng)
        opt = type(optimizer)(model.parameters(), **{**optimizer.defaults, "lr": lr})
        losses[lr] = _train_and_judge(task, model, opt, steps, batch_size, seed, judge,
                                      clip_grad_norm)
        return losses[lr]

    try:
        coarse = sorted(grid) if grid is not None else decade_grid(optimizer)
        for lr in coarse:
            run(lr)
        best = min(coarse, key=lambda v: losses[v])
        at_edge = best in (coarse[0], coarse[-1])
        if grid is None and at_edge:  # extend once past the edge it sits on
            ext = best / 10 if best == coarse[0] else best * 10
            run(ext)
            if losses[ext] < losses[best]:
                best = ext
            else:
                at_edge = False
        if grid is None:  # half-decades around the best
            for lr in (best / math.sqrt(10), best * math.sqrt(10)):
                run(lr)
            best = min(losses, key=losses.__getitem__)
        chosen = best
        if math.isfinite(losses[best]):  # headroom: see HEADROOM
            up = run(best * HEADROOM) if grid is None else _nearest(losses, best * HEADROOM)
            if up is not None and not up <= initial - 0.5 * (initial - losses[best]):
                chosen = best / HEADROOM
                if grid is None:
                    run(chosen)
                elif _nearest(losses, chosen) is None:
                    chosen = best  # a given grid has nothing below: keep its best
    finally:
        model.load_state_dict(weights)
        torch.set_rng_state(rng)
    if not math.isfinite(losses[best]):
        raise FloatingPointError(
            "every LR of the probe diverged; set the scale by hand (lr_policy option gamma)")
    return ProbeResult(chosen, dict(sorted(losses.items())), steps, at_edge, best, initial)


def _nearest(losses: dict[float, float], lr: float) -> float | None:
    """The loss measured at ``lr`` (to rounding), or None."""
    for key, value in losses.items():
        if math.isclose(key, lr, rel_tol=1e-6):
            return value
    return None


def _judge(task: Task, model: nn.Module, judge: list[Batch]) -> float:
    """Mean loss on the fixed meta batches, in eval mode (no dropout noise in the verdict)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        value = sum(float(task.loss(model, b)) for b in judge) / len(judge)
    model.train(was_training)
    return value if math.isfinite(value) else math.inf


def _train_and_judge(task: Task, model: nn.Module, opt: torch.optim.Optimizer, steps: int,
                     batch_size: int, seed: int, judge: list[Batch],
                     clip_grad_norm: float | None) -> float:
    # the batches the run itself will start with (the engine shuffles with this seed), so a point
    # that would wreck the run's first steps is seen to wreck them here
    generator = torch.Generator().manual_seed(seed)
    model.train()
    done, first = 0, None
    while done < steps:
        for batch in task.train_batches(batch_size, generator):
            opt.zero_grad(set_to_none=True)
            loss = task.loss(model, batch)
            value = float(loss.detach())
            first = value if first is None else first
            if not math.isfinite(value) or value > 1e3 * max(first, 1e-12):
                return math.inf
            loss.backward()
            if clip_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            opt.step()
            done += 1
            if done == steps:
                break
    return _judge(task, model, judge)


ProbeFn = Callable[[], ProbeResult]
"""What :class:`metalr.protocols.RunInfo` hands a policy: measure (once) and return the probe."""
