"""The meta loss K steps ahead: a longer look against the one-step objective's bias to small LRs.

One step ahead, a smaller LR almost always wins (the loss's curvature and the batch noise cost
more at once than the progress pays; Wu et al. 2018, "Understanding short-horizon bias in
stochastic meta-optimization"). K steps at the same LR, from the current weights and optimizer
state, on K-1 further training batches, then the meta loss: its derivative in the LR carries
the curvature through all K steps (Hessian-vector products through higher's differentiable
optimizer). Cost per meta-update: K forwards and K double backwards; memory: K steps' graphs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from metalr.contracts.protocols import Lookahead


class UnrollOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(5, ge=1, le=100, description="steps looked ahead (1: the one-step objective)")


class Unroll:
    """L_meta(w_{t+K}(lr)): the first step with this batch's gradient g_t, K - 1 more on further
    training batches (their gradients taken at the virtual weights), all at one LR."""

    def __init__(self, **options: Any):
        """Options: see :class:`UnrollOptions` (validated here: a bad or unknown one fails)."""
        self.k = UnrollOptions(**options).k

    def meta_loss(self, look: Lookahead, lr: torch.Tensor) -> torch.Tensor:
        steps = look.steps(lr)
        weights = steps.first()
        for k in range(1, self.k):
            batch = look.train_batch(k)
            weights = steps.next(lambda w, b=batch: look.train_loss(w, b), look.clip_grad_norm)
        return look.meta_loss(weights)

    def run_state(self) -> dict[str, Any]:
        """Nothing carries from one meta-update to the next: K is the recipe's."""
        return {}

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        pass
