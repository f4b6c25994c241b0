"""What a run keeps to survive its own LR: restarts and roll backs (issue 18).

A run with a recheck (:class:`metalr.contracts.protocols.Rechecked`) keeps two states on the
CPU, so that no device memory is held and checkpoints carry them:

- its **first weights** and its policy's first state, until the recheck and then until half the
  run is done or the training loss has halved since the last restart. A start that killed the
  net (the recheck, the death watch) or blew it up restarts from them, a half-decade below the
  lowest LR that killed it;
- once those are let go, its **last good epoch** (weights, optimizer and policy state): a late
  blow-up goes back to it a half-decade lower instead of ending the run, at most ``ROLLBACKS``
  times.

docs/design.md, "A dead net restarts" and "A late blow-up rolls back", has the measurements.
The engine decides *when* (a loss past its limit, the end of an epoch); this module *what*.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from metalr.engine.history import History
from metalr.engine.probe import HALF_DECADE, died
from metalr.engine.recheck import BLOW_UP, halved

ROLLBACKS = 3  # a run that blows up more often than this after its first weights are let go fails


def to_cpu(value: Any) -> Any:
    """A copy of a state dict with every tensor on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, Mapping):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return copy.deepcopy(value)


def good_epoch(epochs: Sequence[Mapping[str, float]]) -> bool:
    """The last epoch's mean training loss is within ``BLOW_UP`` (50%) of the best epoch's so
    far: a state worth going back to. A run that blows up late is often unstable for epochs
    before its loss passes ``explode_factor``; its last epochs are not."""
    last = epochs[-1]["train_batch_loss"] if epochs else math.nan
    finite = [e["train_batch_loss"] for e in epochs if math.isfinite(e["train_batch_loss"])]
    return math.isfinite(last) and last <= (1 + BLOW_UP) * min(finite)


