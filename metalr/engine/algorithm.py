"""The bilevel engine: Algorithm 1 of the MLR-SNet paper, on `higher`.

Two levels, named as in the paper: the *base* level trains the model's weights w with the real
optimizer; the *meta* level trains the policy's parameters theta on the meta set through a
one-step look-ahead of that same optimizer. Because the batch gradient g_t does not depend on
theta, the look-ahead needs no second forward/backward of the batch and no Hessian:
``d w_hat / d theta = -(d lr / d theta) * direction(g_t, optimizer state)``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from metalr.contracts.protocols import (
    Batch,
    EpisodicLearner,
    HypergradientLearner,
    Lookahead,
    LRPolicy,
    MetaObjective,
    Rechecked,
    RunInfo,
    StepContext,
    Task,
)
from metalr.engine import checkpoint as ckpt
from metalr.engine import distributed
from metalr.engine.data import loss_output
from metalr.engine.device import AmpDtype, Precision, channels_last, rng_aside
from metalr.engine.differentiable import VirtualSteps
from metalr.engine.history import History
from metalr.engine.objectives import OneStep
from metalr.engine.order import DataOrder
from metalr.engine.probe import HALF_DECADE, JUMP, ProbeResult, probe_lr, probe_steps
from metalr.engine.recheck import blew_up, fell_back, learned_before, recheck_lr
from metalr.engine.recovery import Recovery

UNROLL_ORDER = 3_000_017  # the data order of an objective's further batches: seed + this + step
META_DRAWS = 4_000_037  # a meta-update's dropout draws: torch's generator seeded seed + this + step


class TrainingDiverged(RuntimeError):
    """The LR or the loss stopped being finite, or the loss exploded; carries the history so far
    and the step where it happened (the history may hold later steps of that epoch: losses are
    judged once an epoch)."""

    def __init__(self, message: str, history: History | None = None, step: int | None = None):
        super().__init__(message)
        self.history = history
        self.step = step


@dataclass
class EngineConfig:
    epochs: int
    batch_size: int = 128
    seed: int = 0
    order_seed: int | None = None  # batch order and meta batches; None: seed (train.order_seed)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    t_val: int | None = None  # steps between meta-updates; None: twice per epoch
    meta_batch_size: int = 128
    meta_lr: float = 1e-3
    meta_weight_decay: float = 1e-4
    meta_train: bool = True  # False: meta-test, theta frozen, no meta set used
    clip_grad_norm: float | None = None
    eval_every: int = 1  # epochs between evaluations; the last epoch is always evaluated
    explode_factor: float = 1e3  # a batch loss above this times the first one is divergence
    eval_splits: tuple[str, ...] = ("train", "meta", "test")
    amp: bool = False  # model forwards under autocast (metalr/engine/device.py)
    amp_dtype: AmpDtype = "bfloat16"
    channels_last: bool = False  # 4D weights and batches in NHWC order


@dataclass
class StepResult:
    lr: float
    loss: torch.Tensor
    meta_loss: torch.Tensor | None


class RunInterrupted(KeyboardInterrupt):
    """Training stopped on request (SIGINT / SIGTERM) between two steps, after a checkpoint."""

    def __init__(self, history: History):
        super().__init__("interrupted")
        self.history = history


def step_context(
    step: int, epoch: int, loss: torch.Tensor, loss_scale: float,
    params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer, *,
    batch_loss: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None = None,
    meta_grads: Callable[[], list[torch.Tensor]] | None = None,
    meta_loss: Callable[[], float] | None = None,
    batch_outputs: Callable[[Sequence[torch.Tensor] | None], torch.Tensor] | None = None,
) -> StepContext:
    """The one builder of a :class:`StepContext`, for the engine's step and for a plugin's
    scheduler in a hand-written loop alike, so a policy reads the same numbers in both: the loss
    detached, its input ``loss / loss_scale``, and zeros for a parameter that got no gradient."""
    loss = loss.detach()
    return StepContext(
        step=step, epoch=epoch, loss=loss, loss_input=loss / loss_scale, params=params,
        grads=[p.grad if p.grad is not None else torch.zeros_like(p) for p in params],
        optimizer=optimizer, batch_loss=batch_loss, meta_grads=meta_grads, meta_loss=meta_loss,
        batch_outputs=batch_outputs)


def is_meta_learned(policy: Any) -> bool:
    """The engine meta-trains this policy's theta by hypergradient (Algorithm 1)."""
    return isinstance(policy, HypergradientLearner)


