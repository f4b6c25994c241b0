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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metalr.protocols import EpisodicLearner, RunInfo, StepContext
from metalr.weights import WeightsError, load_meta_learner


class ControlledLR:
    """Per batch, after ``loss.backward()`` and before ``optimizer.step()``::

        scheduler.step(loss, x)   # x: the batch's model inputs; sets this step's LR

    ``meta_loss()`` returns the loss of the current model on a held-out batch (no gradient);
    it is called every ``act_every`` steps. ``lr`` is the first LR (unset: the controller's
    ``initial_lr`` option, else 0.1). ``loss_scale`` must match meta-training (1 for images).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, controller: Any, *,
                 total_steps: int, meta_loss: Callable[[], float], lr: float | None = None,
                 loss_scale: float = 1.0):
        if not isinstance(controller, EpisodicLearner):
            raise TypeError(f"{type(controller).__name__} is not a trained LR controller "
                            "(an EpisodicLearner); for MLR-SNet nets use metalr.LearnedLR")
        self.optimizer, self.model, self.controller = optimizer, model, controller
        self.meta_loss = meta_loss
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._names = [n for n, p in model.named_parameters() if p.requires_grad]
        controller.frozen = True
        controller.start(RunInfo(1, total_steps, optimizer, torch.device("cpu"), 0,
                                 types.SimpleNamespace(loss_scale=loss_scale)))
        if lr is not None:
            controller._actor.current = float(lr)
        self.loss_scale, self.last_step = float(loss_scale), 0
        self._last_lr = [float(g["lr"]) for g in optimizer.param_groups]

    @classmethod
    def from_pretrained(cls, path: str | Path, optimizer: torch.optim.Optimizer,
                        model: nn.Module, **kwargs: Any) -> ControlledLR:
        """Load a controller saved by a recipe (``theta-final.safetensors``); safetensors only."""
        controller = load_meta_learner(path, frozen=True)
        if not isinstance(controller, EpisodicLearner):
            raise WeightsError(f"{path}: holds a {type(controller).__name__}, not an LR "
                               "controller; load it with metalr.LearnedLR.from_pretrained")
        return cls(optimizer, model, controller, **kwargs)

    def _outputs(self, inputs: Any, params: Sequence[torch.Tensor] | None) -> torch.Tensor:
        mapping = dict(zip(self._names, params or self.params))
        with torch.no_grad():
            return torch.func.functional_call(self.model, mapping, (inputs,))

    def step(self, loss: torch.Tensor | float, inputs: Any) -> float:
        """Set (and return) the LR of the coming ``optimizer.step()``."""
        loss = torch.as_tensor(loss).detach()
        ctx = StepContext(
            step=self.last_step, epoch=0, loss=loss, loss_input=loss / self.loss_scale,
            params=self.params,
            grads=[p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params],
            optimizer=self.optimizer, batch_loss=None, meta_loss=self.meta_loss,
            batch_outputs=functools.partial(self._outputs, inputs))
        lr = float(self.controller.lr(ctx))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)
        self.last_step += 1
        return lr

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)
