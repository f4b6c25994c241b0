"""PyTorch Lightning: a learned LR schedule as a ``Callback`` (``pip install 'metalr[lightning]'``).

Where the loss comes from: ``on_before_backward`` receives the loss of the batch being trained
(divided by ``accumulate_grad_batches``, so the sum over an accumulation window is the mean
loss of the step; multiplied by the AMP grad scaler, which is divided out here). Lightning
runs ``training_step`` and ``backward`` inside ``optimizer.step(closure)`` and calls
``on_before_optimizer_step`` after the closure and before the update, so the LR set there is
the one this step's update uses, computed from this step's loss (paper Eq. 12).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("metalr.integrations.lightning needs Lightning: "
                      "pip install 'metalr[lightning]'") from exc

from metalr.scheduler.learned import LearnedLR, NetSpec


class LearnedLRCallback(pl.Callback):
    """Sets the LR of every optimizer step from that step's training loss.

    ``nets``, ``lr``, ``gamma`` and ``loss_scale`` are those of
    :meth:`metalr.LearnedLR.from_pretrained`; ``total_steps`` defaults to the fit's
    ``trainer.estimated_stepping_batches``. The scheduler is built on the fit's optimizer number
    ``optimizer_index`` when training starts; do not also return it from
    ``configure_optimizers`` (Lightning would step it a second time, after the update). Its
    state goes into Lightning's checkpoints and comes back on ``fit(ckpt_path=...)``.
    """

    def __init__(self, nets: NetSpec | Sequence[NetSpec], *, total_steps: int | None = None,
                 lr: float | None = None, gamma: float | None = None, loss_scale: float = 1.0,
                 optimizer_index: int = 0) -> None:
        self.nets, self.total_steps, self.optimizer_index = nets, total_steps, optimizer_index
        self.options: dict[str, Any] = {"lr": lr, "gamma": gamma, "loss_scale": loss_scale}
        self.scheduler: LearnedLR | None = None
        self._loss: torch.Tensor | None = None  # summed over the micro-batches of one step
        self._restored: dict[str, Any] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[self.optimizer_index]
        total = self.total_steps or trainer.estimated_stepping_batches
        if not 0 < total < float("inf"):
            raise ValueError("LearnedLRCallback needs the run's length: give total_steps, or "
                             "max_steps / max_epochs to the Trainer")
        self.scheduler = LearnedLR.from_pretrained(optimizer, self.nets, total_steps=int(total),
                                                   **self.options)
        # the optimizer's step pre-hook fires before Lightning's closure computes the loss;
        # this callback guarantees the order, so the scheduler's watcher would only misfire
        self.scheduler.close()
        if self._restored is not None:
            self.scheduler.load_state_dict(self._restored)
            self._restored = None

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           loss: torch.Tensor) -> None:
        loss = loss.detach().float()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:  # 16-mixed hands the scaled loss to this hook
            loss = loss / scaler.get_scale()
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.scheduler is None or getattr(optimizer, "optimizer", optimizer) is not \
                self.scheduler.optimizer:
            return
        if self._loss is None:
            raise RuntimeError("LearnedLRCallback saw no loss before this optimizer step "
                               "(on_before_backward did not run)")
        self.scheduler.step(self._loss)
        self._loss = None

    def state_dict(self) -> dict[str, Any]:
        if self.scheduler is not None:
            return self.scheduler.state_dict()
        return dict(self._restored or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before training starts, i.e. before the scheduler exists
        self._restored = dict(state_dict)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(self._restored)
            self._restored = None
