"""What the LSTM and MLP meta-learners share: the output scale gamma and the policy plumbing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from metalr.protocols import RunInfo, StepContext


class LossToLR(nn.Module):
    """A net from the (normalised) training loss to an LR in ``[0, gamma]``.

    gamma is a buffer, so it travels with the saved parameters: a net transferred to a new task
    keeps the scale it was meta-trained with unless the recipe names another. When the option is
    left unset it comes from the task at the start of the run (1 for images, 40 for text).
    """

    learns_by: Literal["hypergradient", "self"] = "hypergradient"

    def __init__(self, gamma: float | None):
        super().__init__()
        self.frozen = False
        self._gamma_given = gamma is not None
        self.register_buffer("gamma", torch.tensor(float(gamma if gamma is not None else 1.0)))
        self.state: Any = None

    # -- subclasses -------------------------------------------------------------------------
    def initial_state(self, device: torch.device) -> Any:
        return None

    def forward(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    # -- the LRPolicy / MetaLearner protocol -----------------------------------------------
    def start(self, run: RunInfo) -> None:
        if not self._gamma_given:
            self.gamma.fill_(float(run.task.default_gamma))
        self.to(run.device)
        self.state = self.initial_state(run.device)

    def meta_parameters(self):
        return self.parameters()

    def virtual_lr(self, ctx: StepContext) -> torch.Tensor:
        lr, _ = self(ctx.loss_input.to(self.gamma.dtype), self.state)
        return lr

    def lr(self, ctx: StepContext) -> float:
        with torch.no_grad():
            lr, self.state = self(ctx.loss_input.to(self.gamma.dtype), self.state)
        return float(lr)

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        pass

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        self._gamma_given = self._gamma_given or "gamma" in state_dict
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
