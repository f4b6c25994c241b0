"""What the LSTM and MLP meta-learners share: the LR scale, the cool-down, the policy plumbing.

The output is ``gamma * sigmoid(net(loss)) * cooldown(progress)``. Two presets set the defaults
of the options below (docs/design.md, "Learned schedules that work untuned"):

- ``paper``: gamma is the task's constant (1 for images, 40 for text), fixed; meta-updates twice
  an epoch; no cool-down. Exactly the paper's Eq. 7 and Algorithm 1.
- ``auto`` (default): gamma = 2x the LR a short probe of this very run chose
  (:mod:`metalr.engine.probe`), so the net starts there; the last ``cooldown`` fraction of the run
  decays the LR linearly to zero with theta frozen. A start that is wrong anyway is moved
  within the run: a ``brake`` on loss jumps in the first 5% of the run, a ``recheck`` of the LR
  at 10% (docs/design.md, "The recheck part-way into the run").

``learn_scale`` (meta-learning log(gamma) too) is off in both, and with it the meta-update budget
(``min_meta_updates``: at least 100 meta-updates however short the run, which a learned scale
needs to move): measured, more one-step meta-updates mostly speed up the hypergradient's drift
to small LRs (docs/design.md).

An explicit ``gamma`` always wins: it is used as given, never probed, and not learned unless
``learn_scale: true`` asks for it (then it is the starting value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from metalr.contracts.protocols import RunInfo, StepContext
from metalr.engine.probe import JUMP, jump_step
from metalr.engine.run_state import load_attributes, save_attributes

Preset = Literal["auto", "paper"]
# the brake: a loss jump the next step does not undo (metalr.engine.probe.jump_step, the rule
# an Adam-like probe start avoids) ...
BRAKE_GAP = 3  # ... cuts the scale, at most once in this many steps
BRAKE_CUTS = 2  # ... and at most this many times: 10x in all, the error it is there to undo


class ProbedOptions(BaseModel):
    """Options of every probed schedule: how its scale is set, moved and cooled down. The
    fields' order is that of a saved net's header (:meth:`ProbedSchedule.options`)."""

    model_config = ConfigDict(extra="forbid")
    preset: Preset = Field("auto", description="auto: probed scale + cool-down; "
                           "paper: the paper's gamma and meta settings")
    gamma: float | None = Field(
        None, gt=0, description="LR scale, output in [0, gamma]; set: used as given, never "
        "probed. Unset: from `scale`")
    scale: Literal["probe", "task"] | None = Field(
        None, description="where an unset gamma comes from: probe (a short LR probe of the "
        "run) or task (1 images, 40 text); unset: auto probe, paper task")
    start_factor: float = Field(
        1.0, gt=0, le=10, description="with a probed scale: start at this multiple of the "
        "LR the probe chose")
    cooldown: float | None = Field(
        None, ge=0, lt=1, description="final fraction of the run with a linear decay to 0 "
        "and theta frozen (unset: auto 0.2, paper 0)")
    recheck: float | None = Field(
        None, ge=0, le=0.5, description="at this fraction of the run, probe again around the "
        "LR reached and move the scale if a far better one is measured, or restart a run the "
        "start killed from its first weights; with it, a net that dies (no weight with a "
        "gradient) restarts lower; 0: neither (unset: auto 0.1 with a probed scale, else 0)")
    brake: float | None = Field(
        None, ge=0, le=0.5, description="in this first fraction of the run, a training loss "
        "10% above the first step's (more where the probe saw batch noise alone rise more), and "
        "still above it a step later, cuts the scale by sqrt(10) (at most once in 3 steps, "
        "twice in all); 0: "
        "never (unset: auto 0.05 with a probed scale, else 0)")

    @model_validator(mode="after")
    def _fill_preset(self) -> ProbedOptions:
        auto = self.preset == "auto"
        if self.scale is None:
            self.scale = "probe" if auto else "task"
        if self.cooldown is None:
            self.cooldown = 0.2 if auto else 0.0
        probed = auto and self.gamma is None and self.scale == "probe"
        if self.brake is None:
            self.brake = 0.05 if probed else 0.0
        if self.recheck is None:
            self.recheck = 0.1 if probed else 0.0
        return self


class ScaleOptions(ProbedOptions):
    """Options of every loss-to-LR net: its probed schedule and its meta-learning budget."""

    learn_scale: bool = Field(
        False, description="meta-learn log(gamma) as well, with its own meta LR (scale_lr)")
    scale_lr: float = Field(0.03, gt=0, description="meta LR (Adam) of log(gamma)")
    min_meta_updates: int | None = Field(
        None, ge=0, description="meta-updates at least, when meta.t_val is unset; 0: none, "
        "twice an epoch as the paper (unset: 100 with learn_scale, else 0)")
    progress: bool = Field(
        False, description="read the run's progress t/T besides the loss (an annealing "
        "schedule must know when the run ends); false: the paper's loss-only input")

    @model_validator(mode="after")
    def _fill_budget(self) -> ScaleOptions:
        if self.min_meta_updates is None:  # extra meta-updates pay only with a scale to learn
            self.min_meta_updates = 100 if self.learn_scale else 0
        return self


def cooldown_factor(step: int, total_steps: int, cooldown: float) -> float:
    """1 before the last ``n = round(cooldown * total_steps)`` steps, then ``(total - step) /
    (n + 1)``: linear from just under 1 to ``1 / (n + 1)`` at the last step."""
    if cooldown <= 0 or total_steps <= 0:
        return 1.0
    length = max(1, round(cooldown * total_steps))
    left = max(total_steps - step, 1)  # steps left, this one included
    return min(1.0, left / (length + 1))


class ProbedSchedule(nn.Module):
    """An LR in ``[0, gamma]`` from the (normalised) training loss: ``gamma * raw(loss)`` times
    the cool-down, with its scale probed, braked and rechecked (the module docstring). What
    maps the loss to ``raw`` is the subclass's: a meta-learned net (:class:`LossToLR`) or a
    constant (:class:`metalr_mlrsnet.control.ProbedWSD`, the control with nothing learned).

    ``log_gamma`` and ``ref_lr`` travel with the saved parameters. ``ref_lr`` is the LR the
    scale was calibrated to (the probe's chosen start, or gamma/2 otherwise): a saved net dropped
    into a new run under ``auto`` is rescaled by ``new probe / ref_lr``, so what transfers is
    the schedule relative to its start, not an absolute LR from another model.

    Each subclass declares its options once, as its schema ``Options``: the constructor takes
    them as keywords (``MLRSNet(hidden=8, gamma=0.1)``), validates them there (an unknown one
    fails), keeps them resolved as ``opts``, and :meth:`options` writes them back.
    """

    Options: ClassVar[type[ProbedOptions]] = ProbedOptions
    # header keys left out at these values, so that files written before the option existed
    # stay byte-identical
    header_omits: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **options: Any):
        super().__init__()
        self.opts = opts = self.Options(**options)
        gamma = opts.gamma
        self.preset, self.start_factor, self.scale = opts.preset, opts.start_factor, opts.scale
        self.cooldown, self.recheck, self.brake = opts.cooldown, opts.recheck, opts.brake
        self.first_loss: float | None = None  # the run's first training loss (the brake's base)
        self.braked: list[int] = []  # the steps at which the brake cut the scale
        self.jumped = False  # the last step's loss jumped (cut if the next one stays up)
        self.frozen = False
        # where gamma came from: the recipe ("option"), or a calibration already done in this
        # object or in the file it was loaded from ("calibrated"); None: not set yet
        self.gamma_source: Literal["option", "calibrated"] | None = (
            "option" if gamma is not None else None)
        g = float(gamma if gamma is not None else 1.0)
        self.log_gamma = nn.Parameter(torch.tensor(math.log(g)), requires_grad=False)
        self.register_buffer("ref_lr", torch.tensor(g / 2))
        self.state: Any = None
        self.total_steps = 0
        self.probe: Any = None  # the ProbeResult that set gamma, if any

    # -- subclasses -------------------------------------------------------------------------
    def initial_state(self, device: torch.device) -> Any:
        return None

    def raw(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """``(sigmoid output in (0, 1), next state)`` for one normalised loss."""
        raise NotImplementedError

    # -- the scale --------------------------------------------------------------------------
    @property
    def gamma(self) -> torch.Tensor:
        """The current bound of the output (a detached value; the graph goes through log_gamma)."""
        return self.log_gamma.detach().exp()

    def set_gamma(self, gamma: float, ref_lr: float | None = None) -> None:
        with torch.no_grad():
            self.log_gamma.fill_(math.log(float(gamma)))
            self.ref_lr.fill_(float(ref_lr if ref_lr is not None else gamma / 2))

    def rescale(self, factor: float) -> None:
        """Multiply the LR scale (and its reference) by ``factor``."""
        with torch.no_grad():
            self.log_gamma.add_(math.log(factor))
            self.ref_lr.mul_(factor)

    def inputs(self, loss_input: torch.Tensor, step: int, total_steps: int) -> torch.Tensor:
        """What the net reads at 0-based ``step`` of ``total_steps``: the normalised loss."""
        return loss_input.to(self.ref_lr.dtype)

    def forward(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        p, state = self.raw(x, state)
        return self.log_gamma.exp() * p, state

    def calibrate(self, run: RunInfo) -> None:
        """Set gamma for this run unless the recipe fixed it (see the module docstring)."""
        if self.gamma_source == "option":
            return
        if self.scale == "task" or run.probe is None:
            if self.gamma_source is None:
                self.set_gamma(float(run.task.default_gamma))
        else:
            self.probe = run.probe()
            start = self.probe.lr * self.start_factor
            if self.gamma_source == "calibrated":  # keep the learned shape, move its start
                self.rescale(start / float(self.ref_lr))
            else:
                self.set_gamma(2 * start, ref_lr=start)
        self.gamma_source = "calibrated"

    # -- the LRPolicy / HypergradientLearner protocol
    # -----------------------------------------------
    def start(self, run: RunInfo) -> None:
        self.total_steps = run.total_steps
        self.to(run.device)
        self.calibrate(run)
        self.state = self.initial_state(run.device)
        self.first_loss, self.braked, self.jumped = None, [], False

    def recheck_step(self, total_steps: int) -> int | None:
        """The step before which the engine checks the LR reached (``recheck`` of the run)."""
        step = round(self.recheck * total_steps)
        return step if step > 0 else None

    def envelope(self, step: int, total_steps: int) -> float:
        """The factor on the net's output at 0-based ``step`` of ``total_steps`` (the cool-down)."""
        return cooldown_factor(step, total_steps, self.cooldown)

    def lr(self, ctx: StepContext) -> float:
        self._brake(ctx)
        with torch.no_grad():
            lr, self.state = self(self.inputs(ctx.loss_input, ctx.step, self.total_steps),
                                  self.state)
        return float(lr) * self.envelope(ctx.step, self.total_steps)

    def _brake(self, ctx: StepContext) -> None:
        """A start far above the edge of stability kills a net within a few dozen steps (the
        MNIST-1D MLP at 10x its probed LR sits at chance from step ~20 on, and no later LR
        revives it; cut at step 10 it recovers), before any check part-way in can act. Its
        sign is early and cheap: the loss jumps above where it started. At most two cuts (10x):
        uncapped, Adam on the character LM (hard suite, seed 0) kept jumping after each cut and
        was cut every 3 steps from 0.1 to 1e-7 (bpc 8.1)."""
        if not self.brake or ctx.step >= self.brake * self.total_steps:
            return
        loss = float(ctx.loss)
        if self.first_loss is None:
            self.first_loss = loss
            return
        # a jump that the next step does not undo: a language model at a good LR spikes for
        # one step (8.9 -> 15.5 -> 7.9 at LR 28) and must not be braked (cut there, its
        # perplexity rose from 453 to 550, CPU suite, 3 seeds)
        held, self.jumped = jump_step(self.first_loss, self.jumped, loss,
                                      JUMP if self.probe is None else self.probe.jump)
        if (held and len(self.braked) < BRAKE_CUTS
                and (not self.braked or ctx.step - self.braked[-1] >= BRAKE_GAP)):
            self.rescale(1 / math.sqrt(10))
            self.braked.append(ctx.step)

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        pass

    # -- the Resumable protocol: what a checkpoint keeps ------------------------------------
    # besides theta with log_gamma and ref_lr (moved by meta-updates, the brake and the
    # recheck): the carried LSTM state and the brake's memory. The rest start() sets again
    # from the recipe and the run (total_steps, the probe's result, where gamma came from).
    run_state_attributes = ("state", "first_loss", "braked", "jumped")

    def run_state(self) -> dict[str, Any]:
        theta = {k: v.detach().clone() for k, v in nn.Module.state_dict(self).items()}
        return {"theta": theta, **save_attributes(self, self.run_state_attributes)}

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        # nn.Module's own loader, in place (the meta-optimizer holds theta): the override
        # below is for net files, where a recipe's gamma wins over the file's
        nn.Module.load_state_dict(self, state["theta"])
        load_attributes(self, state, self.run_state_attributes)

    def options(self) -> dict[str, Any]:
        """The resolved options that rebuild this schedule, in its schema's order (saved in a
        net file's header). Never gamma: the scale travels with theta (``log_gamma``,
        ``ref_lr``), and a header that repeated it could disagree with them."""
        omits = self.header_omits
        return {k: v for k, v in self.opts.model_dump(exclude={"gamma"}).items()
                if k not in omits or v != omits[k]}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False):
        """Load theta; a recipe's gamma wins over the file's."""
        state = dict(state_dict)
        if self.gamma_source == "option":  # a recipe's gamma wins over the file's
            state["log_gamma"] = self.log_gamma.detach().clone()
            state["ref_lr"] = self.ref_lr.clone()
        else:
            self.gamma_source = "calibrated"
        with torch.no_grad():
            return super().load_state_dict(state, strict=strict, assign=assign)