def is_episodic(policy: Any) -> bool:
    """The policy trains itself over whole runs (:mod:`metalr.engine.episodes`); the engine only
    runs it."""
    return isinstance(policy, EpisodicLearner) and not is_meta_learned(policy)


class Engine:
    """Trains one model with one policy; meta-trains the policy when it learns by hypergradient."""

    def __init__(
        self, task: Task, model: nn.Module, optimizer: torch.optim.Optimizer,
        policy: LRPolicy, config: EngineConfig, objective: MetaObjective | None = None,
        *, names: Mapping[str, str] | None = None,
    ):
        self.task, self.model, self.optimizer, self.policy, self.cfg = (
            task, model, optimizer, policy, config
        )
        self.objective = objective or OneStep()  # what a meta-update minimises (Algorithm 1)
        # the registered names of the policy and objective by kind ("lr_policy",
        # "meta_objective"): a resume that refuses one names it
        self.names = dict(names or {})
        self.order = DataOrder.of(config.seed, config.order_seed)
        # The parameters the engine trains, the one definition: those that take a gradient.
        # (The optimizer moves the ones it holds that got one; so does the virtual step.)
        trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._names, self.params = [n for n, _ in trained], [p for _, p in trained]
        self.meta_learning = config.meta_train and is_meta_learned(policy)
        if is_meta_learned(policy) or is_episodic(policy):
            policy.frozen = not config.meta_train
        self.meta_optimizer = (
            torch.optim.Adam(
                list(policy.meta_parameters()), lr=config.meta_lr,
                weight_decay=config.meta_weight_decay,
            )
            if self.meta_learning
            else None
        )
        self.probe_result: ProbeResult | None = None
        # the first weights and the last good epoch: a run with a recheck restarts or rolls back
        self.recovery = Recovery(model, optimizer, self.params, policy,
                                 self._policy_state, self._load_policy_state)
        self._max_lr = min((torch.finfo(p.dtype).max for p in self.params
                            if p.is_floating_point()), default=math.inf)
        self.meta_generator = self.order.meta_generator()
        self.precision = Precision(config.device, config.amp, config.amp_dtype)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        # Under torchrun: the training forward goes through DDP, whose backward averages g_t over
        # ranks; everything else (virtual step, probe, evaluation) uses the model itself.
        self.ranks = distributed.current()
        self.ddp_model = distributed.wrap(model, config.device)

    def step(self, batch: Batch, meta_batch: Batch | None = None, step: int = 0,
             epoch: int = 0) -> StepResult:
        """One iteration of Algorithm 1: L_t and g_t, theta's meta-update when given a meta
        batch, then w's real step with the updated theta, reusing g_t.

        ``batch`` and ``meta_batch`` are global batches; under torchrun each rank trains on its
        slice (:func:`metalr.engine.distributed.shard`) and the result is the same as one process's.
        """
        ctx = self._training_loss(batch, step, epoch)
        meta_loss = None if meta_batch is None else self.meta_update(ctx, meta_batch)
        lr = self._real_step(ctx)
        return StepResult(lr, ctx.loss, meta_loss)

    def _training_loss(self, batch: Batch, step: int, epoch: int) -> StepContext:
        """L_t and g_t (in the parameters' ``.grad``), computed once for both steps.

        Weighted so that DDP's average over ranks is the global batch's mean (weight 1 alone).
        """
        if self.cfg.channels_last:
            batch = channels_last(batch)
        local, weight = distributed.shard(batch, self.ranks)
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            loss = self.task.loss(self.ddp_model, local) * weight
        self.precision.backward(loss, self.optimizer)
        if self.cfg.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad_norm)
        loss = distributed.all_reduce_mean(loss.detach())  # every rank's policy reads one L_t
        return self._context(loss, batch, step, epoch)

    def meta_update(self, ctx: StepContext, meta_batch: Batch) -> torch.Tensor:
        """Steps theta by the one-step hypergradient (Eqs. 9-10); returns the meta loss.

        Nothing made here outlives the call: the virtual weights, their graph and the copy of
        the optimizer's state are dropped on return, so memory does not grow with the run. Nor
        do its random draws: the meta batch's forward passes draw dropout from a generator of
        their own, seeded by the step, so the run's masks are those of its control
        (:func:`metalr.engine.device.rng_aside`).
        """
        with rng_aside(self.model, self.order.seed + META_DRAWS + ctx.step):
            return self._meta_update(ctx, meta_batch)

    def _meta_update(self, ctx: StepContext, meta_batch: Batch) -> torch.Tensor:
        if self.cfg.channels_last:
            meta_batch = channels_last(meta_batch)
        # The LR is a scalar, so d L_meta / d theta = (d L_meta / d lr) * (d lr / d theta):
        # the virtual step takes a detached leaf copy of the LR, and ranks share one number.
        lr_t = self.policy.virtual_lr(ctx)
        lr_leaf = lr_t.detach().requires_grad_()
        # The meta loss after the objective's look ahead (Eqs. 9-10 for the one-step default:
        # a virtual step through a differentiable copy of the real optimizer with g_t, then the
        # loss on this rank's slice of the meta batch at the virtual weights).
        meta_loss = self.objective.meta_loss(self._lookahead(ctx, meta_batch), lr_leaf)
        dlr = self.precision.lr_grad(meta_loss, lr_leaf, distributed.all_reduce_mean)
        if dlr is not None:  # None: float16 overflowed, skip this meta-update
            theta = [p for group in self.meta_optimizer.param_groups for p in group["params"]]
            for p, g in zip(theta, torch.autograd.grad(lr_t, theta, grad_outputs=dlr)):
                p.grad = g
            self.meta_optimizer.step()
        return meta_loss.detach()

    def _lookahead(self, ctx: StepContext, meta_batch: Batch) -> Lookahead:
        """What the meta-objective looks ahead with
        (:class:`metalr.contracts.protocols.Lookahead`)."""
        meta_local, meta_weight = distributed.shard(meta_batch, self.ranks)
        grads = [p.grad for p in self.params]
        # further batches from a data order of their own, seeded by the step (nothing to
        # checkpoint; the real run's batches are untouched); a generator: drawn only if asked
        further = DataOrder(self.order.seed + UNROLL_ORDER + ctx.step).batches(
            self.task, self.cfg.batch_size)
        inner: list[Batch] = []

        def train_batch(k: int) -> Batch:
            """The k-th further batch of this meta-update (k >= 1)."""
            while len(inner) < k:
                inner.append(next(further)[1])
            return distributed.shard(inner[k - 1], self.ranks)[0]

        def at(batch: Batch, weights, weight: float = 1.0) -> torch.Tensor:
            with self.precision.autocast():
                return self._loss_at(batch, weights) * weight

        return Lookahead(
            steps=lambda lr: VirtualSteps(self.optimizer, self.params, grads, lr),
            train_batch=train_batch, train_loss=lambda w, batch: at(batch, w),
            meta_loss=lambda w: at(meta_local, w, meta_weight),
            clip_grad_norm=self.cfg.clip_grad_norm)

    def _real_step(self, ctx: StepContext) -> float:
        """Eq. 11: the real optimizer's step at the LR the (updated) policy gives now."""
        try:
            lr = float(self.policy.lr(ctx))
        except ArithmeticError as exc:  # a rule that found its own numbers non-finite
            raise TrainingDiverged(f"{exc} (step {ctx.step})", step=ctx.step) from exc
        if not 0 <= lr <= self._max_lr:  # NaN fails too; beyond max the update overflows
            raise TrainingDiverged(f"the policy gave LR {lr:g} at step {ctx.step}", step=ctx.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.precision.step(self.optimizer)
        return lr

    def _context(self, loss: torch.Tensor, batch: Batch, step: int, epoch: int) -> StepContext:
        return step_context(
            step, epoch, loss, self.task.loss_scale, self.params, self.optimizer,
            batch_loss=functools.partial(self._loss_at, batch),
            meta_grads=self._meta_grads if self.cfg.meta_train else None,
            meta_loss=self._meta_loss,
            batch_outputs=functools.partial(self._batch_outputs, batch),
        )

    def _model_at(self, params: Sequence[torch.Tensor]) -> Callable[..., torch.Tensor]:
        """The model as a function of the trained parameters, differentiable in them, with its
        train-mode behaviour (batch statistics, dropout) but a copy of its buffers: a look at a
        batch (the meta set's, or the training batch again for a Hessian-vector product) never
        moves BatchNorm's running statistics; only the training forward of a step does."""
        mapping = {**{n: b.clone() for n, b in self.model.named_buffers()},
                   **dict(zip(self._names, params))}
        call = functools.partial(torch.func.functional_call, self.model, mapping)
        return lambda *a, **k: call(a, k)

    def _loss_at(self, batch: Batch, params: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.task.loss(self._model_at(params), batch)

    def _meta_grads(self) -> list[torch.Tensor]:
        """The gradient of a fresh meta batch's loss at the current weights (RTHO)."""
        batch = self.task.meta_batch(self.cfg.meta_batch_size, self.meta_generator)
        return list(torch.autograd.grad(self._loss_at(batch, self.params), self.params))

    @torch.no_grad()
    def _meta_loss(self) -> float:
        training, batch = self.model.training, self.task.meta_batch(self.cfg.meta_batch_size,
                                                                    self.meta_generator)
        self.model.eval()  # no batch-norm statistics updated by a look at the meta set
        try:
            return float(self.task.loss(self.model, batch))
        finally:
            self.model.train(training)

    @torch.no_grad()
    def _batch_outputs(self, batch: Batch, params: Sequence[torch.Tensor] | None) -> torch.Tensor:
        return loss_output(self.task, self._model_at(params or self.params), batch)

    def _probe(self, total_steps: int, steps_per_epoch: int) -> ProbeResult:
        """The LR probe of this run (:mod:`metalr.engine.probe`), measured once."""
        if self.probe_result is None:
            cfg = self.cfg
            self.probe_result = probe_lr(
                self.task, self.model, self.optimizer, total_steps=total_steps,
                steps_per_epoch=steps_per_epoch, batch_size=cfg.batch_size,
                meta_batch_size=cfg.meta_batch_size, seed=self.order.seed,
                clip_grad_norm=cfg.clip_grad_norm)
        return self.probe_result

    def _recheck(self, history: History, step: int, steps_per_epoch: int,
                 total_steps: int) -> None:
        """Checks the LR the run has reached (the last step's) and moves the policy's scale to
        what the check chose (:func:`metalr.engine.recheck.recheck_lr`); recorded in the history."""
        cfg, lr = self.cfg, history.lrs[-1]
        if not lr > 0:
            return
        since = history.since_restart()
        steps = probe_steps(total_steps, steps_per_epoch)
        probed = self.probe_result
        result = recheck_lr(self.task, self.model, self.optimizer, lr, steps=steps,
                            batch_size=cfg.batch_size, meta_batch_size=cfg.meta_batch_size,
                            seed=self.order.seed, clip_grad_norm=cfg.clip_grad_norm,
                            ceiling=min(math.inf if probed is None else probed.ceiling,
                                        history.killing_lr() / HALF_DECADE),
                            untrained=None if probed is None else probed.initial_loss,
                            learned=learned_before(since), fell=fell_back(since),
                            blown=blew_up(since,
                                          JUMP if probed is None else probed.jump))
        if result.restart and self.recovery.first_weights is None:  # a checkpoint without them
            result = dataclasses.replace(result, restart=False)
        if result.restart:  # the start killed the net: begin again from the first weights
            self.recovery.restart()
            history.restarts.append(step)
        if result.lr != lr:
            self.policy.rescale(result.lr / lr)
        history.recheck, history.recheck_step = result, step

    def _policy_state(self) -> dict[str, Any]:
        return {"policy": ckpt.component_state("lr_policy", self.policy),
                "meta_optimizer": (None if self.meta_optimizer is None
                                   else self.meta_optimizer.state_dict())}

    def _load_policy_state(self, state: Mapping[str, Any]) -> None:
        ckpt.load_component_state("lr_policy", self.policy, copy.deepcopy(state["policy"]),
                                  self.names.get("lr_policy"))
        if self.meta_optimizer is not None:
            self.meta_optimizer.load_state_dict(copy.deepcopy(state["meta_optimizer"]))

    def evaluate(self) -> dict[str, float]:
        """Metrics of every split, with schedule-free optimizers switched to their eval weights."""
        swap = callable(getattr(self.optimizer, "eval", None))
        if swap:
            self.optimizer.eval()
        metrics = {}
        for split in self.cfg.eval_splits:
            with self.precision.autocast():
                found = self.task.evaluate(self.model, split)
            for key, value in found.items():
                metrics[f"{split}_{key}"] = value
        if swap:
            self.optimizer.train()
        return metrics

    def fit(
        self,
        on_epoch: Callable[[int, Mapping[str, float], History], None] | None = None,
        progress: Callable[[int], None] | None = None,
        *,
        checkpoint: Callable[[dict[str, Any]], None] | None = None,
        resume: Mapping[str, Any] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> History:
        """Train for ``cfg.epochs`` epochs; ``on_epoch(epoch, metrics, history)`` after each.

        ``checkpoint(state)`` gets the full training state after every epoch, and between two
        steps when ``stop()`` turns true (then :class:`RunInterrupted` is raised). Given such a
        state as ``resume``, training continues from it exactly as if it had never stopped.
        """
        began = time.perf_counter()  # the run's wall time includes its LR probe
        cfg, task = self.cfg, self.task
        steps_per_epoch = task.num_train_batches(cfg.batch_size)
        history, step = History(), 0
        run = RunInfo(cfg.epochs, steps_per_epoch, self.optimizer, cfg.device, cfg.seed, task,
                      probe=functools.partial(self._probe, cfg.epochs * steps_per_epoch,
                                              steps_per_epoch))
        if resume is not None and resume["history"]["probe"] is not None:  # never probe twice
            self.probe_result = History.from_dict(resume["history"]).probe
        self.policy.start(run)
        if self.probe_result is not None:
            history.probe = self.probe_result
        t_val = cfg.t_val or (self.policy.meta_period(run) if self.meta_learning
                              else max(1, steps_per_epoch // 2))
        history.t_val = t_val if self.meta_learning else None
        recheck_at = (self.policy.recheck_step(run.total_steps)
                      if isinstance(self.policy, Rechecked) else None)
        if recheck_at is not None:  # what a recheck, the death watch, a blow-up restart from
            self.recovery.keep_first()
        generator = self.order.train_generator()
        first_epoch, done, losses, meta_losses = 0, 0, [], []
        if resume is not None:
            history = History.from_dict(resume["history"])
            first_epoch, done, step = resume["epoch"], resume["batch"], resume["step"]
            losses, meta_losses = list(resume["epoch_losses"]), list(resume["epoch_meta_losses"])
            self.restore(resume, generator)
            self.recovery.load(resume)
        start = began - history.wall_time  # resumed: the time before the stop counts too

        def snapshot(epoch: int, batch: int) -> None:
            if checkpoint is not None:
                history.wall_time = time.perf_counter() - start
                checkpoint(self.checkpoint_state(history, epoch, batch, step, epoch_rng,
                                                 losses, meta_losses))

        for epoch in range(first_epoch, cfg.epochs):
            self.ddp_model.train()
            if callable(getattr(self.optimizer, "train", None)):
                self.optimizer.train()
            epoch_rng = generator.get_state()  # the epoch's data order, to resume inside it
            for index, batch in enumerate(task.train_batches(cfg.batch_size, generator)):
                if index < done:  # resumed inside this epoch: trained on before the stop
                    continue
                if step == recheck_at and history.recheck is None and history.lrs:
                    self._recheck(history, step, steps_per_epoch, run.total_steps)
                meta_batch = None
                if self.meta_learning and step % t_val == 0 and self.policy.meta_active(step):
                    meta_batch = task.meta_batch(cfg.meta_batch_size, self.meta_generator)
                try:
                    result = self.step(batch, meta_batch, step, epoch)
                except TrainingDiverged as exc:
                    if not self.recovery.can_recover(history, epoch, cfg.epochs):
                        exc.history = history
                        raise
                    history.losses.extend(torch.stack(losses).tolist() if losses else [])
                    losses = []  # the epoch's check reads the losses since the restart
                    self.recovery.recover(history, step, epoch, cfg.epochs)
                    continue
                history.lrs.append(result.lr)
                losses.append(result.loss)
                if result.meta_loss is not None:
                    meta_losses.append(result.meta_loss)
                step += 1
                if stop is not None and stop():
                    snapshot(epoch, index + 1)
                    raise RunInterrupted(history)
            epoch_losses = torch.stack(losses).tolist() if losses else []
            first_step = len(history.losses)
            history.losses.extend(epoch_losses)
            limit = cfg.explode_factor * abs(history.losses[0]) if history.losses else math.inf
            ended_well = False
            for i, value in enumerate(epoch_losses):  # checked once an epoch: no per-step sync
                if not math.isfinite(value) or value > limit:
                    if not self.recovery.can_recover(history, epoch, cfg.epochs):
                        raise TrainingDiverged(f"training loss {value:.4g} at step "
                                               f"{first_step + i} (epoch {epoch + 1})", history,
                                               first_step + i)
                    self.recovery.recover(history, step, epoch, cfg.epochs)
                    break
            else:
                ended_well = True
            metrics = {"epoch": epoch + 1,
                       "train_batch_loss": (sum(epoch_losses) / len(epoch_losses)
                                            if epoch_losses else math.nan),
                       "lr": history.lrs[-1] if history.lrs else math.nan}
            if meta_losses:  # each rank's are on its slice of the meta batches: their mean
                metrics["virtual_meta_loss"] = distributed.all_reduce_mean(
                    torch.stack(meta_losses).mean()).item()
            if (epoch + 1) % max(cfg.eval_every, 1) == 0 or epoch + 1 == cfg.epochs:
                metrics.update(self.evaluate())
            metrics["wall_time"] = time.perf_counter() - start
            history.epochs.append(metrics)
            self.policy.end_epoch(epoch, metrics)
            if on_epoch is not None:
                on_epoch(epoch, metrics, history)
            done, losses, meta_losses = 0, [], []
            if recheck_at is not None:  # the death watch; the state a blow-up goes back to
                self.recovery.end_epoch(history, step, epoch, cfg.epochs, run.total_steps,
                                        ended_well)
            epoch_rng = generator.get_state()
            snapshot(epoch + 1, 0)
            if progress is not None:
                progress(1)
        history.wall_time = time.perf_counter() - start
        return history

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_state(self, history: History, epoch: int, batch: int, step: int,
                         epoch_rng: torch.Tensor, losses: Sequence[torch.Tensor],
                         meta_losses: Sequence[torch.Tensor]) -> dict[str, Any]:
        """Everything that decides the rest of the run, at ``batch`` of ``epoch`` (next to run).

        ``epoch_rng`` is the data-order generator as the epoch began: a resumed epoch redraws
        the same order and skips the ``batch`` batches already trained on.
        """
        return {
            "epoch": epoch, "batch": batch, "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "meta_optimizer": (None if self.meta_optimizer is None
                               else self.meta_optimizer.state_dict()),
            "policy": ckpt.component_state("lr_policy", self.policy),
            # a meta-update's objective may carry state from one to the next (none of ours do)
            "objective": (ckpt.component_state("meta_objective", self.objective)
                          if self.meta_learning else None),
            "rng": {**ckpt.rng_state(), "data": epoch_rng.clone(),
                    "meta": self.meta_generator.get_state()},
            "history": history.to_dict(),
            **self.recovery.state(),  # the first weights, the last good epoch
            "epoch_losses": list(losses), "epoch_meta_losses": list(meta_losses),
            "grad_scaler": (self.precision.scaler.state_dict()
                            if self.precision.scaler.is_enabled() else None),
        }

    def restore(self, state: Mapping[str, Any], generator: torch.Generator) -> None:
        """Load a :meth:`checkpoint_state`, after ``policy.start`` rebuilt what it rebuilds."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.meta_optimizer is not None:
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        ckpt.load_component_state("lr_policy", self.policy, state["policy"],
                                  self.names.get("lr_policy"))
        if self.meta_learning:
            ckpt.load_component_state("meta_objective", self.objective, state["objective"],
                                      self.names.get("meta_objective"))
        if state.get("grad_scaler") is not None:
            self.precision.scaler.load_state_dict(state["grad_scaler"])
        ckpt.set_rng_state(state["rng"])
        generator.set_state(state["rng"]["data"].cpu())
        self.meta_generator.set_state(state["rng"]["meta"].cpu())
