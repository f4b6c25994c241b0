"""The LR Controller (Xu, Dai, Kemp, Metz 2019): a PPO policy that rescales the LR every K steps.

Meta-train (:meth:`LRController.train_episodes`): stable-baselines3 PPO on
:class:`~.env.ControllerEnv`; SB3 stores the sampled Gaussian action and computes the PPO ratio
there, and the env maps it to the LR factor, so the ratio is never taken at the transformed
multiplier (a fault of the reference code). Meta-test (:meth:`LRController.lr`): the frozen
policy's mean action, with the observation statistics learned in meta-training; those statistics
are part of :meth:`state_dict`, so a transferred controller sees inputs on the scale it was
trained on (the reference code never saved them).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import gymnasium as gym
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.running_mean_std import RunningMeanStd
from torch import nn

from metalr.contracts.protocols import RunInfo, StepContext

from .acting import Actor
from .features import FEATURES, Features

if TYPE_CHECKING:
    from .controlled import ControlledLR

CLIP_OBS = 10.0
NET_PREFIX = "net."


class ControllerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: list[str] = Field(list(FEATURES), min_length=1,
                                description=f"state features, a subset of {list(FEATURES)}")
    act_every: int = Field(10, ge=1, description="K: training steps between actions")
    action_map: Literal["linear"] = Field("linear", description="how an action becomes the "
                                          "LR factor: linear, 1 + max_change * a")
    max_change: float = Field(0.035, gt=0, lt=1, description="action a in [-1, 1] multiplies "
                              "the LR by 1 + max_change * a (authors: about 0.965..1.035)")
    initial_lr: float | None = Field(None, gt=0, description="LR of the first block; unset: "
                                     "the run's LR probe (docs/design.md), so it transfers")
    min_lr: float = Field(1e-6, gt=0, description="the LR never goes below this")
    max_lr: float = Field(10.0, gt=0, description="the LR never goes above this")
    reward_offset: float = Field(2.0, description="reward = offset - normalised meta loss")
    episodes: int = Field(20, ge=1, description="meta-train: training runs (episodes) of PPO")
    net_arch: list[int] = Field([32, 32], description="hidden sizes of the policy and value MLPs")
    log_std_init: float = Field(-0.5, description="initial log std of the Gaussian action")
    ppo_lr: float = Field(3e-4, gt=0, description="PPO's Adam LR")
    batch_size: int = Field(32, ge=1, description="PPO minibatch (env steps)")
    n_epochs: int = Field(10, ge=1, description="PPO epochs over each episode's rollout")
    gamma: float = Field(0.99, gt=0, le=1, description="PPO discount")
    gae_lambda: float = Field(0.95, gt=0, le=1, description="GAE lambda")
    ent_coef: float = Field(0.0, ge=0, description="PPO entropy bonus")
    seed: int = Field(0, ge=0, description="seed of PPO's sampling and of the policy init")

    @field_validator("features")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [f for f in value if f not in FEATURES]
        if unknown:
            raise ValueError(f"unknown feature(s) {unknown}; known: {list(FEATURES)}")
        return value


class LRController:
    """A meta-learner that trains itself by RL over episodes (:class:`EpisodicLearner`)."""

    learns_by = "self"  # the documented contract; the engine tells kinds apart by protocol

    def __init__(self, **options: Any):
        opts = ControllerOptions(**options)
        self.opts = opts
        self.act_every, self.max_change = opts.act_every, opts.max_change
        self.reward_offset, self.episodes = opts.reward_offset, opts.episodes
        self.frozen = False
        n = len(opts.features)
        self.observation_space = gym.spaces.Box(-CLIP_OBS, CLIP_OBS, (n,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        with torch.random.fork_rng():  # a seeded init that leaves the run's RNG alone
            torch.manual_seed(opts.seed)
            self.net = ActorCriticPolicy(self.observation_space, self.action_space,
                                         lambda _: opts.ppo_lr, **self.policy_kwargs())
        self.net.set_training_mode(False)
        self.obs_rms = RunningMeanStd(shape=(n,))
        self._actor: Actor | None = None
        self._device = torch.device("cpu")  # the run's (start), where the actor's tensors go

    # -- pieces the env and the frozen policy share -------------------------------------------
    def policy_kwargs(self) -> dict[str, Any]:
        arch = list(self.opts.net_arch)
        return {"net_arch": {"pi": arch, "vf": arch}, "activation_fn": nn.Tanh,
                "log_std_init": self.opts.log_std_init}

    def make_features(self) -> Features:
        return Features(self.opts.features)

    def apply(self, lr: float, action: float) -> float:
        """The LR after one action: ``lr * (1 + max_change * clip(a, -1, 1))``, kept in bounds."""
        a = min(1.0, max(-1.0, float(action))) if math.isfinite(action) else 0.0
        return min(self.opts.max_lr, max(self.opts.min_lr, lr * (1 + self.max_change * a)))

    def normalise(self, raw: np.ndarray, update: bool) -> np.ndarray:
        if update and np.all(np.isfinite(raw)):
            self.obs_rms.update(raw[None].astype(np.float64))
        z = (raw - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + 1e-8)
        return np.clip(z, -CLIP_OBS, CLIP_OBS).astype(np.float32)

    def initial_lr_for(self, run: RunInfo) -> float:
        if self.opts.initial_lr is not None:
            return self.opts.initial_lr
        return float(run.probe().lr) if run.probe is not None else 0.1

    def deterministic_action(self, obs: np.ndarray) -> float:
        action, _ = self.net.predict(obs, deterministic=True)
        return float(np.ravel(action)[0])

    # -- the LRPolicy protocol: the frozen controller in any run ------------------------------
    def start(self, run: RunInfo) -> None:
        self._actor = Actor(self, self.deterministic_action, update_stats=False)
        self._actor.start(run)
        self._device = torch.device(run.device)

    def lr(self, ctx: StepContext) -> float:
        return self._actor.lr(ctx)

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        pass

    # -- the Resumable protocol: what a checkpoint of a run keeps ------------------------------
    def run_state(self) -> dict[str, Any]:
        """The trained controller (:meth:`state_dict`: a resumed run skips meta-training) and
        its actor's run: the LR of the block in progress, the feature averages, the previous
        weights and the last observation."""
        if self._actor is None:
            raise RuntimeError("lr-controller: start(run) must be called before run_state()")
        return {"controller": self.state_dict(), "actor": self._actor.state_dict()}

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        if self._actor is None:
            raise RuntimeError("lr-controller: start(run) must be called before load_run_state()")
        self.load_state_dict(state["controller"])
        previous = state["actor"]["previous"] or []
        # the previous weights go to the run's device (the actor takes them per parameter)
        self._actor.load_state_dict(state["actor"],
                                    [torch.empty(0, device=self._device)] * len(previous))

    # -- the HandLoopScheduled protocol: metalr.ControlledLR ----------------------------------
    @classmethod
    def scheduler(cls) -> type[ControlledLR]:
        """The torch scheduler that runs a saved controller in a user's own loop; imported on
        demand, so that loading the plugin does not import the engine."""
        from .controlled import ControlledLR

        return ControlledLR

    # -- the EpisodicLearner protocol ---------------------------------------------------------
    def train_episodes(self, make_engine: Callable[..., Any],
                       on_episode: Callable[[int, Mapping[str, Any]], None] | None = None) -> None:
        """PPO over ``episodes`` training runs; one rollout is one episode."""
        if self.frozen:
            raise RuntimeError("lr-controller: frozen (meta-test mode) cannot be meta-trained")
        from stable_baselines3 import PPO
        from stable_baselines3.common.logger import Logger

        from .env import ControllerEnv

        env = ControllerEnv(self, make_engine, on_episode)
        n = env.steps_per_episode()
        o = self.opts
        with warnings.catch_warnings():  # a last, shorter minibatch per epoch is harmless here
            warnings.filterwarnings("ignore", message=".*mini-batch", category=UserWarning)
            model = PPO("MlpPolicy", env, n_steps=n, batch_size=min(o.batch_size, n),
                        n_epochs=o.n_epochs, learning_rate=o.ppo_lr, gamma=o.gamma,
                        gae_lambda=o.gae_lambda, ent_coef=o.ent_coef, seed=o.seed,
                        device="cpu", policy_kwargs=self.policy_kwargs(), verbose=0)
        # metalr tracks episodes itself; SB3's default logger would leave an empty SB3-<time> folder
        # in the temp dir on every meta-train.
        model.set_logger(Logger(folder=None, output_formats=[]))
        model.policy.load_state_dict(self.net.state_dict())
        model.learn(total_timesteps=self.episodes * n)
        self.net.load_state_dict(model.policy.state_dict())
        self.net.set_training_mode(False)

    # -- saving (metalr.engine.weights.save_meta_learner / load_meta_learner)
    # ------------------------
    def options(self) -> dict[str, Any]:
        """Rebuild options, saved as JSON in the file's header; the action map included."""
        return self.opts.model_dump()

    def check_saved_options(self, saved: Mapping[str, Any]) -> None:
        """Refuse a file whose state or action does not mean what this recipe's does."""
        problems = []
        mine = self.options()
        for key in ("features", "action_map", "max_change", "net_arch"):
            if key in saved and saved[key] != mine[key]:
                problems.append(f"{key}: file {saved[key]}, recipe {mine[key]}")
            elif key not in saved:
                problems.append(f"{key}: missing from the file's header")
        if problems:
            raise ValueError("controller does not match the recipe (" + "; ".join(problems)
                             + "); set the recipe's options to the file's, or retrain")

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {NET_PREFIX + k: v.detach().clone() for k, v in self.net.state_dict().items()}
        out["obs_rms.mean"] = torch.as_tensor(self.obs_rms.mean, dtype=torch.float64).clone()
        out["obs_rms.var"] = torch.as_tensor(self.obs_rms.var, dtype=torch.float64).clone()
        out["obs_rms.count"] = torch.tensor(float(self.obs_rms.count), dtype=torch.float64)
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        n = len(self.opts.features)
        for key in ("obs_rms.mean", "obs_rms.var", "obs_rms.count"):
            if key not in state:
                raise KeyError(f"no {key!r}: not an lr-controller file")
        if tuple(state["obs_rms.mean"].shape) != (n,):
            raise ValueError(f"{state['obs_rms.mean'].numel()} features in the file, "
                             f"{n} in the recipe ({self.opts.features})")
        net = {k[len(NET_PREFIX):]: v for k, v in state.items() if k.startswith(NET_PREFIX)}
        self.net.load_state_dict(net)
        self.obs_rms.mean = state["obs_rms.mean"].double().numpy().copy()
        self.obs_rms.var = state["obs_rms.var"].double().numpy().copy()
        self.obs_rms.count = float(state["obs_rms.count"])
