"""MLR-SNet (Shu et al.), paper Eq. 7.

Gates are computed from ``W2 ReLU(W1 [h_{t-1}; x_t])`` in the order input, forget, output,
candidate (the paper's order; the reference code mixes two orders). The hidden state is zeroed
once when a run starts, then carried across batches, epochs and meta-updates and detached after
every step: truncated BPTT of length one, as in the reference code. Carrying it lets the net see
where in training it is; detaching it keeps a meta-update's cost independent of the step count.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from .base import LossToLR, ScaleOptions


class MLRSNetOptions(ScaleOptions):
    hidden: int = Field(40, ge=1, description="LSTM hidden size (paper: 40)")
    layers: int = Field(1, ge=1, description="stacked LSTM layers")


class _Cell(nn.Module):
    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.pre = nn.Linear(hidden + inputs, hidden)  # W1
        self.gates = nn.Linear(hidden, 4 * hidden)  # W2

    def forward(self, x, h, c):
        z = self.gates(torch.relu(self.pre(torch.cat([h, x], dim=-1))))
        i, f, o, g = z.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class MLRSNet(LossToLR):
    def __init__(self, hidden: int = 40, layers: int = 1, **scale):
        super().__init__(**scale)
        self.hidden = hidden
        self.cells = nn.ModuleList(_Cell(1 if i == 0 else hidden, hidden) for i in range(layers))
        self.out = nn.Linear(hidden, 1)  # W3

    def initial_state(self, device):
        zeros = torch.zeros(1, self.hidden, device=device, dtype=self.out.weight.dtype)
        return [(zeros, zeros) for _ in self.cells]

    def options(self):
        return {"hidden": self.hidden, "layers": len(self.cells), **super().options()}

    def raw(self, x, state):
        if state is None:
            state = self.initial_state(x.device)
        inp = x.reshape(1, 1)
        new_state = []
        for cell, (h, c) in zip(self.cells, state):
            h, c = cell(inp, h, c)
            new_state.append((h.detach(), c.detach()))
            inp = h
        return torch.sigmoid(self.out(inp)).reshape(()), new_state
