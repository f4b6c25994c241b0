"""torch's own SGD, Adam and AdamW, so that `higher` can build their differentiable copies.

The LR is not an option: the policy sets it on every step (for Adam that is the paper's
Appendix F, "MLR-SNet on top of Adam").
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

# Placeholder until the policy sets the first step's LR; never used for a step.
_UNSET_LR = 0.0


class SGDOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    dampening: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDOptions:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening 0")
        return self


class AdamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _betas_in_range(self) -> AdamOptions:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        return self


def build_sgd(params: Iterable[torch.Tensor], **options) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=_UNSET_LR, **options)


class AdamWOptions(AdamOptions):
    weight_decay: float = Field(1e-2, ge=0, description="decoupled weight decay (torch's default)")


def build_adam(params: Iterable[torch.Tensor], **options) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=_UNSET_LR, **options)


def build_adamw(params: Iterable[torch.Tensor], **options) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=_UNSET_LR, **options)
