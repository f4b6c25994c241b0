"""timm: a learned LR schedule behind timm's scheduler interface (``pip install 'metalr[timm]'``).

timm's training scripts call ``step_update(num_updates, metric)`` per optimizer update and
``step(epoch, metric)`` per epoch. Here ``step_update`` feeds ``metric`` (the loss) to the learned
schedule and sets the LR of the next ``optimizer.step()``; ``step`` does nothing (the schedule
is per update). Called between ``loss.backward()`` and ``optimizer.step()`` with this batch's
loss, it is the paper's order (Eq. 12). timm's own ``train.py`` calls it *after* the update with
the epoch's running mean loss: the LR of update n + 1 then comes from the losses up to update
n, a one-step lag.
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
    applies."""

    def __init__(self, optimizer: torch.optim.Optimizer, nets: NetSpec | Sequence[NetSpec], *,
                 total_steps: int, lr: float | None = None, gamma: float | None = None,
                 loss_scale: float = 1.0) -> None:
        super().__init__(optimizer, "lr", t_in_epochs=False)
        self.learned = LearnedLR.from_pretrained(optimizer, nets, total_steps=total_steps,
                                                 lr=lr, gamma=gamma, loss_scale=loss_scale)
        self.learned.close()  # timm's train.py steps after optimizer.step(): don't warn there

    def _get_lr(self, t: int) -> list[float]:
        raise NotImplementedError("the learned LR depends on the loss, not on t alone")

    def step(self, epoch: int, metric: float | None = None) -> None:
        """Per epoch: nothing to do, the learned schedule moves per update."""

    def step_update(self, num_updates: int, metric: float | torch.Tensor | None = None) -> None:
        """Set the LR of the coming update from ``metric``, this step's training loss."""
        if metric is None:
            raise ValueError("TimmLearnedLR.step_update needs the training loss as metric")
        self.metric = float(metric)
        self.update_groups(self.learned.step(torch.as_tensor(self.metric)))

    def state_dict(self) -> dict[str, Any]:
        """The learned schedule's state (plain tensors and numbers) and the last metric."""
        return {"learned": self.learned.state_dict(), "metric": self.metric}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.learned.load_state_dict(state_dict["learned"])
        self.metric = state_dict["metric"]
