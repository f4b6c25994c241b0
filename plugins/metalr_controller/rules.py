"""What acting needs of a controller: its rules, apart from PPO, the policy net and saving.

The actor and the env (and through the actor, the hand-loop scheduler) are written against this
Protocol rather than :class:`~.policy.LRController`, so none of them imports policy.py (which
imports them): the plugin's modules import one way only.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from metalr.contracts.protocols import RunInfo

from .features import Features


class ControllerRules(Protocol):
    """How a controller sees a run and turns an action into an LR (:class:`~.policy.LRController`
    is one)."""

    act_every: int  # K: training steps between two actions
    reward_offset: float  # the env's reward is ``reward_offset - meta loss``
    observation_space: Any  # gymnasium Box of the normalised features
    action_space: Any  # gymnasium Box of the action in [-1, 1]

    def make_features(self) -> Features: ...

    def apply(self, lr: float, action: float) -> float: ...

    def normalise(self, raw: np.ndarray, update: bool) -> np.ndarray: ...

    def initial_lr_for(self, run: RunInfo) -> float: ...

    def deterministic_action(self, obs: np.ndarray) -> float: ...
