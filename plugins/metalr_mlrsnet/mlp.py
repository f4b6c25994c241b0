"""The memoryless ablation of MLR-SNet: the same input and output, an MLP in between."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .base import LossToLR


class MLPNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(40, ge=1)
    layers: int = Field(2, ge=1, description="hidden layers")
    gamma: float | None = Field(None, gt=0, description="LR scale; unset = the task's default")


class MLPNet(LossToLR):
    def __init__(self, hidden: int = 40, layers: int = 2, gamma: float | None = None):
        super().__init__(gamma)
        dims = [1] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*mods, nn.Linear(dims[-1], 1))

    def forward(self, x, state):
        return self.gamma * torch.sigmoid(self.net(x.reshape(1, 1))).reshape(()), None
