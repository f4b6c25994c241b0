"""The control for a learned schedule: MLR-SNet's schedule with nothing learned.

Everything that is not meta-learning is kept: the LR probe sets the start, the brake and the
recheck move a wrong one, the last 20% cools down linearly to zero (issue 19). In between the
LR is held at the start: warm-up-free WSD from the probed LR. A learned schedule that does not
beat this, on the same seeds, owes its result to the probe and the cool-down, not the learning.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import ProbedOptions, ProbedSchedule


class ProbedWSD(ProbedSchedule):
    """``gamma / 2`` (MLR-SNet's start) at every step, times the cool-down: not a meta-learner
    (no theta, no meta-updates), so a recipe's ``meta:`` settings do not apply to it. Its
    options are MLR-SNet's scale options, :class:`ProbedOptions`."""

    Options = ProbedOptions

    def raw(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return torch.full((), 0.5, dtype=self.ref_lr.dtype, device=self.ref_lr.device), state
