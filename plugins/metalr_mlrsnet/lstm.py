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

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, Field, model_validator
from torch import nn

from .base import LossToLR, ProbedOptions, ScaleOptions

Cell = Literal["concat", "official"]


class LSTMShape(BaseModel):
    """The LSTM's shape, a base of :class:`MLRSNetOptions` listed after :class:`ScaleOptions`
    so that its fields come first, as in a net file's header."""

    hidden: int = Field(40, ge=1, description="LSTM hidden size (paper: 40; authors' nets: 50)")
    layers: int = Field(1, ge=1, description="stacked LSTM layers")
    cell: Cell = Field("concat", description="concat: W2 ReLU(W1 [h; x]); official: the "
                       "authors' fc_i2h(x) + fc_h2h(h), as in their released nets")
    width: int | None = Field(None, ge=1, description="official cell: width of the ReLU "
                              "pre-layers (authors: 25); unset: hidden // 2")
    skip: bool = Field(False, description="the output layer reads the net's inputs besides the "
                       "LSTM's state (with progress, a decay in t/T is then one weight away)")

    @model_validator(mode="after")
    def _fill_width(self) -> LSTMShape:
        # only the official cell has pre-layers of their own width (concat's is `hidden`)
        if self.cell != "official":
            self.width = None
        elif self.width is None:
            self.width = max(1, self.hidden // 2)
        return self


class MLRSNetOptions(ScaleOptions, LSTMShape):
    """MLR-SNet's options: the LSTM's shape, then the scale options of every loss-to-LR net."""


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
    """MLR-SNet: stacked LSTM cells from the loss to the LR (the module docstring)."""

    Options: ClassVar[type[ProbedOptions]] = MLRSNetOptions
    # a concat net's header has no cell or width: files from before the option stay unchanged
    header_omits: ClassVar[Mapping[str, Any]] = {**LossToLR.header_omits, "cell": "concat",
                                                 "width": None, "skip": False}
    opts: MLRSNetOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        hidden, layers = self.opts.hidden, self.opts.layers
        self.hidden, self.cell, self.width = hidden, self.opts.cell, self.opts.width
        cells: list[nn.Module] = []
        for i in range(layers):
            inputs = self.num_inputs if i == 0 else hidden
            cells.append(_OfficialCell(inputs, hidden, self.width)
                         if self.cell == "official" else _ConcatCell(inputs, hidden))
        self.cells = nn.ModuleList(cells)
        self.skip = self.opts.skip
        # W3 (the authors' layer3); with `skip` it reads the inputs too
        self.out = nn.Linear(hidden + (self.num_inputs if self.skip else 0), 1)

    def initial_state(self, device):
        zeros = torch.zeros(1, self.hidden, device=device, dtype=self.out.weight.dtype)
        return [(zeros, zeros) for _ in self.cells]

    def raw(self, x, state):
        if state is None:
            state = self.initial_state(x.device)
        inp = x.reshape(1, -1)
        new_state = []
        for cell, (h, c) in zip(self.cells, state):
            h, c = cell(inp, h, c)
            new_state.append((h.detach(), c.detach()))
            inp = h
        if self.skip:
            inp = torch.cat([inp, x.reshape(1, -1)], dim=1)
        return torch.sigmoid(self.out(inp)).reshape(()), new_state
