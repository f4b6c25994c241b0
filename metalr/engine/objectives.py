"""Algorithm 1's meta-objective: the meta loss one step ahead (Eqs. 9-10).

The engine's default, and what ``meta.objective: one-step`` (plugin ``metalr_objectives``) names.
Other objectives (an unroll over K steps, third parties') implement the same
:class:`metalr.contracts.protocols.MetaObjective`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from metalr.contracts.protocols import Lookahead


class OneStep:
    """L_meta(w_hat(lr)): one virtual step of the real optimizer with this batch's gradient,
    the meta loss there. Biased towards small LRs (a lower LR always looks better one step
    ahead: Wu et al. 2018), and cheap: one extra forward and backward per meta-update."""

    def meta_loss(self, look: Lookahead, lr: torch.Tensor) -> torch.Tensor:
        return look.meta_loss(look.steps(lr).first())

    def run_state(self) -> dict[str, Any]:
        """Nothing carries from one meta-update to the next (``Resumable``)."""
        return {}

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        pass
