"""Hugging Face Transformers: a learned LR schedule in ``Trainer``
(``pip install 'metalr[transformers]'``).

Where the loss comes from: ``Trainer.training_step`` runs forward and backward for one
micro-batch and returns its loss (divided by the gradient accumulation steps, so the sum over
a window is the step's mean loss); :class:`LearnedLRMixin` overrides it to hand that loss on.
The Trainer's ``on_pre_optimizer_step`` callback event comes after the backward passes (and
gradient clipping) and just before ``optimizer.step()``: :class:`LearnedLRCallback` sets the LR
there, so each update uses the LR computed from its own loss (paper Eq. 12).

The schedule takes the Trainer's ``lr_scheduler`` slot, so the Trainer logs its LR
(``learning_rate``), saves its state to ``scheduler.pt`` in every checkpoint and loads it
(``weights_only=True``) on ``train(resume_from_checkpoint=...)``. The Trainer steps that slot
again after the update; that call does nothing here.

Of ``TrainingArguments``' schedule settings, the warm-up (``warmup_steps``, a count or a ratio
of the run) is honoured; ``lr_scheduler_type`` and ``lr_scheduler_kwargs`` describe the schedule
the learned one replaces: any but the default ``linear`` or a ``constant`` one warns, naming it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

try:
    from transformers import Trainer, TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("metalr.integrations.transformers needs Transformers: "
                      "pip install 'metalr[transformers]'") from exc

from metalr.scheduler.learned import LearnedLR, NetSpec

QUIET_SCHEDULES = ("linear", "constant", "constant_with_warmup")
"""``lr_scheduler_type`` values replaced without a warning: the default (most runs never set
it, so a warning there would fire on every run) and the constant ones (nothing is lost)."""


class TrainerLearnedLR:
    """The Trainer's ``lr_scheduler``: a :class:`metalr.LearnedLR` stepped before the update.

    ``add_loss`` sums the micro-batch losses of a step, :meth:`apply` sets the LR from them
    (called by :class:`LearnedLRCallback`), and ``step()``, which the Trainer calls after the
    update, is a no-op.
    """

    def __init__(self, learned: LearnedLR) -> None:
        self.learned = learned
        self.optimizer = learned.optimizer
        self._loss: torch.Tensor | None = None

    def add_loss(self, loss: torch.Tensor) -> None:
        loss = loss.detach().float().cpu()
        self._loss = loss if self._loss is None else self._loss + loss

    def apply(self) -> float:
        """Set the LR of the coming ``optimizer.step()`` from the step's summed loss."""
        if self._loss is None:
            raise RuntimeError("no training loss before this optimizer step: train with "
                               "LearnedLRTrainer (or a Trainer with LearnedLRMixin)")
        lr = self.learned.step(self._loss)
        self._loss = None
        return lr

    def step(self, *args: Any, **kwargs: Any) -> None:
        """The Trainer's call after the update: the LR was already set before it."""

    def get_last_lr(self) -> list[float]:
        return self.learned.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return self.learned.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.learned.load_state_dict(state_dict)


class LearnedLRCallback(TrainerCallback):
    """Sets the LR just before each ``optimizer.step()`` (``on_pre_optimizer_step``)."""

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        scheduler = kwargs.get("lr_scheduler")
        if not isinstance(scheduler, TrainerLearnedLR):
            raise TypeError("LearnedLRCallback needs the Trainer's lr_scheduler to be a "
                            "TrainerLearnedLR: train with LearnedLRTrainer")
        scheduler.apply()


class LearnedLRMixin:
    """Put before ``Trainer`` (or a subclass of it) in the bases to train with a learned schedule.

    ``nets``, ``gamma``, ``loss_scale`` and ``warmup_start`` are those of
    :meth:`metalr.LearnedLR.from_pretrained`; ``lr`` (where the schedule starts) defaults to
    ``TrainingArguments.learning_rate``; the schedule's length is the Trainer's number of update
    steps. ``warmup_steps`` (a linear ramp times the learned LR) defaults to the Trainer's own,
    ``TrainingArguments.warmup_steps`` (or its ratio of the run); 0 turns it off. A
    ``lr_scheduler_type`` other than ``linear`` (the default) or a constant one, and any
    ``lr_scheduler_kwargs``, warn once: the learned schedule replaces them.
    """

    def __init__(self, *args: Any, nets: NetSpec | Sequence[NetSpec], lr: float | None = None,
                 gamma: float | None = None, loss_scale: float = 1.0,
                 warmup_steps: int | None = None, warmup_start: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.lr_scheduler is not None:
            raise ValueError("a learned schedule replaces the Trainer's lr_scheduler: pass "
                             "optimizers=(optimizer, None)")
        self.learned_lr_options: dict[str, Any] = {
            "nets": nets, "lr": lr, "gamma": gamma, "loss_scale": loss_scale,
            "warmup_steps": warmup_steps, "warmup_start": warmup_start}
        replaced = _replaced_schedule(self.args)
        if replaced:
            warnings.warn(f"TrainingArguments sets {replaced}: the learned LR schedule replaces "
                          "it (the warm-up, warmup_steps, is kept)", UserWarning, stacklevel=2)
        self.add_callback(LearnedLRCallback)

    def create_scheduler(self, num_training_steps: int,
                         optimizer: torch.optim.Optimizer | None = None) -> TrainerLearnedLR:
        if self.lr_scheduler is None:
            optimizer = optimizer if optimizer is not None else self.optimizer
            inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
            opts = dict(self.learned_lr_options)
            if opts["lr"] is None and opts["gamma"] is None:
                opts["lr"] = self.args.learning_rate
            if opts["warmup_steps"] is None:  # the Trainer's: a count, or a ratio of the run
                opts["warmup_steps"] = self.args.get_warmup_steps(num_training_steps)
            learned = LearnedLR.from_pretrained(inner, opts.pop("nets"),
                                                total_steps=num_training_steps, **opts)
            learned.close()  # the callback keeps the order; no watcher on accelerate's step
            self.lr_scheduler = TrainerLearnedLR(learned)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def training_step(self, model: torch.nn.Module, inputs: Any, *args: Any,
                      **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(model, inputs, *args, **kwargs)
        self.lr_scheduler.add_loss(loss)
        return loss


def _replaced_schedule(args: Any) -> str:
    """The schedule settings of ``args`` worth a warning, as the user would write them."""
    kind = getattr(args, "lr_scheduler_type", "linear")
    kind = str(getattr(kind, "value", kind))
    named = [] if kind in QUIET_SCHEDULES else [f"lr_scheduler_type={kind!r}"]
    if getattr(args, "lr_scheduler_kwargs", None):
        named.append(f"lr_scheduler_kwargs={args.lr_scheduler_kwargs!r}")
    return " and ".join(named)


class LearnedLRTrainer(LearnedLRMixin, Trainer):
    """``transformers.Trainer`` with a learned LR schedule (see :class:`LearnedLRMixin`)."""
