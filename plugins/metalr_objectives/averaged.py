"""The meta loss at a running average of the weights: a one-step objective without the reward
for annealing.

One step ahead, a smaller LR wins mostly because it adds less batch noise to the weights at
once (Wu et al. 2018); a cool-down gives that gain anyway at the end of the run, so a
hypergradient that chases it lowers the LR for nothing (docs/design.md, "Short-horizon bias").
An average of the iterates removes most of that noise the way a decay does (Sandler et al.
2023; Polyak averaging). Judged at the average, the noise a step adds is damped by (1 - beta)
squared while its progress is damped by (1 - beta) only, so on a noisy quadratic the greedy LR
is about 1 / (1 - beta) times the one-step objective's: the objective now asks "does this step
move the average the right way?". Cost: two copies of the weights; one forward and backward
per meta-update, as the one-step objective.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from metalr.contracts.protocols import Lookahead


class AveragedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    horizon: float = Field(10.0, ge=1, description="meta-updates the average spans: an EMA of "
                           "the weights with beta = 1 - 1/horizon (1: the one-step objective)")


class Averaged:
    """L_meta(beta m + (1 - beta) w_hat(lr)): the one-step virtual weights w_hat folded into an
    exponential moving average m of the real weights at the meta-updates so far (m starts at
    the first one's); options: see :class:`AveragedOptions`.

    The mean moves once per meta-update, when the real weights it is shown have changed, so
    asking for the meta loss again at the same meta-update (another LR, a finite difference)
    gives the same function of the LR. Memory: two copies of the weights (the mean, and the
    weights last folded in, which also make a resume exact)."""

    def __init__(self, **options: Any):
        self.opts = AveragedOptions(**options)
        self.beta = 1.0 - 1.0 / self.opts.horizon
        self.average: list[torch.Tensor] | None = None
        self.seen: list[torch.Tensor] | None = None  # the real weights last folded in

    def meta_loss(self, look: Lookahead, lr: torch.Tensor) -> torch.Tensor:
        steps = look.steps(lr)
        self._fold(steps.weights)
        mixed = [self.beta * m + (1.0 - self.beta) * w
                 for m, w in zip(self.average, steps.first())]
        return look.meta_loss(mixed)

    def _fold(self, weights: list[torch.Tensor]) -> None:
        if self.seen is not None and all(torch.equal(a, b) for a, b in zip(self.seen, weights)):
            return  # the same meta-update asked again
        self.seen = [w.detach().clone() for w in weights]
        if self.average is None:
            self.average = [w.clone() for w in self.seen]
        else:
            self.average = [self.beta * m + (1.0 - self.beta) * w
                            for m, w in zip(self.average, self.seen)]

    def run_state(self) -> dict[str, Any]:
        """The mean and the weights last folded in carry from one meta-update to the next."""
        return {"average": _copy(self.average), "seen": _copy(self.seen)}

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        self.average, self.seen = _copy(state["average"]), _copy(state["seen"])


def _copy(tensors: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
    return None if tensors is None else [t.clone() for t in tensors]
