"""timm: a learned LR schedule behind timm's scheduler interface (``pip install 'metalr[timm]'``).

timm's training scripts call ``step_update(num_updates, metric)`` per optimizer update and
``step(epoch, metric)`` per epoch. Here ``step_update`` feeds ``metric`` (the loss) to the learned
schedule and sets the LR of the next ``optimizer.step()``; ``step`` does nothing (the schedule
is per update). Called between ``loss.backward()`` and ``optimizer.step()`` with this batch's
loss, it is the paper's order (Eq. 12). timm's own ``train.py`` calls it *after* the update with
``losses_m.avg``, the mean loss since the epoch began: the LR of update n + 1 then comes from
that mean at update n, and the run's first update uses the optimizer's own ``lr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

try:
    from timm.scheduler.scheduler import Scheduler
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("metalr.integrations.timm needs timm: pip install 'metalr[timm]'") from exc

from metalr.scheduler.learned import LearnedLR, NetSpec


class TimmLearnedLR(Scheduler):
    """A :class:`metalr.LearnedLR` as a timm ``Scheduler``; timm's ``lr_scale`` per group
    applies.

    ``warmup_t`` is timm's warm-up length, counted here in updates (the schedule moves per
    update): a linear ramp from ``warmup_start`` (a fraction, where timm's ``warmup_lr_init`` is
    an absolute LR) up to the learned LR, inside ``total_steps`` (no ``warmup_prefix``).
    timm's checkpoints hold no scheduler state: save :meth:`state_dict` beside them.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, nets: NetSpec | Sequence[NetSpec], *,
                 total_steps: int, lr: float | None = None, gamma: float | None = None,
                 loss_scale: float = 1.0, warmup_t: int = 0, warmup_start: float = 0.0) -> None:
        super().__init__(optimizer, "lr", t_in_epochs=False)
        self.learned = LearnedLR.from_pretrained(optimizer, nets, total_steps=total_steps,
                                                 lr=lr, gamma=gamma, loss_scale=loss_scale,
                                                 warmup_steps=warmup_t,
                                                 warmup_start=warmup_start)
        self.learned.close()  # timm's train.py steps after optimizer.step(): don't warn there

    def _get_lr(self, t: int) -> list[float]:
        raise NotImplementedError("the learned LR depends on the loss, not on t alone")

    def step(self, epoch: int, metric: float | None = None) -> None:
        """Per epoch: nothing to do, the learned schedule moves per update."""

    def step_update(self, num_updates: int, metric: float | torch.Tensor | None = None) -> None:
        """Set the LR of the coming update from ``metric``, this step's training loss.

        Without a metric (timm's ``train.py`` calls ``step_update(start_epoch *
        updates_per_epoch)`` on ``--resume``) the LR is held: the last learned LR is set again
        and the schedule does not move. Feeding the last loss once more instead would advance
        the nets' state and step count by an update that never happened, so the resumed run
        would no longer give the LRs of the uninterrupted one.
        """
        if metric is None:
            if self.learned.last_step > 0:  # before any loss, the optimizer's LR stays
                self.update_groups(self.learned.get_last_lr()[0])
            return
        self.metric = float(metric)
        self.update_groups(self.learned.step(torch.as_tensor(self.metric)))

    def state_dict(self) -> dict[str, Any]:
        """The learned schedule's state (plain tensors and numbers) and the last metric."""
        return {"learned": self.learned.state_dict(), "metric": self.metric}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.learned.load_state_dict(state_dict["learned"])
        self.metric = state_dict["metric"]
