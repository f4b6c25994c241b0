"""Part-way into a run: is its LR wrong by far? The recheck, and what it reads of the run.

At a tenth of a run the engine probes again around the LR the run has reached, from the
current weights and optimizer state (:func:`recheck_lr`; the probe's own machinery,
:mod:`metalr.engine.probe`), and moves the run's scale only where that is measured: up on a win,
down on harm, off a loss plateau, down from a run its LR holds at no progress or that gave back
its gain, and a restart from the first weights for a net the start killed. Which of those can
apply is read from the run's own training loss (:func:`learned_before`, :func:`fell_back`,
:func:`blew_up`). Why each rule, and what it was measured on: docs/design.md, "The recheck
part-way into the run".
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence

import torch
from torch import nn

from metalr.contracts.protocols import Task
from metalr.engine.device import rng_aside
from metalr.engine.order import DataOrder
from metalr.engine.probe import (
    DROPOUT,
    HALF_DECADE,
    JUMP,
    PLATEAU,
    REPLICATE,
    SIGNAL_FLOOR,
    ProbeResult,
    fresh_optimizer,
    has_signal,
    judge_loss,
    nearest_known,
    train_and_judge,
)

RECHECK_ORDER = 2_000_003  # the data order of a recheck's points: seed + this
HARM = 0.5  # a recheck moves down only if the LR raised the loss by this fraction (and noise)
LEARNED_WINDOW = 10  # steps averaged where a run's training loss is compared with its start
FELL = 0.5  # a run that gave back more than this fraction of its training loss's gain fell back
BLOW_UP = 0.5  # a training loss this fraction above its first value (at least) blew up


def recheck_lr(
    task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, lr: float, *,
    steps: int, batch_size: int, meta_batch_size: int, seed: int,
    clip_grad_norm: float | None = None, meta_batches: int = 2, ceiling: float = math.inf,
    untrained: float | None = None, learned: bool = False, fell: bool = False,
    blown: bool = False,
) -> ProbeResult:
    """Probe again, part-way into a run, around the LR it runs at: is ``lr`` wrong by far?

    A start can be wrong by 10x either way (a probe that saw no signal, a short horizon that
    misled it, a user's scale, a net transferred from another model). From the current weights
    *and* the optimizer's current state (momentum, Adam's moments), ``steps`` steps at
    ``lr/10``, ``lr`` and ``10 lr`` (one more decade past an end that wins, then the
    half-decades around the best), judged on the probe's meta batches like the first probe.
    The run moves only when that is measured: the best point beats ``lr`` by more than the
    noise (``lr`` replicated on another data order) and 1% of its loss. Up whenever a larger LR
    wins (a few steps favour small LRs, :mod:`metalr.engine.probe`, so a larger one that wins
    is real); down when ``lr`` does harm, its loss after the steps higher than before them by
    more than the noise and ``HARM`` (50%) of it, or holds the run at no progress (below). A
    smaller LR winning a few steps is otherwise the short horizon speaking: on the MNIST-1D MLP
    with SGD momentum the loss at the right LR (0.26) rises 3-6% over 28 steps from mid-run
    weights, and moving down on that evidence cost
    3 points; on the CPU suite's MLP (40 epochs) the loss at 0.5 rose 20% and the move down to
    0.05 cost 8 points on that seed (10% was the rule then). Too-high starts are the brake's. It
    moves to the best point, not past it: on digits, moving to the largest point tied with the best
    jumped 100x and broke a run, and so did the best point itself (0.30, 100x up) on one seed of
    three; so where the run had a probe, ``ceiling`` (the engine passes the probe's gamma, twice its
    start: about where training from the initial weights stopped working) bounds a move up.

    A run still on a loss plateau is the exception to "only on a measured win": given
    ``untrained`` (the probe's loss of the untrained model on the same judging batches), a run
    whose loss has not fallen ``SIGNAL_FLOOR`` below it (and whose training loss never did:
    not ``learned``, below) has learned nothing yet, and where no
    point of this look has a signal either (:func:`has_signal` against the loss before it: a
    run that learned and fell back to its untrained loss is not on a plateau; its smaller LRs
    improve at once), it moves up to the largest point that kept the loss within
    ``PLATEAU`` of where it stands (up to ``ceiling``): on a plateau the way off is a larger
    step, and the run has nothing to lose (a GRU and an LSTM whose probe started them at 0.16-0.5
    sat at chance for the whole run; fixed at 0.5-1 they escape it).

    A run no better than ``untrained`` after a tenth of its steps, while smaller LRs of this
    look beat ``lr`` and make progress from where it stands (:func:`has_signal` against the loss
    before them: what a plateau's smaller LRs never do), is held there by its LR: it moves down
    to the largest of those LRs, the least move the look supports (bench/unseen.py's
    ``clusters`` with SGD momentum: started at 0.5, 3-5x what whole runs prefer, two seeds sat at
    their untrained loss and ended at 0.29 and 0.25; moved to 0.15, at 0.46 and 0.49).

    ``learned``: the run's training loss had already fallen ``SIGNAL_FLOOR`` below where it
    started (the engine's :func:`learned_before`). Such a run, back at its untrained loss, fell
    back: it is not on a plateau, so it is never moved up for one, and smaller LRs that beat
    ``lr`` are evidence enough to move down, progress of their own or not: the fall back is the
    long look (bench/unseen.py's ``clusters20`` with SGD momentum, MLR-SNet seed 1: 28% after
    its first epoch, back within 5% of its untrained loss by the recheck, where 26 steps at its
    LR, 0.29, raised the loss 7% and every smaller LR held it; kept, it ended at 0.17).

    ``fell``: the run gave back more than half of what its training loss had gained
    (:func:`fell_back`), wherever it stands against the untrained loss. Its LR is what the run
    cannot hold: it moves down to the largest smaller LR of the look that beats ``lr`` and
    lowers the loss from where the run stands (by 1% each), the noise notwithstanding: the
    fall is the long look, the few steps only say how far down (bench/unseen.py's
    ``clusters20``, SGD momentum, seed 0: the control gave back most of a fall from 3.0 to
    2.2; 7% below the untrained loss, it was not held there. At its recheck 0.28 raised the
    loss from 2.81 to 2.89, 0.089 lowered it to 2.74 and 0.028 to 2.57, yet the harm rule
    wants 50%; MLR-SNet's seed 0 the same, its smaller LRs' win inside a noise replicate 0.17
    apart. Kept, they ended at 0.23 and 0.33; moved, at 0.49 and 0.50).

    A run the start killed is the last case: back at its untrained loss, no LR of the look
    moving it (a dead net's loss is as flat as a plateau's), after it had learned or its
    training loss :func:`blew_up` on the way (``blown``). A plateau never did either. No LR
    helps weights that are dead, so the result says ``restart``: the engine puts the run's
    first weights back and clears the optimizer's state, at a half-decade below the lower of
    ``lr`` and the first probe's start (``ceiling / 2``), the LR that killed it being at most
    that. (The digits CNN with SGD momentum at 10x its probed LR: the loss 32 at step 6,
    then 2.3 at every LR of the look, at chance to the end on two seeds of three.)

    Returns a :class:`ProbeResult` whose ``lr`` is the LR to run at (``lr`` itself when there
    was nothing to move for), ``initial_loss`` the loss at the current weights, ``signal``
    whether it moved. Weights, buffers, optimizer state and the global RNGs are restored.
    """
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"recheck_lr needs a positive LR to look around, got {lr}")
    began = time.perf_counter()
    weights = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(optimizer.state_dict())
    judge_gen = DataOrder(seed).judge_generator()
    judge = [task.meta_batch(meta_batch_size, judge_gen) for _ in range(meta_batches)]
    initial = judge_loss(task, model, judge)
    losses: dict[float, float] = {}
    spent = 0

    def measure(at: float, data: DataOrder) -> float:
        nonlocal spent
        model.load_state_dict(weights)
        torch.manual_seed(data.seed + DROPOUT)
        opt = fresh_optimizer(optimizer, model.parameters(), at, state)
        spent += steps
        return train_and_judge(task, model, opt, steps, batch_size, data, judge,
                                clip_grad_norm)[0]

    order = DataOrder(seed + RECHECK_ORDER)

    def run(at: float) -> float:
        known = nearest_known(losses, at)
        if known is None:
            known = losses[at] = measure(at, order)
        return known

    with rng_aside(model):
        try:
            for at in (lr / 10, lr, lr * 10):
                run(at)
            best = min(losses, key=losses.__getitem__)
            if best != lr:  # one decade past the end that won
                run(best / 10 if best < lr else best * 10)
                best = min(losses, key=losses.__getitem__)
            for at in (best / HALF_DECADE, best * HALF_DECADE):
                run(at)
            best = min(losses, key=losses.__getitem__)
            noise = 0.0  # an LR that diverges here is harm enough: nothing to replicate
            if math.isfinite(losses[lr]):
                again = measure(lr, order.replicate(REPLICATE, task, batch_size, skip=steps))
                noise = abs(again - losses[lr]) if math.isfinite(again) else abs(losses[lr])
            # on a plateau: no progress since the start, and no point of this look moves the
            # loss beyond its noise either (a run that learned and then fell back is no plateau)
            finite = [v for v in losses.values() if math.isfinite(v)]
            idle = untrained is not None and not has_signal(untrained, initial, 0.0)
            stuck = (idle and not learned
                     and not has_signal(initial, min(finite, default=initial), noise))
            if stuck and lr < ceiling < math.inf:  # the highest point a plateau move may take
                run(min(ceiling, 10 * lr))
        finally:
            model.load_state_dict(weights)  # the real optimizer was never stepped
    here = losses[lr]
    tied = max(noise, 0.01 * abs(here)) if math.isfinite(here) else 0.0
    better = math.isfinite(losses[best]) and here - losses[best] > tied
    # up: a larger LR measured better (a short horizon favours small LRs, so this is real);
    # down: only when the current LR does harm, its loss after the steps above the loss before
    moved = better and (best > lr or not here <= initial + max(noise, HARM * abs(initial)))
    chosen = (min(best, max(ceiling, lr)) if best > lr else best) if moved else lr
    if moved and math.isclose(chosen, lr, rel_tol=1e-6):  # a win above a ceiling the run
        chosen, moved = lr, False  # already stands at: kept, and the later rules may speak
    # a run no better than the untrained model after a tenth of its steps, while smaller LRs
    # beat its own and make progress from where it stands (beyond the noise and the signal
    # floor; a run that had learned and fell back needs no such progress): its LR is what holds
    # it there. Down to the largest of those, the least move the look supports (a plateau's
    # smaller LRs make no such progress: the next rule's case)
    down = [at for at, v in losses.items() if at < lr and math.isfinite(v) and here - v > tied
            and (learned or has_signal(initial, v, noise))] if idle and math.isfinite(here) else []
    if not moved and down:
        chosen, moved = max(down), True
    # a run that gave back most of its gain (``fell``): the fall was the long look, the few
    # steps only say how far down; no noise gate, 1% each against its LR and where it stands
    back = [at for at, v in losses.items() if at < lr and math.isfinite(v)
            and here - v > 0.01 * abs(here) and initial - v > 0.01 * abs(initial)
            ] if fell and math.isfinite(here) else []
    if not moved and back:
        chosen, moved = max(back), True
    dead = (idle and (learned or blown) and math.isfinite(here)
            and not has_signal(initial, min(finite, default=initial), noise))
    if dead:  # killed on the way: no LR helps these weights, whatever moved above; restart
        chosen, moved = min(lr, ceiling / 2) / HALF_DECADE, True
    if not moved and stuck:
        # no progress since the start, no measured win: off the plateau with a larger step
        wobble = initial + max(noise, PLATEAU * abs(initial))
        up = [at for at, v in losses.items() if at > lr and v <= wobble]
        chosen = min(max(up), max(ceiling, lr)) if up else lr
        moved = chosen > lr
    return ProbeResult(chosen, dict(sorted(losses.items())), steps, False, best, chosen,
                       initial, steps=spent, seconds=time.perf_counter() - began,
                       signal=moved, noise=noise, restart=dead)


def learned_before(losses: Sequence[float], window: int = LEARNED_WINDOW) -> bool:
    """Whether a run's training loss (per step, in order) had fallen ``SIGNAL_FLOOR`` below where
    it started: some ``window``-step mean that far below the first ``window`` steps' mean. Means,
    not single steps: on the hard suite's GRU and LSTM plateaus and the deep plain MLP's the
    lowest 10-step mean before the recheck is at most 1.9% below the first (5-step means: 2.6%),
    on every task that learns at least 7% (up to 100%). Only completed epochs' losses reach the
    engine's history, so a recheck in the first epoch sees none (False)."""
    sums = _window_sums(losses, window)
    return bool(sums) and min(sums) < sums[0] - SIGNAL_FLOOR * abs(sums[0])


def halved(losses: Sequence[float], window: int = LEARNED_WINDOW) -> bool:
    """Whether a run's training loss (per step, in order) has had a ``window``-step mean below
    half of its first one: it trains, and the engine's death watch need not keep the first
    weights any longer."""
    sums = _window_sums(losses, window)  # sums, not means: the shares are the same
    return any(s < sums[0] / 2 for s in sums[1:])


def _window_sums(losses: Sequence[float], window: int) -> list[float]:
    """Running ``window``-step sums of the losses; none below two windows' worth of steps."""
    if len(losses) < 2 * window:
        return []
    sums = [sum(losses[:window])]
    for i in range(window, len(losses)):
        sums.append(sums[-1] + losses[i] - losses[i - window])
    return sums


def blew_up(losses: Sequence[float], jump: float = JUMP) -> bool:
    """Whether a run's training loss (per step) rose to ``1 + max(BLOW_UP, 2 jump)`` times its
    first value: far past a jump (``jump``: the rise batch noise alone reaches,
    :func:`jump_tolerance`). A plateau's loss wobbles by a few percent at the LRs that escape
    it (a GRU's: 2% at LR 1); the digits CNN killed by SGD momentum at 10x its probed LR rose to
    1.9x (seed 2) and 14x (seed 1) before it died."""
    return bool(losses) and max(losses) > (1 + max(BLOW_UP, 2 * jump)) * abs(losses[0])


def fell_back(losses: Sequence[float], window: int = LEARNED_WINDOW) -> bool:
    """Whether a run gave back more than ``FELL`` of what its training loss had gained: it
    :func:`learned_before`, and its last ``window``-step mean is above its lowest one by more
    than ``FELL`` of the distance from its first to its lowest. A run whose LR is right keeps its
    gains (at worst a few percent back on noise); giving most of them back over a whole epoch
    or more is the long look a recheck's few steps cannot take (bench/unseen.py's
    ``clusters20``, SGD momentum, seed 0: 2.16 after its first epoch, back to 2.8-2.9 of an
    untrained 3.0 by the recheck, where the look's smaller LRs won by less than its noise)."""
    if not learned_before(losses, window):
        return False
    sums = _window_sums(losses, window)  # sums, not means: the shares are the same
    first, low, last = sums[0], min(sums), sums[-1]
    return last - low > FELL * (first - low)
