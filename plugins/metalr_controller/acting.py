"""The LR the controller sets, and when it looks: shared by the env and the frozen policy.

The LR of a block of K steps is fixed when the block starts. At the last step of a block the
actor observes (the features of that step, before its update: the meta loss too) and, when it has
a policy to ask, sets the LR of the next block. The env does the asking itself (PPO samples the
action outside), which is why both paths give the same LR trace for the same actions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from metalr.contracts.protocols import RunInfo, StepContext

from .rules import ControllerRules


class Actor:
    """An LR policy for one run: holds the current LR, observes at every block's end."""

    def __init__(self, controller: ControllerRules, act: Callable[[np.ndarray], float] | None,
                 update_stats: bool):
        self.controller, self.act, self.update_stats = controller, act, update_stats
        self.features = controller.make_features()
        self.current = 0.0
        self.total_steps = 0
        self.loss_scale = 1.0
        self.obs: np.ndarray | None = None
        self.meta_loss = math.nan
        self.observed = False

    def start(self, run: RunInfo) -> None:
        self.total_steps, self.loss_scale = run.total_steps, float(run.task.loss_scale)
        self.current = self.controller.initial_lr_for(run)
        self.features.reset()

    def lr(self, ctx: StepContext) -> float:
        lr = self.current
        block_end = (ctx.step + 1) % self.controller.act_every == 0
        self.observed = block_end or ctx.step + 1 >= self.total_steps
        if self.observed:
            if ctx.meta_loss is None:
                raise RuntimeError("the LR controller needs StepContext.meta_loss")
            self.meta_loss = ctx.meta_loss() / self.loss_scale
            raw = self.features(ctx, lr, self.meta_loss)
            self.obs = self.controller.normalise(raw, update=self.update_stats)
            if self.act is not None and block_end:
                self.current = self.controller.apply(lr, self.act(self.obs))
        return lr

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """What decides the rest of the run besides the controller's own state: the current LR,
        the last observation and meta loss, the features' averages and previous weights."""
        return {"current": float(self.current), **self.features.state_dict(),
                "meta_loss": float(self.meta_loss),
                "obs": None if self.obs is None else torch.from_numpy(np.array(self.obs))}

    def load_state_dict(self, state: Mapping[str, Any],
                        params: Sequence[torch.Tensor]) -> None:
        """``params``: the run's trained parameters (the previous weights go to their device)."""
        self.current = float(state["current"])
        self.features.load_state_dict(state, params)
        self.meta_loss = float(state["meta_loss"])
        self.obs = None if state["obs"] is None else state["obs"].numpy()
