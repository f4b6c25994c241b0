"""The memoryless ablation of MLR-SNet: the same input and output, an MLP in between."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, Field
from torch import nn

from .base import LossToLR, ProbedOptions, ScaleOptions


class MLPShape(BaseModel):
    """The MLP's shape, a base of :class:`MLPNetOptions` listed after :class:`ScaleOptions` so
    that its fields come first, as in a net file's header."""

    hidden: int = Field(40, ge=1)
    layers: int = Field(2, ge=1, description="hidden layers")


class MLPNetOptions(ScaleOptions, MLPShape):
    """The MLP variant's options: its shape, then the scale options of every loss-to-LR net."""


class MLPNet(LossToLR):
    Options: ClassVar[type[ProbedOptions]] = MLPNetOptions
    opts: MLPNetOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.hidden, self.layers = self.opts.hidden, self.opts.layers
        dims = [self.num_inputs] + [self.hidden] * self.layers
        mods: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*mods, nn.Linear(dims[-1], 1))

    def raw(self, x, state):
        return torch.sigmoid(self.net(x.reshape(1, -1))).reshape(()), None
