"""MLR-SNet meta-trained by evolution strategies over whole runs (issue 19): an objective that
sees the end of the run.

The one-step hypergradient (and an unroll over k steps) asks which LR is best a few steps
ahead, and a smaller one almost always is (docs/design.md, "Short-horizon bias"). Evolution
strategies ask the question the user asks: which net gives the lowest meta loss *at the end of
the run*. Each update draws ``pairs`` directions eps, runs a whole training run with the net's
weights at theta + sigma eps and one at theta - sigma eps (antithetic pairs, the same seed for
both), and steps theta with Adam along

    g = mean over pairs of (L(theta + sigma eps) - L(theta - sigma eps)) / (2 sigma) * eps,

an unbiased estimate of the gradient of the Gaussian-smoothed end-of-run meta loss (Salimans et
al. 2017; for whole runs there is no truncation, so no persistent correction as in PES, Vicol et
al. 2021, is needed). Every run is a real run of this recipe's task, model and optimizer, with
its own probe, brake, recheck and cool-down (``make_engine`` of the runner, a new seed per pair);
the learner is an :class:`metalr.contracts.protocols.EpisodicLearner`, so it meta-trains offline,
then runs frozen like any transferred net. Cost: ``episodes`` whole runs per meta-training.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from metalr.engine.algorithm import TrainingDiverged

from .base import ProbedOptions, ProbedSchedule
from .lstm import MLRSNet


Fitness = Literal["loss", "relative", "sign"]


class ESOptions(ProbedOptions):
    """MLR-SNet-ES's options: the probed scale's, then the net's and the ES meta-training's."""

    hidden: int = Field(40, ge=1, description="LSTM hidden size of the net")
    progress: bool = Field(True, description="the net reads t/T besides the loss (an objective "
                           "that sees the run's end can then learn to anneal)")
    skip: bool = Field(False, description="the net's output layer reads its inputs (the loss, "
                       "t/T) besides the LSTM's state")
    episodes: int = Field(24, ge=2, description="whole training runs of meta-training in all "
                          "(2 per antithetic pair)")
    pairs: int = Field(4, ge=1, description="antithetic pairs per update of theta")
    sigma: float = Field(0.05, gt=0, description="std of the perturbation of theta")
    es_lr: float = Field(0.01, gt=0, description="Adam LR of theta's update")
    seed: int = Field(0, ge=0, description="seed of the perturbations")
    perturb: Literal["all", "head"] = Field(
        "all", description="which of the net's weights ES moves: all, or only the output "
        "layer on the LSTM's state (hidden + 1 numbers: far fewer directions for the same "
        "runs to estimate)")
    fitness: Fitness = Field(
        "loss", description="what a pair's difference is measured in: the meta loss; relative "
        "to the pair's mean loss (tasks whose losses differ in scale weigh alike, for "
        "meta.episode_tasks); or its sign alone (which side won: a pair where one run dies "
        "weighs no more than one that gains a little)")


def es_gradient(losses: Sequence[tuple[float, float]], directions: Sequence[torch.Tensor],
                sigma: float, fitness: Fitness = "loss") -> torch.Tensor:
    """The antithetic estimate ``mean_i (L+_i - L-_i) / (2 sigma) * eps_i``. Exact for a
    quadratic along each direction (the even terms cancel), unbiased for the smoothed loss.
    ``relative``: each difference over its pair's mean loss, the gradient of the mean log loss
    to first order, so that a task with ten times the loss does not weigh ten times as much.
    ``sign``: each difference replaced by its sign over ``2 sigma`` (a rank transform of the
    pair, as fitness shaping does over a population; Salimans et al. 2017): the direction that
    won, whatever the size of the win."""
    total = torch.zeros_like(directions[0])
    for (plus, minus), eps in zip(losses, directions, strict=True):
        diff = plus - minus
        if fitness == "relative":
            diff /= max(abs(plus + minus) / 2, 1e-12)
        elif fitness == "sign":
            diff = float(math.copysign(1.0, diff)) if diff != 0 else 0.0
        total += diff / (2 * sigma) * eps
    return total / len(directions)


class MLRSNetES(ProbedSchedule):
    """MLR-SNet's LSTM (``progress`` on by default) whose theta is meta-trained by ES over
    whole runs (the module docstring), inside MLR-SNet's probed scale, brake, recheck and
    cool-down. As an LR policy it acts with the theta it has; it never learns by hypergradient."""

    Options: ClassVar[type[ProbedOptions]] = ESOptions
    opts: ESOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.episodes = self.opts.episodes
        # the net whose weights ES moves; its own scale is unused (this policy's is the one)
        self.net = MLRSNet(hidden=self.opts.hidden, progress=self.opts.progress,
                           skip=self.opts.skip, gamma=1.0)

    def initial_state(self, device: torch.device) -> Any:
        return self.net.initial_state(device)

    def raw(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self.net.raw(x, state)

    def inputs(self, loss_input: torch.Tensor, step: int, total_steps: int) -> torch.Tensor:
        return self.net.inputs(loss_input.to(self.ref_lr.dtype), step, total_steps)

    def _theta(self) -> list[torch.nn.Parameter]:
        """The net's weights ES perturbs: what a hypergradient would train (its only group, the
        scale not learned), not its unused scale: this policy's own is the one; with
        ``perturb: head`` only the output layer."""
        if self.opts.perturb == "head":
            return list(self.net.out.parameters())
        (group,) = self.net.meta_parameters()
        return list(group["params"])

    # -- the EpisodicLearner protocol ---------------------------------------------------------
    def train_episodes(self, make_engine: Callable[..., Any],
                       on_episode: Callable[[int, Mapping[str, Any]], None] | None = None) -> None:
        """``episodes // (2 pairs)`` updates of theta, each from ``pairs`` antithetic pairs of
        whole runs; a pair shares its seed (episode index of its first run)."""
        if self.frozen:
            raise RuntimeError("mlrsnet-es: frozen (meta-test mode) cannot be meta-trained")
        params = self._theta()
        theta = parameters_to_vector(params).detach().clone().requires_grad_()
        adam = torch.optim.Adam([theta], lr=self.opts.es_lr)
        generator = torch.Generator().manual_seed(self.opts.seed)
        episode = 0
        for _ in range(max(1, self.episodes // (2 * self.opts.pairs))):
            directions, losses = [], []
            for _ in range(self.opts.pairs):
                eps = torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
                pair = []
                for sign in (1.0, -1.0):
                    pair.append(self._episode(theta.detach() + sign * self.opts.sigma * eps,
                                              make_engine, episode, on_episode))
                    episode += 1
                directions.append(eps)
                losses.append((pair[0], pair[1]))
            adam.zero_grad()
            theta.grad = es_gradient(losses, directions, self.opts.sigma, self.opts.fitness)
            adam.step()
        vector_to_parameters(theta.detach(), params)

    def _episode(self, theta: torch.Tensor, make_engine: Callable[..., Any], index: int,
                 on_episode: Callable[[int, Mapping[str, Any]], None] | None) -> float:
        """One whole run with the net at ``theta``: its final meta loss (a diverged run counts
        as the worst finite loss of a chance model, 10x the untrained one, so that ES steps away
        from it instead of propagating an infinity). Runs of one pair share the seed."""
        acting = copy.deepcopy(self)
        vector_to_parameters(theta, acting._theta())
        acting.frozen = True
        engine = make_engine(index - index % 2, acting)
        diverged = False
        try:
            history = engine.fit()
            metrics = dict(history.epochs[-1]) if history.epochs else {}
            loss = float(metrics.get("meta_loss", math.inf))
            lrs = history.lrs
        except (FloatingPointError, TrainingDiverged) as exc:  # the probe's, or the run's
            metrics, loss, lrs = {"error": str(exc)}, math.inf, []
        if not math.isfinite(loss):
            diverged = True
            probe = engine.probe_result
            loss = 10 * (probe.initial_loss if probe is not None else 10.0)
        if on_episode is not None:
            on_episode(index, {"reward": -loss, "rewards": [-loss], "lrs": lrs,
                               "metrics": {k: v for k, v in metrics.items()
                                           if isinstance(v, (int, float))},
                               "diverged": diverged})
        return loss
