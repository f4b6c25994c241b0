"""The data order of a run: which batches a seed gives, and in which order, decided in one place.

The engine, the LR probe, the RL controller's environment and the tests all draw their batches
through :class:`DataOrder`, so a run, its probe and a controller episode with the same seed see
the same batches (the controller's environment once seeded with ``train.seed`` where the engine
used ``train.order_seed``; nothing here can drift that way again).
"""

from __future__ import annotations

import dataclasses
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
    skip: int = 0  # batches of the first epoch left out (:meth:`replicate`)

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
            for index, batch in enumerate(task.train_batches(batch_size, generator)):
                if epoch > 0 or index >= self.skip:
                    yield epoch, batch
            epoch += 1

    def replicate(self, offset: int, task: Task, batch_size: int, skip: int) -> DataOrder:
        """Another order of the same data, for a noise replicate: seed + ``offset``. A task whose
        generator does not decide its order (a language model's windows, in the text's order)
        gives the same batches for every seed, so its replicate leaves out the first ``skip``
        batches instead: a replicate on the same batches measures no noise at all."""
        other = DataOrder(self.seed + offset)
        if _same(_first(task, batch_size, self), _first(task, batch_size, other)):
            return dataclasses.replace(other, skip=skip)
        return other


def _first(task: Task, batch_size: int, order: DataOrder) -> object:
    return next(iter(task.train_batches(batch_size, order.train_generator())), None)


def _same(a: object, b: object) -> bool:
    """Whether two batches hold equal tensors (tuples, lists and dataclasses of them)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and bool(torch.equal(a, b)))
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        return all(_same(getattr(a, f.name), getattr(b, f.name))
                   for f in dataclasses.fields(a))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