class LossToLR(ProbedSchedule):
    """A net from the (normalised) training loss to an LR in ``[0, gamma]``, whose theta the
    engine meta-learns by Algorithm 1 (the :class:`metalr.contracts.protocols.HypergradientLearner`
    protocol): MLR-SNet and the MLP variant."""

    learns_by: Literal["hypergradient", "self"] = "hypergradient"
    Options: ClassVar[type[ProbedOptions]] = ScaleOptions
    header_omits: ClassVar[Mapping[str, Any]] = {"progress": False}
    opts: ScaleOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        opts = self.opts
        self.log_gamma.requires_grad_(opts.learn_scale)
        self.learn_scale, self.scale_lr = opts.learn_scale, opts.scale_lr
        self.min_meta_updates = opts.min_meta_updates
        self.progress = opts.progress
        self.num_inputs = 2 if self.progress else 1  # the loss, and t/T with `progress`

    def inputs(self, loss_input: torch.Tensor, step: int, total_steps: int) -> torch.Tensor:
        """The normalised loss, and with ``progress`` the share of the run done, t/T."""
        loss = loss_input.to(self.ref_lr.dtype)
        if not self.progress:
            return loss
        done = torch.tensor(step / max(1, total_steps), dtype=loss.dtype, device=loss.device)
        return torch.stack([loss.reshape(()), done])

    def meta_parameters(self):
        net = [p for name, p in self.named_parameters() if name != "log_gamma"]
        groups: list[dict[str, Any]] = [{"params": net}]
        if self.learn_scale:
            groups.append({"params": [self.log_gamma], "lr": self.scale_lr, "weight_decay": 0.0})
        return groups

    def meta_period(self, run: RunInfo) -> int:
        twice_an_epoch = max(1, run.steps_per_epoch // 2)
        if not self.min_meta_updates:
            return twice_an_epoch
        active = max(1, round(run.total_steps * (1 - self.cooldown)))
        return max(1, min(twice_an_epoch, active // self.min_meta_updates))

    def meta_active(self, step: int) -> bool:
        return self.envelope(step, self.total_steps) >= 1.0

    def virtual_lr(self, ctx: StepContext) -> torch.Tensor:
        lr, _ = self(self.inputs(ctx.loss_input, ctx.step, self.total_steps), self.state)
        return lr * self.envelope(ctx.step, self.total_steps)
