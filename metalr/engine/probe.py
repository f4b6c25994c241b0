"""The LR scale of a run, measured on the run itself before it starts.

A learned schedule outputs an LR in ``[0, gamma]``, and no single gamma fits every model,
optimizer and data set. The probe asks what a practitioner's LR sweep asks, at a fraction of the
cost: from the run's own initial weights, on its own first batches and data order, a few steps
of fixed-LR training for each point of a log grid (decades, then half-decades around the best;
a best point at the grid's edge extends it once), each judged by the loss on fixed meta batches,
never the test split.

Which point to start from: a few steps measure well where training stops working, not which
LR ends best, so for SGD the run starts at **half the edge** (the largest LR that keeps half of
the best point's improvement, counted from what a constant output reaches once the best point
passed it: a regression's first fall is mostly its offset, which LRs that kill the net fit
too). Adam-like optimizers do not blow up within a few steps at too large an LR, they degrade
later; they get a probe three times as long and start at its **best**
point among those whose training loss never **jumped** (rose ``JUMP`` above its first value and
stayed up the next step: the sign MLR-SNet's brake cuts a run's LR on, so a start there would
be cut in its first steps). A probe that sees no signal (a loss plateau: every point moves less
than the probe's own noise) says so, tries once more with a longer horizon when affordable, and
otherwise starts at half the largest LR that did no harm. What each rule was measured on, and
its known limits (noisy labels), is in docs/design.md, "Learned schedules that work untuned".
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from metalr.contracts.protocols import Batch, Task
from metalr.engine.data import loss_output
from metalr.engine.device import rng_aside
from metalr.engine.order import DataOrder

HALF_DECADE = math.sqrt(10)
QUARTER_DECADE = 10 ** 0.25
ADAPTIVE_HORIZON = 3  # Adam-like optimizers: probe steps per point, times the SGD count
SIGNAL_NOISE = 1.0  # a signal beats the noise (one replicate's movement) ...
SIGNAL_FLOOR = 0.05  # ... and improves on the untrained loss by this fraction of it
LONGER = 4  # no signal: the grid once more with this many times the steps, ...
BUDGET = 0.25  # ... if the probe's steps then stay within this share of the run's
REPLICATE = 1_000_003  # the data order of the noise replicate: seed + this
CONSTANT_ORDER = 3_000_017  # the meta batches the best constant output is fitted on: seed + this
DROPOUT = 104729  # a point's dropout draws: the global generator seeded with its order's + this
JUMP = 0.1  # a training loss this fraction above its first value, still up the next step: the
# jump MLR-SNet's brake cuts (both read jump_step); an Adam-like start never jumped. At least
# this fraction: the probe raises it to what batch noise alone reaches (jump_tolerance)
PLATEAU = 0.1  # on a loss plateau an LR does no harm while its loss stays within this fraction
# of the loss before it (the jump MLR-SNet's brake cuts): larger steps wobble a flat loss


@dataclass
class ProbeResult:
    """What the probe measured (``losses[lr]``: mean meta loss after it) and chose.

    ``best`` had the lowest loss; ``edge`` is the largest LR found that still keeps half of
    ``best``'s improvement over the untrained loss, or over ``constant_loss`` where that is
    ``SIGNAL_FLOOR`` below the untrained loss and ``best`` passed it by as much
    (``constant_mark``; for SGD climbing half-decades up from the best, then one
    quarter-decade; for Adam-like optimizers among the points measured); ``lr``
    is where the run starts: ``edge / 2`` for SGD, for Adam-like optimizers the best of the
    longer probe's points whose training loss did not jump (``jumped``; why: the module
    docstring).
    """

    lr: float
    losses: dict[float, float] = field(default_factory=dict)
    steps_per_point: int = 0
    at_edge: bool = False
    best: float = 0.0
    edge: float = 0.0
    initial_loss: float = math.nan  # the meta loss of the untrained model
    constant_loss: float = math.inf  # the best constant output's (:func:`constant_loss`; SGD only)
    constant_mark: bool = False  # the start's edge was measured from ``constant_loss``
    steps: int = 0  # training steps the probe took, all points together
    seconds: float = 0.0  # its wall time (part of the run's: History.wall_time includes it)
    signal: bool = True  # False: no point beat the untrained model beyond the noise
    noise: float = 0.0  # how far the best point's loss moved with another data order
    jumped: list[float] = field(default_factory=list)  # LRs whose training loss jumped (JUMP)
    jump: float = JUMP  # the rise that counts as a jump here (:func:`jump_tolerance`)
    restart: bool = False  # a recheck found the net dead: the run restarts from its first weights
    died: list[float] = field(default_factory=list)  # LRs after whose steps the net was dead


    @property
    def ceiling(self) -> float:
        """Twice the start (a probed policy's gamma): about where training from the initial
        weights stopped working; a recheck moves a run's LR no higher."""
        return 2 * self.lr


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
    fine, where 20 steps show 100 diverging (the tuned LR is 20)."""
    return max(1, min(total_steps, max(20, steps_per_epoch), max(20, round(0.02 * total_steps))))


def probe_lr(
    task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, *,
    total_steps: int, steps_per_epoch: int, batch_size: int, meta_batch_size: int, seed: int,
    clip_grad_norm: float | None = None, grid: Sequence[float] | None = None,
    meta_batches: int = 2, steps_per_point: int | None = None,
) -> ProbeResult:
    """Probe fixed LRs for a few steps from the model's current weights; choose the start LR.

    The model's weights and buffers, the optimizer's state and torch's global RNGs are restored
    afterwards, so the run that follows starts exactly where it would have without the probe.
    Each point draws its dropout from the global generator seeded with ``seed``, not from where
    the global generator happens to stand: what was built before the probe (a policy's own
    initialisation, e.g. the cell of an MLR-SNet) does not change the LR it chooses.
    ``steps_per_point`` overrides the length rule (``probe_steps``, times ``ADAPTIVE_HORIZON``
    for Adam-like optimizers) and turns the longer pass off; ``bench/probe_horizon.py`` uses it.

    When the best point is no better than the untrained model by more than the probe's own noise
    (:func:`has_signal`), nothing was measured: the grid runs once more with ``LONGER`` times the
    steps if that fits ``BUDGET``, and if there is still no signal the run starts at half the
    largest LR that did no harm on the plateau (:func:`_plateau_edge`; ``ProbeResult.signal``
    False; docs/design.md).

    An Adam-like optimizer starts at the best point whose training loss did not jump on the way
    (:func:`_calm_best`); the points that did are in ``ProbeResult.jumped``.
    """
    began = time.perf_counter()
    adaptive = is_adaptive(optimizer)
    steps = steps_per_point or probe_steps(total_steps, steps_per_epoch)
    if adaptive and steps_per_point is None:
        steps = min(total_steps, ADAPTIVE_HORIZON * steps)
    weights = copy.deepcopy(model.state_dict())
    order = DataOrder(seed)
    judge_gen = order.judge_generator()
    judge = [task.meta_batch(meta_batch_size, judge_gen) for _ in range(meta_batches)]
    initial = judge_loss(task, model, judge)
    constant = math.inf  # only the SGD edge reads it
    if not adaptive:
        fit_gen = DataOrder(seed + CONSTANT_ORDER).judge_generator()
        constant = constant_loss(task, model, [task.meta_batch(meta_batch_size, fit_gen)
                                               for _ in range(meta_batches)], judge)
    spent = 0  # training steps taken, all passes together
    jumped: set[float] = set()  # points of the last pass whose training loss jumped
    killed: set[float] = set()  # points whose net was dead after their steps (:func:`died`)
    jump = JUMP

    def measure(lr: float, horizon: int, data: DataOrder = order) -> float:
        nonlocal spent
        model.load_state_dict(weights)
        torch.manual_seed(data.seed + DROPOUT)  # the same dropout draws for every point and policy
        opt = fresh_optimizer(optimizer, model.parameters(), lr)
        spent += horizon
        loss, up = train_and_judge(task, model, opt, horizon, batch_size, data, judge,
                                    clip_grad_norm, jump)
        if up and data is order:  # the noise replicate's draws decide nothing here
            jumped.add(lr)
        if died(list(model.parameters())):
            killed.add(lr)
        return loss

    with rng_aside(model):  # every device's, given back
        try:
            torch.manual_seed(order.seed + DROPOUT)
            jump = jump_tolerance(_batch_losses(task, model, steps, batch_size, order))
            found = _search(lambda lr: measure(lr, steps), optimizer, grid, initial,
                            constant=constant)
            replicate = order.replicate(REPLICATE, task, batch_size, skip=steps)
            noise = _noise(found, lambda lr: measure(lr, steps, replicate))
            signal = has_signal(initial, found.losses[found.best], noise)
            passes = [found]
            harmless = found.harmless(initial, noise, PLATEAU)
            again = [lr for lr in harmless if lr >= max(harmless) / 100]  # the top two decades
            longer = LONGER * steps
            if (not signal and steps_per_point is None
                    and spent + longer * len(again) <= BUDGET * total_steps):
                steps = longer
                jumped.clear()  # the longer pass's verdicts are the ones that count
                found = _search(lambda lr: measure(lr, steps), optimizer, again, initial,
                                climb=False, constant=constant)
                passes.append(found)
                signal = has_signal(initial, found.losses[found.best], noise)
        finally:
            model.load_state_dict(weights)
    if not math.isfinite(found.losses[found.best]):
        raise FloatingPointError(
            "every LR of the probe diverged; set the scale by hand (lr_policy option gamma)")
    if not signal:  # nothing measured: half the largest LR that did not lift the plateau
        start = _plateau_edge(passes, initial, noise, killed) / 2
    else:
        start = _calm_best(found, jumped) if adaptive else found.edge / 2
    return ProbeResult(start, dict(sorted(found.losses.items())), steps, found.at_edge,
                       found.best, found.edge, initial, steps=spent,
                       seconds=time.perf_counter() - began, signal=signal, noise=noise,
                       jumped=sorted(jumped), jump=jump, constant_loss=constant,
                       constant_mark=signal and found.constant_mark, died=sorted(killed))


def _plateau_edge(passes: Sequence[_Found], initial: float, noise: float,
                  killed: set[float] = frozenset()) -> float:
    """The largest LR that did no harm on a loss plateau in every pass that measured it: its
    loss within ``PLATEAU`` of the untrained loss (or the noise). A few percent is what larger
    steps do to a flat loss before they find a way off it (a GRU on its plateau: +1.7-2% at LR
    1, the LR that escapes; 60x at 10), so the 1% of :meth:`_Found.harmless` is too strict.
    It reaches at most a decade past the 1% edge: a dead net's plateau is flat at any LR (the
    deep plain MLP's loss at LR 10 is 4-8% above the untrained one), and a start of 5 there
    says more than the probe measured. A point whose net died (``killed``) did harm, however
    flat its loss: dead ReLUs sit at the prior's loss."""
    strict = max(passes[0].harmless(initial, noise))
    fine = {lr for lr in passes[0].harmless(initial, noise, PLATEAU) if lr <= 10.001 * strict}
    fine -= killed
    for longer in passes[1:]:  # measured again with more steps: that verdict counts
        fine -= set(longer.losses) - set(longer.harmless(initial, noise, PLATEAU))
    if fine:
        return max(fine)
    alive = [lr for lr in passes[-1].harmless(initial, noise) if lr not in killed]
    return max(alive) if alive else min(passes[-1].losses)


def jump_step(first: float, up: bool, loss: float, jump: float = JUMP) -> tuple[bool, bool]:
    """One step of the jump rule that MLR-SNet's brake cuts on and an Adam-like start avoids:
    ``(held, up)``. ``up``: ``loss`` is more than ``jump`` (a fraction of it) above the ``first``
    loss; ``held``: the step before was up and ``loss`` is still above ``first``. A one-step
    spike (a language model at a good LR: 8.9 -> 15.5 -> 7.9 at LR 28) is not held."""
    return up and not loss <= first, not loss <= first + jump * abs(first)


def jump_tolerance(losses: Sequence[float]) -> float:
    """The rise over the first batch's loss that counts as a jump: ``JUMP``, or more where the
    untrained model's own losses on the run's first batches (``losses``, no step taken) already
    rise that far over the first, by batch noise alone. A regression on raw targets has such
    noise: on scikit-learn's diabetes data (bench/unseen.py, targets 152 +- 78, batch 64) the
    untrained MLP's batch losses rise 30-38% over the first on two seeds of three; with ``JUMP``
    alone every point of Adam's probe from 1e-5 to 0.01 "jumped" on seed 2, and SGD momentum's
    brake cut a run twice on noise alone. The suites' classifiers and language models vary by a
    few percent from batch to batch and keep ``JUMP`` (docs/design.md)."""
    finite = [v for v in losses if math.isfinite(v)]
    if len(finite) < 2 or finite[0] == 0:
        return JUMP
    first = abs(finite[0])
    return max(JUMP, max(v - finite[0] for v in finite[1:]) / first)


def _calm_best(found: _Found, jumped: set[float]) -> float:
    """Adam-like optimizers start at the best point whose training loss never jumped; the best
    point itself when every point jumped. A point that jumped would be cut by MLR-SNet's brake
    within the run's first steps: Adam on the hard suite's character LM, seed 0, best at 0.1
    (its training loss 4.6 -> 9.7 by step 3, recovered by step 60), was braked to 0.01 at steps
    4 and 7 and ended at 2.69 bits per character; started at the best calm point, 0.032, 2.10."""
    calm = {lr: v for lr, v in found.losses.items() if lr not in jumped}
    return min(calm, key=calm.__getitem__) if calm else found.best


def has_signal(initial: float, best: float, noise: float) -> bool:
    """Whether the best point improved on the untrained model by more than the probe can
    resolve: ``SIGNAL_NOISE`` times its noise (``_noise``) and ``SIGNAL_FLOOR`` of the untrained
    loss. A loss plateau (a recurrent net that has not yet found its long-range signal) moves
    every point by far less: there is nothing to pick a best from."""
    improvement = initial - best
    return improvement > max(SIGNAL_NOISE * noise, SIGNAL_FLOOR * abs(initial))


@dataclass
class _Found:
    """One pass over the grid: the losses, the best point and the SGD edge."""

    losses: dict[float, float]
    best: float
    at_edge: bool
    edge: float
    constant_mark: bool = False  # the half-way mark was counted from the constant output's loss

    def harmless(self, initial: float, noise: float, share: float = 0.01) -> list[float]:
        """The LRs measured that did no harm: finite, no worse than the untrained model by more
        than the noise (or ``share`` of its loss)."""
        tolerance = max(noise, share * abs(initial))
        found = [lr for lr, v in self.losses.items() if v <= initial + tolerance]
        return sorted(found) or [min(self.losses)]


def _search(run_at, optimizer: torch.optim.Optimizer, grid: Sequence[float] | None,
            initial: float, climb: bool = True, constant: float = math.inf) -> _Found:
    """Decades (or ``grid``), one extension past an edge the best sits on, the half-decades
    around the best, then for SGD the edge climb (module docstring)."""
    adaptive = is_adaptive(optimizer)
    losses: dict[float, float] = {}

    def run(lr: float) -> float:
        known = nearest_known(losses, lr)
        if known is None:
            known = losses[lr] = run_at(lr)
        return known

    searching = grid is None and climb
    coarse = sorted(grid) if grid is not None else decade_grid(optimizer)
    for lr in coarse:
        run(lr)
    best = min(coarse, key=lambda v: losses[v])
    at_edge = best in (coarse[0], coarse[-1])
    if searching and at_edge:  # extend once past the edge it sits on
        ext = best / 10 if best == coarse[0] else best * 10
        run(ext)
        if losses[ext] < losses[best]:
            best = ext
        else:
            at_edge = False
    if searching:  # half-decades around the best
        for lr in (best / HALF_DECADE, best * HALF_DECADE):
            run(lr)
        best = min(losses, key=losses.__getitem__)
    edge, passed = best, False
    if math.isfinite(losses[best]):
        # half the best improvement (the best itself always qualifies, even when no point
        # improved on the untrained model), counted from a constant output's loss where the
        # best point passed it by more than the signal floor (short of it, nothing was
        # measured beyond it); a constant that all but solves the task (a model whose output
        # is its weights) is the task, not a trivial part of it
        passed = (SIGNAL_FLOOR * initial < constant
                  and has_signal(initial, constant, 0.0)  # a constant this close is no mark
                  and has_signal(constant, losses[best], 0.0))
        reference = constant if passed else initial
        keep = max(_halfway(reference, losses[best]), losses[best])
        if searching and not adaptive:  # climb half-decades while training still works
            top = max(coarse) * 10
            x = best * HALF_DECADE
            while x <= top * 1.001 and run(x) <= keep:
                edge, x = x, x * HALF_DECADE
            if run(edge * QUARTER_DECADE) <= keep:  # one finer step: the edge to 1.8x
                edge *= QUARTER_DECADE
        else:
            edge = max(lr for lr, value in losses.items() if value <= keep)
    return _Found(losses, best, at_edge, edge, constant_mark=passed)


def _halfway(initial: float, best: float) -> float:
    """Half the way from the untrained loss down to the best, on a log scale where both are
    positive (their geometric mean). A squared error falls by orders of magnitude in a probe
    (regression: 201 to 12 in 20 steps), and half of that in absolute terms is a loss six times
    the best's, which let the edge climb to an LR that killed the net; for a cross-entropy near
    ln K the two agree (the three CPU suites' edges are the same on every seed)."""
    if initial > 0 and best > 0:
        return math.sqrt(initial * best)
    return initial - 0.5 * (initial - best)


def constant_loss(task: Task, model: nn.Module, fit: list[Batch], judge: list[Batch],
                  iterations: int = 50) -> float:
    """The judging batches' loss of the best constant output fitted on other batches (``fit``):
    one vector in place of the model's last output dimension (a regression's mean, a
    classifier's class prior, a language model's unigram). A few steps at almost any LR reach
    it, so an improvement only down to it says nothing about whether training works. Fitted on
    the judging batches themselves it would memorise them (a 7k-word vocabulary over 2,240
    tokens: 5.0 nats, against 7.2 after the probe's best 20 steps). ``inf`` where the output is
    not a floating tensor or the loss does not take a constant.

    A softmax cross-entropy's gradient at any ``c`` is ``softmax(c)`` minus the targets'
    frequencies, so one gradient gives them; their log, add-half smoothed (unseen targets keep
    some probability on the judging batches), is that loss's constant, and it is taken where it
    beats the outputs' mean. Otherwise (a squared error, say) L-BFGS fits the constant from the
    mean. On the word-level LM, L-BFGS over the 7k logits took 32 s for 50 iterations (5.38
    nats) and had not converged at 20 (5.50); the gradient's answer takes one evaluation."""
    def fixed(c: torch.Tensor, out: object):
        if isinstance(out, tuple):
            return lambda *a, **k: (c.expand_as(out[0]),) + out[1:]
        return lambda *a, **k: c.expand_as(out)

    def mean_loss(c: torch.Tensor, outs: list[object], batches: list[Batch]) -> torch.Tensor:
        return sum(task.loss(fixed(c, o), b) for o, b in zip(outs, batches)) / len(batches)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            seen = [loss_output(task, model, b) for b in fit]
            judged = [loss_output(task, model, b) for b in judge]
        first = [o[0] if isinstance(o, tuple) else o for o in seen + judged]
        if not all(
                isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 1
                for t in first):
            return math.inf
        rows = torch.cat([t.reshape(-1, t.size(-1)) for t in first[:len(fit)]])
        with torch.enable_grad():
            c = rows.mean(0).detach().clone().requires_grad_()
            at_mean = mean_loss(c, seen, fit)
            (grad,) = torch.autograd.grad(at_mean, c)
        with torch.no_grad():
            n, k = rows.size(0), rows.size(-1)
            freq = torch.softmax(c.detach(), -1) - grad
            guess = ((freq.clamp_min(0) * n + 0.5) / (n + 0.5 * k)).log()
            cross_entropy = k > 1 and float(mean_loss(guess, seen, fit)) < float(at_mean)
        if cross_entropy:
            c = guess
        else:
            with torch.enable_grad():
                solver = torch.optim.LBFGS([c], max_iter=iterations,
                                           line_search_fn="strong_wolfe")

                def closure() -> torch.Tensor:
                    solver.zero_grad()
                    value = mean_loss(c, seen, fit)
                    value.backward()
                    return value

                solver.step(closure)
        with torch.no_grad():
            value = float(mean_loss(c.detach(), judged, judge))
    except (RuntimeError, IndexError):  # a loss that takes no constant, or never called model
        return math.inf
    finally:
        model.train(was_training)
    return value if math.isfinite(value) else math.inf


def _noise(found: _Found, replicate) -> float:
    """How much the best point's loss moves with another data order (seed to seed, batch to
    batch): one replicate of it, on the same judging batches."""
    best = found.losses[found.best]
    if not math.isfinite(best):
        return 0.0
    again = replicate(found.best)
    return abs(again - best) if math.isfinite(again) else abs(best)


def fresh_optimizer(optimizer: torch.optim.Optimizer, params, lr: float,
           state: dict | None = None) -> torch.optim.Optimizer:
    """A new optimizer of the same class and settings at this LR, with no state or a copy of
    ``state`` (an ``optimizer.state_dict()``: a recheck continues the run's momentum).

    Only the settings its constructor takes are passed: ``defaults`` may hold derived keys (torch's
    AdamW records ``decoupled_weight_decay``, which ``AdamW()`` does not accept)."""
    cls = type(optimizer)
    accepted = inspect.signature(cls.__init__).parameters
    settings = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    fresh = cls(params, **{**settings, "lr": lr})
    if state is not None:
        fresh.load_state_dict(copy.deepcopy(state))
        for group in fresh.param_groups:
            group["lr"] = lr
    return fresh


def nearest_known(losses: dict[float, float], lr: float) -> float | None:
    """The loss measured at ``lr`` (to rounding), or None."""
    for key, value in losses.items():
        if math.isclose(key, lr, rel_tol=1e-6):
            return value
    return None


def judge_loss(task: Task, model: nn.Module, judge: list[Batch]) -> float:
    """Mean loss on the fixed meta batches, in eval mode (no dropout noise in the verdict)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        value = sum(float(task.loss(model, b)) for b in judge) / len(judge)
    model.train(was_training)
    return value if math.isfinite(value) else math.inf


def _batch_losses(task: Task, model: nn.Module, steps: int, batch_size: int,
                  order: DataOrder) -> list[float]:
    """The model's training losses on the first ``steps`` batches of ``order``, no step taken
    (training mode, as a training step sees them; buffers are the caller's to restore)."""
    model.train()
    with torch.no_grad():
        return [float(task.loss(model, batch))
                for _, batch in itertools.islice(order.batches(task, batch_size), steps)]


def died(params: Sequence[torch.Tensor]) -> bool:
    """Whether a net is dead: the last training step gave every weight (each parameter with
    more than one dimension) an exactly zero gradient. Then the units feeding the output are off
    for every input, the output is a constant and only biases move, whatever the LR: no step
    brings it back. Dead ReLUs do this; a plateau does not (a GRU's or a sigmoid's gradients are
    small, never exactly zero), nor does a live ReLU net. bench/unseen.py's ``digits-deep``
    (six plain convs) with SGD momentum is dead within 20 steps at LR 1 and within 100-165 at
    0.1; at 0.05 it trains every seed (tests/test_dead_nets.py). A weight without any gradient
    (unused) makes the answer no."""
    weights = [p for p in params if p.dim() > 1]
    grads = [p.grad for p in weights if p.grad is not None]
    return bool(grads) and len(grads) == len(weights) and not any(bool(g.any()) for g in grads)


def train_and_judge(task: Task, model: nn.Module, opt: torch.optim.Optimizer, steps: int,
                     batch_size: int, order: DataOrder, judge: list[Batch],
                     clip_grad_norm: float | None, jump: float = JUMP) -> tuple[float, bool]:
    """``steps`` steps of training, then the judged loss; and whether the training loss jumped
    (``jump`` above the first step's, still above it the step after)."""
    # the batches the run itself will start with, so a point that would wreck the run's first
    # steps is seen to wreck them here
    model.train()
    first = None
    up = jumped = False
    for _, batch in itertools.islice(order.batches(task, batch_size), steps):
        opt.zero_grad(set_to_none=True)
        loss = task.loss(model, batch)
        value = float(loss.detach())
        if first is None:
            first = value
        else:  # the brake's rule (plugins/metalr_mlrsnet/base.py): a jump the next step keeps
            held, up = jump_step(first, up, value, jump)
            jumped = jumped or held
        if not math.isfinite(value) or value > 1e3 * max(first, 1e-12):
            return math.inf, True
        loss.backward()
        if clip_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        opt.step()
    return judge_loss(task, model, judge), jumped

