"""DoG with the iterate averaging its authors call crucial, evaluated at the averaged weights.

``dog-optimizer`` is used as its README shows: ``PolynomialDecayAverager(model)`` stepped after
every ``optimizer.step()``, with ``averager.averaged_model`` evaluated. A metalr optimizer
factory sees only the parameters, not the model, so the averager is given a parameter-only
module that holds the very same parameter objects; its deep copy carries the average. The
optimizer's ``train()`` / ``eval()`` then swap the averaged values into the live parameters and
back, which the engine already calls around evaluation (as for Schedule-Free).

Buffers (BatchNorm running statistics) are not parameters and so are not averaged: the
averaged weights are evaluated with the training model's buffers.

This module imports ``dog``; :mod:`metalr_alternatives.optimizers` imports it lazily.
"""

from __future__ import annotations

from typing import Any

import torch
from dog import DoG, LDoG, PolynomialDecayAverager
from torch import nn


class _AveragedMixin:
    """Adds a polynomial-decay average of the parameters and train()/eval() to a DoG class."""

    def __init__(self, params: Any, averager_gamma: float = 8.0, **options: Any):
        super().__init__(params, **options)
        self._live = [p for group in self.param_groups for p in group["params"]]
        holder = nn.ParameterList(self._live)  # the same parameter objects, not copies
        self.averager = PolynomialDecayAverager(holder, gamma=averager_gamma)
        for p in self.averager.averaged_model.parameters():
            p.requires_grad_(False)
        self._backup: list[torch.Tensor] | None = None

    @property
    def averaged_parameters(self) -> list[torch.Tensor]:
        """The current average, in the order of the param groups' parameters."""
        return list(self.averager.averaged_model.parameters())

    @property
    def evaluating(self) -> bool:
        return self._backup is not None

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if self.evaluating:
            raise RuntimeError("the DoG optimizer is in eval mode (averaged weights swapped in); "
                               "call optimizer.train() before optimizer.step()")
        loss = super().step(closure)
        self.averager.step()
        return loss

    @torch.no_grad()
    def eval(self) -> None:
        """Swap the averaged weights into the parameters (idempotent)."""
        if self.evaluating:
            return
        self._backup = [p.detach().clone() for p in self._live]
        for p, avg in zip(self._live, self.averaged_parameters):
            p.copy_(avg)

    @torch.no_grad()
    def train(self) -> None:
        """Put the training weights back (idempotent)."""
        if not self.evaluating:
            return
        for p, saved in zip(self._live, self._backup):
            p.copy_(saved)
        self._backup = None

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["averager"] = self.averager.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        averager = state_dict.pop("averager", None)
        super().load_state_dict(state_dict)
        if averager is not None:
            self.averager.load_state_dict(averager)


class AveragedDoG(_AveragedMixin, DoG):
    """DoG (one step size for all parameters) evaluated at its polynomial-decay average."""


class AveragedLDoG(_AveragedMixin, LDoG):
    """Layer-wise DoG (one step size per tensor) evaluated at its polynomial-decay average."""
