"""Hypergradient descent on the LR (Baydin et al. 2018): SGD-HD, SGDN-HD and Adam-HD.

The LR follows the one-step hypergradient of the batch loss: since
``w_t = w_{t-1} - a_{t-1} d_{t-1}``, ``dL_t/da = -<g_t, d_{t-1}>`` and
``a_t = a_{t-1} + beta * <g_t, d_{t-1}>``. ``d_{t-1}`` is the direction the base optimizer
actually applied at the previous step (its gradient, Nesterov or Adam direction, weight decay
included), read from its state, so the three variants of the paper are one rule and the
variant only names (and checks) the optimizer it is paired with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from metalr.contracts.protocols import RunInfo, StepContext
from metalr.engine.run_state import SavedAttributes

from .directions import dot, optimizer_kind, update_direction

# Paper defaults (Baydin et al. 2018, Sec. 4): beta 1e-3 for SGD-HD / SGDN-HD, 1e-7 for Adam-HD.
DEFAULT_HYPER_LR = {"sgd": 1e-3, "sgdn": 1e-3, "adam": 1e-7}


class HDOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: Literal["auto", "sgd", "sgdn", "adam"] = Field(
        "auto",
        description="sgd: SGD without Nesterov (heavy-ball momentum allowed); sgdn: SGD with "
        "Nesterov; adam: Adam or AdamW; auto: whichever the base optimizer is",
    )
    lr: float = Field(1e-3, gt=0, description="initial LR a_0 (paper: 1e-3)")
    hyper_lr: float | None = Field(
        None, gt=0, description="hypergradient LR beta; None: 1e-3 for sgd/sgdn, 1e-7 for adam"
    )
    max_lr: float = Field(1.0, gt=0, description="the LR is clamped to [0, max_lr]")

    @model_validator(mode="after")
    def _lr_below_max(self) -> HDOptions:
        if self.lr > self.max_lr:
            raise ValueError(f"lr {self.lr} exceeds max_lr {self.max_lr}")
        return self


class HypergradientDescent(SavedAttributes):
    """An LR policy; the LR is carried across epochs (the paper never resets it). Options: see
    :class:`HDOptions` (``HypergradientDescent(variant="sgdn", lr=0.01)``)."""

    # the carried LR, the last hypergradient and the direction of the last step (the variant
    # and beta come from the recipe and the optimizer at start)
    run_state_attributes = ("current_lr", "hypergradient", "_prev_direction")

    def __init__(self, **options: Any):
        self.options = HDOptions(**options)
        self.variant: str | None = None
        self.hyper_lr: float | None = None
        self.current_lr = self.options.lr
        self.hypergradient: float | None = None
        self._prev_direction: list[torch.Tensor] | None = None

    def start(self, run: RunInfo) -> None:
        self._setup(run.optimizer)

    def _setup(self, optimizer: torch.optim.Optimizer) -> None:
        kind = optimizer_kind(optimizer, "hd")
        wanted = self.options.variant
        if wanted != "auto" and wanted != kind:
            raise ValueError(
                f"hd variant {wanted!r} does not match the base optimizer "
                f"({type(optimizer).__name__}, which is {kind!r}); set variant: {kind} or auto"
            )
        self.variant = kind
        self.hyper_lr = self.options.hyper_lr or DEFAULT_HYPER_LR[kind]
        self.current_lr = self.options.lr
        self.hypergradient = None
        self._prev_direction = None

    def lr(self, ctx: StepContext) -> float:
        if self.variant is None:
            self._setup(ctx.optimizer)
        if self._prev_direction is not None:
            # -dL_t/da_{t-1}: positive when this gradient still agrees with the last step.
            self.hypergradient = dot(ctx.grads, self._prev_direction)
            proposed = self.current_lr + self.hyper_lr * self.hypergradient
            if not math.isfinite(proposed):
                raise FloatingPointError(
                    f"hd: the LR became {proposed} at step {ctx.step} "
                    f"(hypergradient {self.hypergradient}); lower hyper_lr"
                )
            self.current_lr = min(max(proposed, 0.0), self.options.max_lr)
        self._prev_direction = update_direction(ctx.optimizer, ctx.params, ctx.grads)
        return self.current_lr

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        pass
