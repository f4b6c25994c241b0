"""The data order of a run: which batches a seed gives, and in which order, decided in one place.

The engine, the LR probe, the RL controller's environment and the tests all draw their batches
through :class:`DataOrder`, so a run, its probe and a controller episode with the same seed see
the same batches (the controller's environment once seeded with ``train.seed`` where the engine
used ``train.order_seed``; nothing here can drift that way again).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from metalr.contracts.protocols import Batch, Task

META_OFFSET = 1  # the meta batches' generator: seed + 1
JUDGE_OFFSET = 7919  # the probe's fixed judging batches: seed + 7919 (apart from the meta batches)


@dataclass(frozen=True)
class DataOrder:
    """The generators a run's batches come from, all derived from one seed."""

    seed: int

    @classmethod
    def of(cls, seed: int, order_seed: int | None = None) -> DataOrder:
        """A run's order: ``train.order_seed`` when set, else the run's ``train.seed``."""
        return cls(seed if order_seed is None else order_seed)

    def train_generator(self) -> torch.Generator:
        """Shuffles the training set, epoch after epoch (its state at an epoch's start resumes
        it)."""
        return torch.Generator().manual_seed(self.seed)

    def meta_generator(self) -> torch.Generator:
        """Draws the meta batches of the meta-updates (and of rules that look at the meta set)."""
        return torch.Generator().manual_seed(self.seed + META_OFFSET)

    def judge_generator(self) -> torch.Generator:
        """Draws the LR probe's fixed judging batches (never the meta-updates' batches)."""
        return torch.Generator().manual_seed(self.seed + JUDGE_OFFSET)

    def batches(self, task: Task, batch_size: int, epochs: int | None = None,
                ) -> Iterator[tuple[int, Batch]]:
        """``(epoch, batch)`` in the order a run trains on them; endless when ``epochs`` is None."""
        generator, epoch = self.train_generator(), 0
        while epochs is None or epoch < epochs:
            for batch in task.train_batches(batch_size, generator):
                yield epoch, batch
            epoch += 1
