"""Hand-designed schedules, computed by torch's own ``torch.optim.lr_scheduler`` classes.

The engine owns the real optimizer's LR (it writes the policy's float into every param group
each step), so a torch scheduler cannot drive that optimizer directly. Each policy here instead
builds its scheduler in :meth:`start` over a private dummy optimizer (one zero-size parameter)
holding the initial LR, advances it per epoch or per iteration as the schedule needs, and
returns the dummy's current LR from :meth:`lr`. The LR values are therefore exactly torch's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.optim import lr_scheduler

from metalr.contracts.protocols import RunInfo, StepContext
from metalr.engine.run_state import SavedAttributes


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(0.1, gt=0, description="the initial learning rate (paper: SGD 0.1)")


class _AnnealOptions(_Options):
    eta_min: float = Field(0.0, ge=0, description="the lowest LR of the cosine")

    @model_validator(mode="after")
    def _eta_min_below_lr(self):
        if self.eta_min > self.lr:
            raise ValueError(f"eta_min ({self.eta_min}) must not exceed lr ({self.lr})")
        return self


class ExponentialOptions(_Options):
    gamma: float = Field(0.95, gt=0, le=1, description="LR factor per epoch (paper: 0.95)")


class MultiStepOptions(_Options):
    milestones: list[int] | None = Field(
        None,
        description="epochs (0-based, strictly increasing) after which the LR is multiplied by "
        "`factor`; unset: every 30% of the run, the paper's 60 of 200 epochs",
    )
    factor: float = Field(0.1, gt=0, lt=1, description="LR factor at each milestone")

    @model_validator(mode="after")
    def _increasing(self):
        m = self.milestones
        if m is not None and (any(e < 1 for e in m) or any(a >= b for a, b in zip(m, m[1:]))):
            raise ValueError(f"milestones must be positive and strictly increasing, got {m}")
        return self


class SGDROptions(_AnnealOptions):
    T_0: int = Field(10, ge=1, description="epochs until the first restart")
    T_mult: int = Field(2, ge=1, description="each period is T_mult times the previous one")
    eta_min: float = Field(1e-5, ge=0, description="the LR at the end of every period")


class CosineOptions(_AnnealOptions):
    per: Literal["iteration", "epoch"] = Field(
        "iteration", description="iteration: a new LR every step (T_max = epochs * "
        "steps_per_epoch); epoch: one LR per epoch, stepped after it (T_max = epochs), as "
        "most published recipes use torch's CosineAnnealingLR")


class WSDOptions(_Options):
    warmup: float = Field(0.0, ge=0, lt=1, description="first fraction of the run: the LR "
                          "rises linearly from lr/steps to lr")
    decay: float = Field(0.2, ge=0, le=1, description="last fraction of the run: the LR "
                         "decays to 0 in the shape `shape`")
    shape: Literal["linear", "cosine", "sqrt"] = Field(
        "linear", description="of the decay: linear 1-x, cosine (1+cos(pi x))/2, sqrt 1-sqrt(x) "
        "(Hägele et al. 2024), x from 0 to 1 over the decay")

    @model_validator(mode="after")
    def _phases_fit(self):
        if self.warmup + self.decay > 1:
            raise ValueError(f"warmup ({self.warmup}) + decay ({self.decay}) exceed the run (1)")
        return self


class PlateauOptions(_Options):
    monitor: str = Field(
        "meta_loss", min_length=1,
        description="the end-of-epoch metric watched, e.g. meta_loss (PTB's validation split)",
    )
    mode: Literal["min", "max"] = Field("min", description="min for losses, max for accuracies")
    factor: float = Field(0.25, gt=0, lt=1, description="LR factor when the metric stalls")
    patience: int = Field(0, ge=0, description="non-improving epochs tolerated before a cut")
    threshold: float = Field(1e-4, ge=0, description="relative change that counts as improving")
    min_lr: float = Field(0.0, ge=0, description="the LR is never cut below this")


def _dummy_optimizer(lr: float) -> torch.optim.Optimizer:
    """A private optimizer whose only job is to carry the LR a torch scheduler writes."""
    return torch.optim.SGD([torch.zeros(0, requires_grad=True)], lr=lr)


class _TorchSchedule(SavedAttributes):
    """Base of the policies: the dummy optimizer, the scheduler and the common protocol.

    Each policy declares its options once, as its schema ``Options``: the constructor takes
    them as keywords (``ExponentialLR(lr=0.1, gamma=0.9)``), validates them there (an unknown
    or out-of-range one fails) and keeps them resolved as ``opts``.

    Run state: the LR the scheduler wrote into the dummy, and the scheduler's own state (its
    step count, a plateau's best value and patience); ``start`` builds both, the state is
    loaded into them.
    """

    Options: ClassVar[type[_Options]] = _Options
    run_state_attributes = ("_opt", "_sched")

    def __init__(self, **options: Any):
        self.opts: Any = self.Options(**options)
        self.initial_lr = float(self.opts.lr)
        self._opt: torch.optim.Optimizer | None = None
        self._sched: lr_scheduler.LRScheduler | None = None
        self._run: RunInfo | None = None

    def _build(self, opt: torch.optim.Optimizer, run: RunInfo) -> lr_scheduler.LRScheduler:
        raise NotImplementedError

    def start(self, run: RunInfo) -> None:
        """Build a fresh scheduler, so that one policy object can serve several runs."""
        if run.epochs < 1 or run.steps_per_epoch < 1:
            raise ValueError(f"need at least one epoch and one step per epoch, got {run.epochs} "
                             f"epochs of {run.steps_per_epoch} steps")
        self._run = run
        self._opt = _dummy_optimizer(self.initial_lr)
        self._sched = self._build(self._opt, run)

    def _advance(self, *args: float) -> None:
        # The dummy never has a gradient, so its step() does nothing; it is called only so that
        # torch does not warn about a scheduler stepped before its optimizer.
        self._opt.step()
        self._sched.step(*args)

    def _catch_up(self, step: int) -> float:
        """A scheduler stepped once per training step: advance it to ``step`` (0-based), one
        ``step()`` per training step taken (torch's cosine is recursive), and give its LR."""
        while self._t < step:
            self._advance()
            self._t += 1
        return self.current_lr

    @property
    def current_lr(self) -> float:
        if self._opt is None:
            raise RuntimeError(f"{type(self).__name__}.start(run) must be called before lr()")
        return float(self._opt.param_groups[0]["lr"])

    def lr(self, ctx: StepContext) -> float:
        return self.current_lr

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        pass


class ExponentialLR(_TorchSchedule):
    """``lr * gamma**epoch``, changed once per epoch (torch's ``ExponentialLR``); options: see
    :class:`ExponentialOptions`."""

    Options = ExponentialOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.gamma = float(self.opts.gamma)

    def _build(self, opt, run):
        return lr_scheduler.ExponentialLR(opt, gamma=self.gamma)

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._advance()


def default_milestones(epochs: int) -> list[int]:
    """The paper's "divide by 10 every 60 of 200 epochs", scaled: a cut every 30% of the run.

    200 epochs give [60, 120, 180]; 10 epochs give [3, 6, 9].
    """
    period = max(1, round(0.3 * epochs))
    return list(range(period, epochs, period))


class MultiStepLR(_TorchSchedule):
    """Step decay: the LR is multiplied by ``factor`` after each milestone epoch (``MultiStepLR``).

    Without milestones the paper's schedule is scaled to the run (:func:`default_milestones`), so
    a recipe shortened for a CPU still decays the same number of times. Options: see
    :class:`MultiStepOptions`.
    """

    Options = MultiStepOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        milestones, self.factor = self.opts.milestones, float(self.opts.factor)
        self.milestones = None if milestones is None else [int(m) for m in milestones]

    def _build(self, opt, run):
        milestones = self.milestones if self.milestones is not None else default_milestones(
            run.epochs)
        self.used_milestones = milestones
        return lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=self.factor)

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._advance()


