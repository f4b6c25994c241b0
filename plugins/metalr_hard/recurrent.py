"""``gru`` and ``lstm``: recurrent classifiers that read a sequence and classify its last state.

PyTorch's default init is kept on purpose (no orthogonal recurrent weights, no forget-gate
bias): that is what a practitioner gets, and what puts ``seq-recall`` on its plateau.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from metalr.contracts.protocols import ModelSpec


class RecurrentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden_size: int = Field(64, ge=1, description="width of the recurrent state")
    num_layers: int = Field(1, ge=1, description="stacked recurrent layers")


class RecurrentClassifier(nn.Module):
    """``(batch, steps, features) -> (batch, classes)`` from the last step's top state."""

    def __init__(self, cell: Literal["gru", "lstm"], features: int, classes: int,
                 hidden_size: int, num_layers: int):
        super().__init__()
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(features, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # (batch, steps): one feature per step
            x = x.unsqueeze(-1)
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _features(name: str, spec: ModelSpec) -> int:
    if spec.kind != "classification" or len(spec.input_shape) not in (1, 2):
        raise ValueError(f"{name} needs a classification task with (steps,) or (steps, features) "
                         f"inputs, got {spec.kind} inputs of shape {spec.input_shape}")
    return spec.input_shape[1] if len(spec.input_shape) == 2 else 1


def _build(cell: Literal["gru", "lstm"], spec: ModelSpec, options: dict[str, Any]) -> nn.Module:
    o = RecurrentOptions(**options)
    return RecurrentClassifier(cell, _features(cell, spec), spec.num_outputs, o.hidden_size,
                               o.num_layers)


def build_gru(spec: ModelSpec, **options: Any) -> nn.Module:
    """A GRU classifier (options: see :class:`RecurrentOptions`)."""
    return _build("gru", spec, options)


def build_lstm(spec: ModelSpec, **options: Any) -> nn.Module:
    """An LSTM classifier (options: see :class:`RecurrentOptions`)."""
    return _build("lstm", spec, options)
