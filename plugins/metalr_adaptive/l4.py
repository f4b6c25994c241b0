"""L4 (Rolinek & Martius 2018): a Polyak-like step that aims to remove a fixed fraction of the
loss that is still removable, measured against a slowly forgotten minimum of the seen losses.

``eta = alpha * (L - gamma * L_min) / (<g, v> + eps)``, with ``v`` the direction the base
optimizer will apply this step (plain SGD: the batch gradient; heavy-ball / Nesterov: its
momentum direction; Adam: ``m_hat / (sqrt(v_hat) + eps)``), computed from the optimizer's state
and the batch gradient. ``L_min`` starts at ``init_factor * L_0``, is ``min(L_min, L)`` before
each step and is multiplied by ``1 + 1 / forget_time`` after it, the order of the authors'
code. ``g`` is, as in the authors' code (and its PyTorch port), a bias-corrected moving average
of the batch gradients (decay ``grad_average``, 0.9 there): the raw batch gradient's noise
inflates ``<g, v>`` and shrinks the LR. ``grad_average: 0`` gives the raw-gradient formula.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from metalr.contracts.protocols import RunInfo, StepContext
from metalr.engine.run_state import SavedAttributes

from .directions import dot, optimizer_kind, update_direction


class L4Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.15, gt=0, description="fraction of the 'optimal' step (paper 0.15)")
    gamma: float = Field(0.9, ge=0, le=1, description="fraction of L_min taken as reachable")
    init_factor: float = Field(0.75, gt=0, le=1, description="L_min starts at init_factor * L_0")
    forget_time: float = Field(
        1000.0, gt=0, description="L_min is multiplied by 1 + 1/forget_time after every step"
    )
    eps: float = Field(1e-12, ge=0, description="added to <g, v>")
    grad_average: float = Field(
        0.9, ge=0, lt=1,
        description="decay of the bias-corrected gradient average used as g; 0: the batch gradient",
    )
    max_lr: float | None = Field(None, gt=0, description="optional cap on the LR")


class L4(SavedAttributes):
    """An LR policy; L_min is carried across epochs, as in the authors' code. Options: see
    :class:`L4Options` (``L4(alpha=0.15)``)."""

    run_state_attributes = ("min_loss", "_grad_avg", "_avg_steps")  # L_min, g's average

    def __init__(self, **options: Any):
        self.options = L4Options(**options)
        self._checked = False
        self._reset()

    def _reset(self) -> None:
        self.min_loss: float | None = None
        self._grad_avg: list[torch.Tensor] | None = None
        self._avg_steps = 0

    def start(self, run: RunInfo) -> None:
        optimizer_kind(run.optimizer, "l4")
        self._checked = True
        self._reset()

    def lr(self, ctx: StepContext) -> float:
        o = self.options
        if not self._checked:
            optimizer_kind(ctx.optimizer, "l4")
            self._checked = True
        loss = float(ctx.loss)
        if not math.isfinite(loss):
            raise FloatingPointError(f"l4: the training loss is {loss} at step {ctx.step}")
        if self.min_loss is None:
            self.min_loss = o.init_factor * loss
        else:
            self.min_loss = min(self.min_loss, loss)
        with torch.no_grad():
            direction = update_direction(ctx.optimizer, ctx.params, ctx.grads)
            slope = dot(self._gradient_estimate(ctx.grads), direction) + o.eps
        # A direction that is not a descent direction has no L4 step: take none.
        eta = o.alpha * (loss - o.gamma * self.min_loss) / slope if slope > 0 else 0.0
        if math.isnan(eta) or (eta == math.inf and o.max_lr is None):
            raise FloatingPointError(f"l4: the LR became {eta} at step {ctx.step}; set max_lr")
        self.min_loss *= 1 + 1 / o.forget_time
        eta = max(eta, 0.0)
        return eta if o.max_lr is None else min(eta, o.max_lr)

    def _gradient_estimate(self, grads: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        b = self.options.grad_average
        if b == 0:
            return grads
        if self._grad_avg is None:
            self._grad_avg = [torch.zeros_like(g) for g in grads]
        for avg, g in zip(self._grad_avg, grads, strict=True):
            avg.mul_(b).add_(g.detach(), alpha=1 - b)
        self._avg_steps += 1
        correction = 1 - b**self._avg_steps
        return [avg / correction for avg in self._grad_avg]

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        pass