class _PerIteration(_TorchSchedule):
    """Tracks where in its epoch each step falls, to step the scheduler per iteration."""

    run_state_attributes = _TorchSchedule.run_state_attributes + ("_epoch", "_epoch_start")

    def start(self, run: RunInfo) -> None:
        super().start(run)
        self._epoch, self._epoch_start = 0, 0

    def _fractional_epoch(self, ctx: StepContext) -> float:
        if ctx.epoch != self._epoch:
            self._epoch, self._epoch_start = ctx.epoch, ctx.step
        return ctx.epoch + (ctx.step - self._epoch_start) / self._run.steps_per_epoch


class SGDR(_PerIteration):
    """Cosine annealing with warm restarts (Loshchilov & Hutter), torch's
    ``CosineAnnealingWarmRestarts`` stepped every iteration at the fractional epoch
    ``epoch + i / steps_per_epoch``, as torch's documentation shows. Options: see
    :class:`SGDROptions`."""

    Options = SGDROptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.opts
        self.T_0, self.T_mult, self.eta_min = int(o.T_0), int(o.T_mult), float(o.eta_min)

    def _build(self, opt, run):
        return lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=self.T_0, T_mult=self.T_mult, eta_min=self.eta_min)

    def lr(self, ctx: StepContext) -> float:
        if self._opt is None:
            return self.current_lr  # raises the "call start() first" error
        self._advance(self._fractional_epoch(ctx))
        return self.current_lr


