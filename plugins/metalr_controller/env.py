"""A gymnasium env whose episode is one training run of the recipe's task and model.

One ``step()`` multiplies the LR by the action's factor, advances training by K steps through
the engine's own :meth:`metalr.engine.algorithm.Engine.step` (no second training loop), and returns
the features at the block's last step with the reward ``offset - meta loss``. The end of the step
budget is ``truncated`` (time ran out, the state is not terminal); a run whose loss stops being
finite is ``terminated`` with a penalty.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from metalr.contracts.protocols import RunInfo
from metalr.engine.algorithm import Engine, TrainingDiverged
from metalr.engine.probe import probe_lr

from .acting import Actor
from .rules import ControllerRules

DIVERGED_REWARD = -10.0

MakeEngine = Callable[[int, Any], Engine]
"""``make_engine(episode, policy)``: a fresh engine (model, optimizer, seed) for one episode."""


class ControllerEnv(gym.Env):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, controller: ControllerRules, make_engine: MakeEngine,
                 on_episode: Callable[[int, Mapping[str, Any]], None] | None = None,
                 update_stats: bool = True):
        super().__init__()
        self.controller, self.make_engine, self.on_episode = controller, make_engine, on_episode
        self.update_stats = update_stats
        self.observation_space = controller.observation_space
        self.action_space = controller.action_space
        self.episode = -1
        self.engine: Engine | None = None

    def steps_per_episode(self) -> int:
        """Env steps in one episode: the first block runs inside ``reset``."""
        engine = self.make_engine(0, Actor(self.controller, None, False))
        cfg = engine.cfg
        total = cfg.epochs * engine.task.num_train_batches(cfg.batch_size)
        return max(1, math.ceil(total / self.controller.act_every) - 1)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.episode = seed if seed is not None else self.episode + 1  # a seed picks the run
        self.actor = Actor(self.controller, None, self.update_stats)
        engine = self.engine = self.make_engine(self.episode, self.actor)
        cfg, task = engine.cfg, engine.task
        spe = task.num_train_batches(cfg.batch_size)
        self.total = cfg.epochs * spe
        probe = functools.partial(
            probe_lr, task, engine.model, engine.optimizer, total_steps=self.total,
            steps_per_epoch=spe, batch_size=cfg.batch_size, meta_batch_size=cfg.meta_batch_size,
            seed=engine.order.seed, clip_grad_norm=cfg.clip_grad_norm)
        self.actor.start(RunInfo(cfg.epochs, spe, engine.optimizer, cfg.device, cfg.seed, task,
                                 probe=functools.cache(probe)))
        self.batches = self._batches()
        self.step_count, self.lrs, self.rewards = 0, [], []
        self._advance()
        return self._obs(), {}

    def _batches(self) -> Iterator[tuple[int, Any]]:
        """The batches in the order :meth:`Engine.fit` draws them (the engine's data order)."""
        engine = self.engine
        last = None
        for epoch, batch in engine.order.batches(engine.task, engine.cfg.batch_size,
                                                 engine.cfg.epochs):
            if epoch != last:
                engine.model.train()
                last = epoch
            yield epoch, batch

    def _advance(self) -> bool:
        """Train until the actor observes; False when training diverged."""
        self.actor.observed = False
        while not self.actor.observed and self.step_count < self.total:
            epoch, batch = next(self.batches)
            try:
                result = self.engine.step(batch, None, step=self.step_count, epoch=epoch)
            except TrainingDiverged:
                return False
            self.lrs.append(result.lr)
            self.step_count += 1
        return math.isfinite(self.actor.meta_loss)

    def _obs(self) -> np.ndarray:
        obs = self.actor.obs
        if obs is None or not np.all(np.isfinite(obs)):
            return np.zeros(self.observation_space.shape, dtype=np.float32)
        return obs

    def step(self, action: np.ndarray):
        self.actor.current = self.controller.apply(self.actor.current, float(np.ravel(action)[0]))
        finite = self._advance()
        reward = (self.controller.reward_offset - self.actor.meta_loss) if finite else DIVERGED_REWARD
        self.rewards.append(float(reward))
        terminated = not finite
        truncated = finite and self.step_count >= self.total
        if (terminated or truncated) and self.on_episode is not None:
            metrics = self.engine.evaluate() if finite else {}
            self.on_episode(self.episode, {"reward": sum(self.rewards), "rewards": self.rewards,
                                           "lrs": self.lrs, "metrics": metrics,
                                           "diverged": not finite})
        return self._obs(), float(reward), terminated, truncated, {}
