"""A trained LR controller in a plain PyTorch loop: the sibling of :class:`metalr.LearnedLR`.

MLR-SNet needs only the loss; the controller of Xu et al. (2019) also looks at the model's
predictions on the batch and at a validation loss, so the scheduler is given the model, the
batch's inputs and a closure for the validation loss. It builds its step context with the
engine's own builder (:func:`metalr.engine.algorithm.step_context`) and acts through the same
:class:`~.acting.Actor` as the frozen policy, so a hand loop gets the LRs a recipe's meta-test
run gets (``tests/test_controller.py``). The core re-exports it as ``metalr.ControlledLR``
through the registry (:class:`metalr.contracts.protocols.HandLoopScheduled`), never by import.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metalr.contracts.protocols import EpisodicLearner, RunInfo
from metalr.engine.algorithm import step_context
from metalr.engine.weights import WeightsError, load_meta_learner
from metalr.scheduler.learned import LossDrivenLR

from .acting import Actor


class ControlledLR(LossDrivenLR):
    """Per batch, after ``loss.backward()`` and before ``optimizer.step()``::

        scheduler.step(loss, x)   # x: the batch's model inputs; sets this step's LR

    (or ``observe(loss, x)`` and then ``step()``, for frameworks that step with no argument).
    ``meta_loss()`` returns the loss of the current model on a held-out batch (no gradient);
    it is called every ``act_every`` steps. ``lr`` is the first LR (unset: the controller's
    ``initial_lr`` option, else 0.1). ``loss_scale`` must match meta-training (1 for images).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, controller: Any, model: nn.Module, *,
                 total_steps: int, meta_loss: Callable[[], float], lr: float | None = None,
                 loss_scale: float = 1.0):
        if not isinstance(controller, EpisodicLearner):
            raise TypeError(f"{type(controller).__name__} is not a trained LR controller "
                            "(an EpisodicLearner); for MLR-SNet nets use metalr.LearnedLR")
        self.model, self.controller = model, controller
        self.meta_loss = meta_loss
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._names = [n for n, p in model.named_parameters() if p.requires_grad]
        controller.frozen = True
        # the frozen policy's own actor (LRController.start), held here: its state is this
        # scheduler's state
        self.actor = Actor(controller, controller.deterministic_action, update_stats=False)
        self.actor.start(RunInfo(1, total_steps, optimizer, torch.device("cpu"), 0,
                                 types.SimpleNamespace(loss_scale=loss_scale)))
        if lr is not None:
            self.actor.current = float(lr)
        self.loss_scale, self.last_step = float(loss_scale), 0
        super().__init__(optimizer)

    @classmethod
    def from_pretrained(cls, optimizer: torch.optim.Optimizer, path: str | Path,
                        model: nn.Module, **kwargs: Any) -> ControlledLR:
        """Load a controller saved by a recipe (``theta-final.safetensors``); safetensors only."""
        controller = load_meta_learner(path, frozen=True)
        if not isinstance(controller, EpisodicLearner):
            raise WeightsError(f"{path}: holds a {type(controller).__name__}, not an LR "
                               "controller; load it with metalr.LearnedLR.from_pretrained")
        return cls(optimizer, controller, model, **kwargs)

    def _outputs(self, inputs: Any, params: Sequence[torch.Tensor] | None) -> torch.Tensor:
        mapping = dict(zip(self._names, params or self.params))
        with torch.no_grad():
            return torch.func.functional_call(self.model, mapping, (inputs,))

    def _next_lr(self, loss: torch.Tensor, *context: Any) -> float:
        if len(context) != 1:
            raise TypeError("ControlledLR.step(loss, inputs): the batch's model inputs are "
                            "needed too (the controller looks at the model's predictions)")
        ctx = step_context(self.last_step, 0, loss, self.loss_scale, self.params, self.optimizer,
                           meta_loss=self.meta_loss,
                           batch_outputs=functools.partial(self._outputs, context[0]))
        lr = float(self.actor.lr(ctx))
        self.last_step += 1
        return lr

    def state_dict(self) -> dict[str, Any]:
        """Step count, current LR, feature averages and the controller's last observation."""
        return {**super().state_dict(), "step": self.last_step, **self.actor.state_dict(),
                "loss_scale": self.loss_scale}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = int(state_dict["step"])
        self.actor.load_state_dict(state_dict, self.params)
        self.loss_scale = float(state_dict["loss_scale"])
        super().load_state_dict(state_dict)
