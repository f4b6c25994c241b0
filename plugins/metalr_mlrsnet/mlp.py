"""The memoryless ablation of MLR-SNet: the same input and output, an MLP in between."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from .base import LossToLR, ScaleOptions


class MLPNetOptions(ScaleOptions):
    hidden: int = Field(40, ge=1)
    layers: int = Field(2, ge=1, description="hidden layers")


class MLPNet(LossToLR):
    def __init__(self, hidden: int = 40, layers: int = 2, **scale):
        super().__init__(**scale)
        self.hidden, self.layers = hidden, layers
        dims = [self.num_inputs] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*mods, nn.Linear(dims[-1], 1))

    def options(self):
        return {"hidden": self.hidden, "layers": self.layers, **super().options()}

    def raw(self, x, state):
        return torch.sigmoid(self.net(x.reshape(1, -1))).reshape(()), None
