"""MLR-SNet (Shu et al.), paper Eq. 7, in two cells that are different function classes.

- ``concat`` (metalr's first cell): gates from ``W2 ReLU(W1 [h_{t-1}; x_t])``, order input,
  forget, output, candidate (the paper's Eq. 7 read literally).
- ``official`` (the authors' code and their released nets): gates from
  ``fc_i2h(x_t) + fc_h2h(h_{t-1})``, each map ``Linear(., width) - ReLU - Linear(width, 4 hidden)``,
  chunks in the order input, forget, candidate, output, no forget-gate offset. Its ReLU acts on
  the input and on the state separately, so it is not a special case of ``concat`` (nor the
  reverse). ``metalr nets import`` turns the authors' files into nets of this cell.

The hidden state is zeroed once when a run starts, then carried across batches, epochs and
meta-updates and detached after every step: truncated BPTT of length one, as in the reference
code. Carrying it lets the net see where in training it is; detaching it keeps a meta-update's
cost independent of the step count. docs/design.md says which cell is the default and why.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from .base import LossToLR, ScaleOptions

Cell = Literal["concat", "official"]


class MLRSNetOptions(ScaleOptions):
    hidden: int = Field(40, ge=1, description="LSTM hidden size (paper: 40; authors' nets: 50)")
    layers: int = Field(1, ge=1, description="stacked LSTM layers")
    cell: Cell = Field("concat", description="concat: W2 ReLU(W1 [h; x]); official: the "
                       "authors' fc_i2h(x) + fc_h2h(h), as in their released nets")
    width: int | None = Field(None, ge=1, description="official cell: width of the ReLU "
                              "pre-layers (authors: 25); unset: hidden // 2")


class _ConcatCell(nn.Module):
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


def _pre_map(inputs: int, width: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, 4 * hidden))


class _OfficialCell(nn.Module):
    """The authors' meta-test cell; parameter names match their files (``fc_i2h.0.weight``...)."""

    def __init__(self, inputs: int, hidden: int, width: int):
        super().__init__()
        self.fc_i2h = _pre_map(inputs, width, hidden)
        self.fc_h2h = _pre_map(hidden, width, hidden)

    def forward(self, x, h, c):
        i, f, g, o = (self.fc_i2h(x) + self.fc_h2h(h)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class MLRSNet(LossToLR):
    def __init__(self, hidden: int = 40, layers: int = 1, cell: Cell = "concat",
                 width: int | None = None, **scale):
        super().__init__(**scale)
        self.hidden, self.cell = hidden, cell
        self.width = (width or max(1, hidden // 2)) if cell == "official" else None
        if cell == "official":
            cells = [_OfficialCell(self.num_inputs if i == 0 else hidden, hidden, self.width)
                     for i in range(layers)]
        elif cell == "concat":
            cells = [_ConcatCell(self.num_inputs if i == 0 else hidden, hidden)
                     for i in range(layers)]
        else:
            raise ValueError(f"cell must be 'concat' or 'official', got {cell!r}")
        self.cells = nn.ModuleList(cells)
        self.out = nn.Linear(hidden, 1)  # W3 (the authors' layer3)

    def initial_state(self, device):
        zeros = torch.zeros(1, self.hidden, device=device, dtype=self.out.weight.dtype)
        return [(zeros, zeros) for _ in self.cells]

    def options(self):
        shape = {"hidden": self.hidden, "layers": len(self.cells)}
        if self.cell != "concat":  # files written before the option existed stay byte-identical
            shape |= {"cell": self.cell, "width": self.width}
        return {**shape, **super().options()}

    def raw(self, x, state):
        if state is None:
            state = self.initial_state(x.device)
        inp = x.reshape(1, -1)
        new_state = []
        for cell, (h, c) in zip(self.cells, state):
            h, c = cell(inp, h, c)
            new_state.append((h.detach(), c.detach()))
            inp = h
        return torch.sigmoid(self.out(inp)).reshape(()), new_state