class Recovery:
    """The states one run keeps to restart or roll back, and the rules that use them.

    ``policy`` is a :class:`~metalr.contracts.protocols.Rechecked` one once a run uses any of
    this (it moves by ``rescale``); ``save_policy`` / ``load_policy`` give and take its state
    with its meta-optimizer's (the engine's, so that a restart puts back theta's optimizer too).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 params: Sequence[torch.Tensor], policy: Any,
                 save_policy: Callable[[], dict[str, Any]],
                 load_policy: Callable[[Mapping[str, Any]], None]):
        self.model, self.optimizer, self.params, self.policy = model, optimizer, params, policy
        self.save_policy, self.load_policy = save_policy, load_policy
        self.first_weights: dict[str, torch.Tensor] | None = None
        self.first_policy: dict[str, Any] | None = None
        self.last_good: dict[str, Any] | None = None

    # -- the states ------------------------------------------------------------------------
    def keep_first(self) -> None:
        """The run's first weights and its policy's first state (a run with a recheck)."""
        self.first_weights = to_cpu(self.model.state_dict())
        self.first_policy = copy.deepcopy(self.save_policy())

    def state(self) -> dict[str, Any]:
        """For a checkpoint (``STATE_KEYS``)."""
        return {"first_weights": self.first_weights, "first_policy": self.first_policy,
                "last_good": self.last_good}

    def load(self, state: Mapping[str, Any]) -> None:
        """From a checkpoint; one written before a state existed has none."""
        self.first_weights = state.get("first_weights")
        self.first_policy = state.get("first_policy")
        self.last_good = state.get("last_good")

    # -- a start that killed the net --------------------------------------------------------
    def restart(self) -> None:
        """The run's first weights back, the optimizer's state cleared (a net the LR killed)."""
        self.model.load_state_dict(self.first_weights)
        self.optimizer.state.clear()

    def revive(self, history: History, step: int, blown: bool = False) -> None:
        """A net that died (:func:`metalr.engine.probe.died`) restarts from its first weights a
        half-decade below the lowest LR that killed it (this one or an earlier): no LR moves
        dead weights. A run that blew up (``blown``: a non-finite or exploded loss, a policy
        that gave a non-finite LR) does the same, with the policy's first state put back too."""
        lr = history.lrs[-1] if history.lrs else math.nan
        below = min(lr, history.killing_lr())
        self.restart()
        if blown:  # the policy at its start again: its scale is the one it started with
            self.load_policy(self.first_policy)
            lr = history.lrs[0] if history.lrs else math.nan  # what it gave at its first step
        if lr > 0 and math.isfinite(below):
            self.policy.rescale(below / HALF_DECADE / lr)
        history.restarts.append(step)
        if blown:
            history.blown.append(step)

    # -- a blow-up --------------------------------------------------------------------------
    def can_restart(self, epoch: int, epochs: int) -> bool:
        """A run that blew up restarts while its first state is kept and epochs are left."""
        return (self.first_weights is not None and self.first_policy is not None
                and self.first_policy["policy"].get("state") is not None
                and epoch + 1 < epochs)

    def can_recover(self, history: History, epoch: int, epochs: int) -> bool:
        """Whether a blow-up at ``epoch`` can be recovered from (:meth:`recover`)."""
        return self.can_restart(epoch, epochs) or (
            self.last_good is not None and len(history.rollbacks) < ROLLBACKS)

    def recover(self, history: History, step: int, epoch: int, epochs: int) -> None:
        """A run that blew up: a restart while its first state is kept (and epochs are left),
        else a roll back (:meth:`can_recover` said one of them can)."""
        if self.can_restart(epoch, epochs):
            self.revive(history, step, blown=True)
        else:
            self.roll_back(history, step)

    def roll_back(self, history: History, step: int) -> None:
        """A run that blew up after its first weights were let go (a start that trained, an LR
        that stopped working late) goes back to the weights, optimizer state and policy state
        of its last epoch that ended well, a half-decade below the lower of its LR then and the
        LR that blew up, instead of ending as diverged; a second blow-up before the next good
        epoch goes a half-decade lower again."""
        good = self.last_good
        lrs = history.lrs  # the LR the kept state gave next, and the last one given
        then = lrs[min(good["step"], len(lrs) - 1)] if lrs else math.nan
        now = lrs[-1] if lrs else math.nan
        self.model.load_state_dict(good["model"])
        self.optimizer.load_state_dict(copy.deepcopy(good["optimizer"]))
        self.load_policy(good["policy"])
        lower = min(now, then) / then if then > 0 and now > 0 else 1.0
        self.policy.rescale(lower / HALF_DECADE)
        good["policy"] = copy.deepcopy(self.save_policy())  # the lower scale, if it recurs
        good["step"] = len(history.lrs)  # its LR now is the one the next step gives
        history.rollbacks.append(step)

    # -- the end of an epoch ----------------------------------------------------------------
    def end_epoch(self, history: History, step: int, epoch: int, epochs: int,
                  total_steps: int, ended_well: bool) -> None:
        """After an epoch (``step`` steps in) of a run with a recheck. The death watch: a net
        whose weights all lost their gradient restarts; the first state is let go half-way, or
        once the run trained. And an epoch that ended well, not restarted, is kept for a later
        blow-up to go back to."""
        if epoch + 1 >= epochs:  # nothing is left to recover in
            return
        if self.first_weights is not None:
            if died(self.params):
                self.revive(history, step)
            elif history.recheck is not None and (2 * step >= total_steps
                                                  or halved(history.since_restart())):
                self.first_weights = self.first_policy = None
        if ended_well and step not in history.restarts and good_epoch(history.epochs):
            self.last_good = {"step": step,  # the index of the LR this state gives next
                              "model": to_cpu(self.model.state_dict()),
                              "optimizer": to_cpu(self.optimizer.state_dict()),
                              "policy": copy.deepcopy(self.save_policy())}
