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
    from lightning.pytorch.utilities.rank_zero import rank_zero_warn
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("metalr.integrations.lightning needs Lightning: "
                      "pip install 'metalr[lightning]'") from exc

from metalr.scheduler.learned import LearnedLR, NetSpec


class LearnedLRCallback(pl.Callback):
    """Sets the LR of every optimizer step from that step's training loss.

    ``nets``, ``lr``, ``gamma``, ``loss_scale``, ``warmup_steps`` and ``warmup_start`` are those
    of :meth:`metalr.LearnedLR.from_pretrained` (the warm-up is a linear ramp over the first
    ``warmup_steps`` optimizer steps, times the learned LR); ``total_steps`` defaults to the
    fit's ``trainer.estimated_stepping_batches``. The scheduler is built on the fit's optimizer
    number ``optimizer_index`` when training starts; one callback per optimizer (each has its
    own checkpoint entry). A scheduler that ``configure_optimizers`` returns for the same
    optimizer is overridden: it warns, and the learned LR is put back after Lightning steps it.
    The state goes into Lightning's checkpoints and comes back on ``fit(ckpt_path=...)``.

    With several optimizers (manual optimization), an optimizer step takes the losses
    backpropagated since the previous optimizer step of any optimizer; a step with none since
    (one backward shared by several optimizers) takes the same loss as the step before it.
    """

    def __init__(self, nets: NetSpec | Sequence[NetSpec], *, total_steps: int | None = None,
                 lr: float | None = None, gamma: float | None = None, loss_scale: float = 1.0,
                 optimizer_index: int = 0, warmup_steps: int = 0,
                 warmup_start: float = 0.0) -> None:
        self.nets, self.total_steps, self.optimizer_index = nets, total_steps, optimizer_index
        self.options: dict[str, Any] = {"lr": lr, "gamma": gamma, "loss_scale": loss_scale,
                                        "warmup_steps": warmup_steps,
                                        "warmup_start": warmup_start}
        self.scheduler: LearnedLR | None = None
        self._loss: torch.Tensor | None = None  # summed over the backward passes of one step
        self._last: tuple[torch.Tensor, Any] | None = None  # the last step's loss, its optimizer
        self._restored: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        """One checkpoint entry per optimizer, so several callbacks can share a Trainer."""
        return self._generate_state_key(optimizer_index=self.optimizer_index)

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
        self._loss = self._last = None
        if self._restored is not None:
            self.scheduler.load_state_dict(self._restored)
            self._restored = None
        overridden = [type(config.scheduler).__name__ for config in trainer.lr_scheduler_configs
                      if getattr(config.scheduler, "optimizer", None) is optimizer]
        if overridden:
            rank_zero_warn(
                f"configure_optimizers returns {', '.join(overridden)} for optimizer "
                f"{self.optimizer_index}, whose LR LearnedLRCallback sets before every update: "
                "the learned LR replaces it (Lightning still steps it and saves its state). "
                "Return the optimizer alone; for a warm-up pass warmup_steps to the callback")

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           loss: torch.Tensor) -> None:
        loss = loss.detach().float()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:  # 16-mixed hands the scaled loss to this hook
            loss = loss / scaler.get_scale()
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        optimizer = getattr(optimizer, "optimizer", optimizer)
        if self._loss is not None:
            self._last = (self._loss, optimizer)
        elif self._last is not None and self._last[1] is not optimizer:
            self._last = (self._last[0], optimizer)  # one backward, several optimizers
        else:
            self._last = None  # this optimizer stepped twice on one backward: no loss
        self._loss = None
        if self.scheduler is None or optimizer is not self.scheduler.optimizer:
            return
        if self._last is None:
            raise RuntimeError("LearnedLRCallback saw no loss before this optimizer step "
                               "(on_before_backward did not run)")
        self.scheduler.step(self._last[0])

    # Lightning steps the schedulers of configure_optimizers after the update; one for this
    # optimizer changes its LR (a chainable one rescales the learned LR). Putting the learned
    # LR back after them keeps the optimizer, and LearningRateMonitor, on the LR really used.
    # Non-plateau schedulers step before on_train_batch_end; ReduceLROnPlateau only after it,
    # so it is undone at the next batch or epoch start (before the monitor when this callback
    # comes first in the Trainer's callbacks).
    def _show_learned_lr(self) -> None:
        if self.scheduler is not None and self.scheduler.last_step > 0:
            for group, lr in zip(self.scheduler.optimizer.param_groups,
                                 self.scheduler.get_last_lr()):
                group["lr"] = lr

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._show_learned_lr()

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self._show_learned_lr()

    def on_train_epoch_start(self, *args: Any, **kwargs: Any) -> None:
        self._show_learned_lr()

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

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # checkpoints written before the per-optimizer key held the (one) state under the
        # class name; Lightning calls load_state_dict after this hook only for the new key
        states, legacy = checkpoint.get("callbacks") or {}, type(self).__qualname__
        mine = [cb for cb in trainer.callbacks if isinstance(cb, LearnedLRCallback)]
        if legacy in states and self.state_key not in states and len(mine) == 1:
            self.load_state_dict(states[legacy])
