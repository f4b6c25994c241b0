"""A trained LR controller in a plain PyTorch loop: the sibling of :class:`metalr.LearnedLR`.

MLR-SNet needs only the loss; the controller of Xu et al. (2019) also looks at the model's
predictions on the batch and at a validation loss, so the scheduler is given the model, the
batch's inputs and a closure for the validation loss. It builds the same
:class:`~metalr.protocols.StepContext` the engine builds and asks the same frozen policy, so a
hand loop gets the LRs a recipe's meta-test run gets (``tests/test_controller.py``).
"""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metalr.protocols import EpisodicLearner, RunInfo, StepContext
from metalr.scheduler import LossDrivenLR, _optimizer_first
from metalr.weights import WeightsError, load_meta_learner


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
        if isinstance(controller, nn.Module) and isinstance(model, EpisodicLearner):
            warnings.warn("ControlledLR(optimizer, model, controller) is deprecated: pass "
                          "ControlledLR(optimizer, controller, model), the order of "
                          "from_pretrained(optimizer, path, model)", DeprecationWarning,
                          stacklevel=2)
            controller, model = model, controller
        if not isinstance(controller, EpisodicLearner):
            raise TypeError(f"{type(controller).__name__} is not a trained LR controller "
                            "(an EpisodicLearner); for MLR-SNet nets use metalr.LearnedLR")
        self.model, self.controller = model, controller
        self.meta_loss = meta_loss
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._names = [n for n, p in model.named_parameters() if p.requires_grad]
        controller.frozen = True
        controller.start(RunInfo(1, total_steps, optimizer, torch.device("cpu"), 0,
                                 types.SimpleNamespace(loss_scale=loss_scale)))
        if lr is not None:
            controller._actor.current = float(lr)
        self.loss_scale, self.last_step = float(loss_scale), 0
        super().__init__(optimizer)

    @classmethod
    def from_pretrained(cls, optimizer: torch.optim.Optimizer, path: str | Path,
                        model: nn.Module, **kwargs: Any) -> ControlledLR:
        """Load a controller saved by a recipe (``theta-final.safetensors``); safetensors only."""
        optimizer, path = _optimizer_first(optimizer, path, "ControlledLR.from_pretrained")
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
        ctx = StepContext(
            step=self.last_step, epoch=0, loss=loss, loss_input=loss / self.loss_scale,
            params=self.params,
            grads=[p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params],
            optimizer=self.optimizer, batch_loss=None, meta_loss=self.meta_loss,
            batch_outputs=functools.partial(self._outputs, context[0]))
        lr = float(self.controller.lr(ctx))
        self.last_step += 1
        return lr

    def state_dict(self) -> dict[str, Any]:
        """Step count, current LR, feature averages and the controller's last observation."""
        actor = self.controller._actor
        previous = actor.features.previous
        return {**super().state_dict(), "step": self.last_step, "current": float(actor.current),
                "ema": dict(actor.features.ema), "meta_loss": float(actor.meta_loss),
                "previous": None if previous is None else [p.detach().cpu().clone()
                                                           for p in previous],
                "obs": None if actor.obs is None else torch.from_numpy(np.array(actor.obs)),
                "loss_scale": self.loss_scale}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        actor = self.controller._actor
        self.last_step = int(state_dict["step"])
        actor.current = float(state_dict["current"])
        actor.features.ema = {k: float(v) for k, v in state_dict["ema"].items()}
        actor.meta_loss = float(state_dict["meta_loss"])
        previous = state_dict["previous"]
        actor.features.previous = None if previous is None else [
            t.to(p.device) for t, p in zip(previous, self.params)]
        obs = state_dict["obs"]
        actor.obs = None if obs is None else obs.numpy()
        self.loss_scale = float(state_dict["loss_scale"])
        super().load_state_dict(state_dict)
