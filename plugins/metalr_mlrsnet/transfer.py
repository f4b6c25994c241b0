"""Meta-test of saved MLR-SNets inside the engine (paper Eq. 12 and Appendix C).

k frozen nets are switched over k equal phases of the new run's ``epochs * steps_per_epoch``
steps, through :class:`metalr.scheduler.learned.PhasedNets`: the same code as the plain-loop
:class:`metalr.LearnedLR`, so a recipe and a hand-written loop give the same LRs.

This is a plain LR policy, not a meta-learner: it has no ``virtual_lr`` or ``meta_parameters``
(it is not a :class:`metalr.contracts.protocols.HypergradientLearner`), so the engine never builds a
hypergradient for it, never meta-trains it and never saves it; theta stays as loaded.

The LR scale at transfer time (``scale: auto``, the default) comes from the new run itself: the
short probe of :mod:`metalr.engine.probe` chooses this run's start LR, and every net is rescaled by
``start / ref_lr`` (``ref_lr``: the LR the nets were calibrated to when meta-trained), so the
schedule keeps its shape relative to its start on any model and optimizer. ``scale: saved``
keeps the absolute scale the nets were meta-trained with; a ``gamma`` option sets the bound of
every net's output directly and wins over both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from metalr.contracts.protocols import RunInfo, StepContext
from metalr.engine.run_state import SavedAttributes
from metalr.scheduler.learned import PhasedNets, choose_nets, load_nets, resolve_nets

DEFAULT_NETS = "mnist1d-mlp"


class TransferOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    nets: list[str] = Field(
        default_factory=lambda: [DEFAULT_NETS], min_length=1,
        description="nets, one per phase, in order: safetensors files, folders of them "
                    "(`metalr nets import --out`), the authors' released .pth files, or shipped "
                    "names (`metalr nets`); a folder or a shipped name stands for all its nets")
    scale: Literal["auto", "saved"] = Field(
        "auto", description="auto: rescale the nets to this run's probed LR; saved: keep theirs")
    gamma: float | None = Field(
        None, gt=0, description="set the bound of every net's output (wins over scale)")
    k: int | None = Field(
        None, ge=1, description="use k of the nets, chosen by the paper's ceiling rule (App. C) "
        "from the meta-train epochs in their names (theta-epochNNNN); 1: the last alone; "
        "unset: all of them")

    @model_validator(mode="after")
    def _nets_exist(self) -> TransferOptions:
        try:  # a missing file or unknown name fails `metalr validate`, not the run
            files = resolve_nets(self.nets)
            if self.k is not None:
                choose_nets(files, self.k)
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        return self


class MLRSNetTransfer(SavedAttributes):
    """Frozen MLR-SNets from earlier meta-training, one per equal phase of this run; options:
    see :class:`TransferOptions` (``MLRSNetTransfer(nets=["mnist1d-mlp"], k=1)``)."""

    # the phases' step, carried LSTM state and every net's scale (theta stays as loaded)
    run_state_attributes = ("phases",)

    def __init__(self, **options: Any):
        o = TransferOptions(**options)
        files = resolve_nets(o.nets)
        self.phases = PhasedNets(load_nets(files if o.k is None else choose_nets(files, o.k)))
        self.scale, self.probe, self.gamma_given = o.scale, None, o.gamma is not None
        if o.gamma is not None:
            self.phases.set_gamma(o.gamma)

    def start(self, run: RunInfo) -> None:
        if self.scale == "auto" and not self.gamma_given and run.probe is not None:
            self.probe = run.probe()
            self.phases.rescale_to(self.probe.lr)
        self.phases.start(run.total_steps, run.device)

    def lr(self, ctx: StepContext) -> float:
        return self.phases.lr(ctx.loss_input)

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        pass
