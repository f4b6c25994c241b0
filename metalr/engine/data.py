"""In-memory classification data: the base that small task plugins build on.

The meta split is carved out of the training data with a seeded permutation, so the two never
share a sample (the reference code's meta set overlaps ~98% of its training set).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from metalr.contracts.protocols import ModelSpec

Batch = tuple[torch.Tensor, torch.Tensor]


def loss_output(task: Any, model: Callable[..., Any], batch: Any) -> Any:
    """What ``model`` returned when ``task.loss`` called it on ``batch`` (its last call). The
    loss decides how a batch reaches the model (a language model passes its hidden state too),
    so asking the loss is the one way that fits every task."""
    out: list[Any] = []
    task.loss(lambda *a, **k: out.append(model(*a, **k)) or out[-1], batch)
    return out[-1]


def disjoint_split(n: int, sizes: Sequence[int], seed: int) -> list[torch.Tensor]:
    """Split ``range(n)`` into disjoint index sets of the given sizes, by a seeded permutation.

    A size of -1 means "all that is left" (at most one may be -1).
    """
    if sum(1 for s in sizes if s == -1) > 1:
        raise ValueError("at most one split size may be -1")
    fixed = sum(s for s in sizes if s != -1)
    if any(s < -1 for s in sizes) or fixed > n:
        raise ValueError(f"split sizes {list(sizes)} do not fit {n} samples")
    sizes = [n - fixed if s == -1 else s for s in sizes]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(torch.split(perm, sizes))[: len(sizes)]


class TensorClassificationTask:
    """A classification task whose splits are tensors held on the training device.

    Subclasses implement :meth:`load` (returning train and test tensors) and set ``spec``.
    Batches are index slices of device tensors: no DataLoader, no worker processes, which
    keeps the per-step overhead of small CPU tasks close to a hand-written loop.
    """

    loss_scale: float = 1.0
    default_gamma: float = 1.0
    metric: str = "accuracy"
    metrics: tuple[str, ...] = ("loss", "accuracy")  # what evaluate() returns
    higher_is_better: bool = True
    cheap_setup: bool = True  # in memory, no download: `metalr validate` sets it up to check limits
    spec: ModelSpec

    def __init__(self, meta_size: int = 500):
        self.meta_size = meta_size
        self.splits: dict[str, Batch] = {}

    def load(self) -> tuple[Batch, Batch]:
        """Return ``((x_train, y_train), (x_test, y_test))`` as CPU tensors."""
        raise NotImplementedError

    def setup(self, seed: int, device: torch.device) -> None:
        (x, y), (x_test, y_test) = self.load()
        if self.meta_size >= len(y):
            raise ValueError(
                f"meta_size {self.meta_size} leaves no training data ({len(y)} samples in all)"
            )
        meta_idx, train_idx = disjoint_split(len(y), [self.meta_size, -1], seed)
        self.indices = {"train": train_idx, "meta": meta_idx}
        self.splits = {
            "train": (x[train_idx].to(device), y[train_idx].to(device)),
            "meta": (x[meta_idx].to(device), y[meta_idx].to(device)),
            "test": (x_test.to(device), y_test.to(device)),
        }

    def num_train_batches(self, batch_size: int) -> int:
        return math.ceil(len(self.splits["train"][1]) / batch_size)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        x, y = self.splits["train"]
        order = torch.randperm(len(y), generator=generator).to(y.device)
        for idx in order.split(batch_size):
            yield x[idx], y[idx]

    def meta_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        x, y = self.splits["meta"]
        if len(y) == 0:
            raise ValueError("this task was set up with meta_size 0: it has no meta set")
        idx = torch.randperm(len(y), generator=generator)[:batch_size].to(y.device)
        return x[idx], y[idx]

    def loss(self, model: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, batch_size: int = 1024) -> dict[str, float]:
        sums = self.summed(model, split, batch_size, lambda out, y: (
            F.cross_entropy(out, y, reduction="sum").item(), (out.argmax(1) == y).sum().item()))
        if sums is None:
            return {}
        (loss_sum, correct), n = sums
        return {"loss": loss_sum / n, "accuracy": correct / n}

    @torch.no_grad()
    def summed(self, model: nn.Module, split: str, batch_size: int,
               per_batch: Callable[[torch.Tensor, torch.Tensor], tuple[float, ...]],
               ) -> tuple[tuple[float, ...], int] | None:
        """``per_batch(outputs, targets)`` summed over ``split`` in eval mode, and the sample
        count; None for an empty split. What a subclass's ``evaluate`` builds its metrics on."""
        x, y = self.splits[split]
        if len(y) == 0:
            return None
        was_training = model.training
        model.eval()
        totals: list[float] = []
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            part = per_batch(model(xb), yb)
            totals = [a + b for a, b in zip(totals, part)] if totals else list(part)
        model.train(was_training)
        return tuple(totals), len(y)