class CosineLR(_TorchSchedule):
    """One cosine from ``lr`` towards ``eta_min`` over the whole run (torch's
    ``CosineAnnealingLR``): one value per iteration (``T_max = epochs * steps_per_epoch``), or,
    with ``per="epoch"``, one per epoch (``T_max = epochs``, stepped after each epoch), the way
    published recipes that call ``scheduler.step()`` once an epoch do. Options: see
    :class:`CosineOptions`."""

    Options = CosineOptions
    run_state_attributes = _TorchSchedule.run_state_attributes + ("_t",)  # steps caught up

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.eta_min, self.per = float(self.opts.eta_min), self.opts.per

    def _build(self, opt, run):
        self._t = 0
        t_max = run.epochs if self.per == "epoch" else run.epochs * run.steps_per_epoch
        return lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=self.eta_min)

    def lr(self, ctx: StepContext) -> float:
        if self._opt is None or self.per == "epoch":
            return self.current_lr
        return self._catch_up(ctx.step)

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.per == "epoch":
            self._advance()


DECAY_SHAPES = {
    "linear": lambda x: 1.0 - x,
    "cosine": lambda x: 0.5 * (1.0 + math.cos(math.pi * x)),
    "sqrt": lambda x: 1.0 - math.sqrt(x),
}


def wsd_factor(step: int, total: int, warmup: float, decay: float, shape: str) -> float:
    """The multiple of the peak LR at ``step`` of ``total``: warm-up, stable, decay. The
    decay's last step is one before zero (the LR after the run's last step would be 0)."""
    warm, cool = round(warmup * total), round(decay * total)
    if step < warm:
        return (step + 1) / warm
    begin = total - cool
    if step < begin:
        return 1.0
    return DECAY_SHAPES[shape]((step - begin + 1) / (cool + 1))


class WSD(_TorchSchedule):
    """Warm-up, stable, decay (Hägele et al. 2024; Dremov et al. 2025 on decay shapes): the LR
    of the hand-designed runs at scale, torch's ``LambdaLR`` stepped every iteration. Its
    defaults (no warm-up, the last 20% decayed linearly to 0) are MLR-SNet's cool-down: tuned,
    it is the strongest simple schedule beside the learned one, and the control for it.
    Options: see :class:`WSDOptions`."""

    Options = WSDOptions
    run_state_attributes = _TorchSchedule.run_state_attributes + ("_t",)  # steps caught up

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.opts
        self.warmup, self.decay, self.shape = float(o.warmup), float(o.decay), o.shape

    def _build(self, opt, run):
        self._t = 0
        total = run.epochs * run.steps_per_epoch
        return lr_scheduler.LambdaLR(opt, lambda step: wsd_factor(
            step, total, self.warmup, self.decay, self.shape))

    def lr(self, ctx: StepContext) -> float:
        if self._opt is None:
            return self.current_lr
        return self._catch_up(ctx.step)


class PlateauLR(_TorchSchedule):
    """Cut the LR by ``factor`` when a validation metric stops improving (``ReduceLROnPlateau``).

    Defaults are the PyTorch word-language-model recipe the paper's PTB baselines use: watch the
    validation loss (here the meta split's loss), divide by 4 after one non-improving epoch.
    Epochs without the metric (not evaluated, ``eval_every > 1``) are skipped; the engine always
    evaluates the last epoch, so a metric still missing there is a misnamed one and an error.
    Options: see :class:`PlateauOptions`.
    """

    Options = PlateauOptions
    run_state_attributes = _TorchSchedule.run_state_attributes + ("_seen",)  # metric seen

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.opts
        self.monitor, self.mode = o.monitor, o.mode
        self.factor, self.patience = float(o.factor), int(o.patience)
        self.threshold, self.min_lr = float(o.threshold), float(o.min_lr)

    def _build(self, opt, run):
        self._seen = False
        return lr_scheduler.ReduceLROnPlateau(
            opt, mode=self.mode, factor=self.factor, patience=self.patience,
            threshold=self.threshold, min_lr=self.min_lr)

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        value = metrics.get(self.monitor)
        if value is None:
            if epoch + 1 >= self._run.epochs and not self._seen:
                raise KeyError(f"plateau: metric {self.monitor!r} was never reported; the "
                               f"end-of-epoch metrics are {sorted(metrics)}")
            return
        self._seen = True
        self._advance(float(value))  # torch counts a NaN as "not improving"; so do we
