"""The base of the paper's image tasks: splits streamed through a ``DataLoader``.

Unlike the small in-memory tasks (:mod:`metalr.engine.data`), these decode and augment every image
on the fly, in worker processes (persistent across epochs, pinned memory on CUDA), and hand the
engine batches already on the training device.

Splits. The meta split is carved from the *training* split, class-balanced, by a seeded
permutation (1,000 images on CIFAR-10/100 as in Appendix B), and is disjoint from what is
trained on. It is read with the evaluation transform (no augmentation): it stands for unseen
data. The test split is the dataset's own test (or validation) set. The last training batch is
kept, smaller, as ``DataLoader`` does by default in the paper's code (``drop_last`` false).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from metalr.contracts.protocols import ModelSpec
from metalr.engine.datafiles import data_root, require

from .sources import Source

Batch = tuple[torch.Tensor, torch.Tensor]
Transform = Callable[..., torch.Tensor]

META_CACHE_BYTES = 256 * 2**20
"""A meta split up to this size (CIFAR's 1,000 images are 12 MB) is decoded once and kept on
the device; a larger one is decoded batch by batch."""


class LoaderOptions(BaseModel):
    """Options every image task has."""

    model_config = ConfigDict(extra="forbid")
    root: str | None = Field(None, description="the dataset's folder; default "
                             "$METALR_DATA/<dataset>, else ~/metalr-data/<dataset>")
    workers: int | None = Field(None, ge=0, description="DataLoader worker processes; "
                                "default min(8, CPUs); 0 loads in the training process")
    eval_batch_size: int = Field(512, ge=1, description="batch size when evaluating a split")
    train_eval_size: int = Field(10_000, ge=0, description="evaluate 'train' on this many "
                                 "images (a fixed seeded subset; 0: all of it)")
    drop_last: bool = Field(False, description="drop the last, smaller training batch "
                            "(the paper's code keeps it)")
    augment: bool = Field(True, description="the paper's augmentation on the training split")


class Indexed(Dataset):
    """``source`` restricted to ``indices``, through ``transform``."""

    def __init__(self, source: Source, indices: torch.Tensor, transform: Transform):
        self.source, self.indices, self.transform = source, indices.tolist(), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``key``: an index, or ``(index, epoch_seed)`` from :class:`EpochOrder`, whose random
        augmentation then depends on nothing else: not on which worker draws it, nor on what
        that worker drew before (a resumed run's fresh workers crop as the first run's did)."""
        i, epoch_seed = key if isinstance(key, tuple) else (key, None)
        j = self.indices[i]
        if epoch_seed is None:
            image = self.transform(self.source.image(j))
        else:
            with torch.random.fork_rng(devices=[]):  # the caller's generator is left alone
                # the CPU generator alone, which the transforms draw from: torch.manual_seed
                # would also visit every accelerator backend, ~130 us an image against ~1 us
                torch.default_generator.manual_seed(sample_seed(epoch_seed, i))
                image = self.transform(self.source.image(j))
        return image, int(self.source.labels[j])


def sample_seed(epoch_seed: int, i: int) -> int:
    """A seed per (epoch, image): SeedSequence mixes the two so that neighbours do not get
    neighbouring streams."""
    return int(np.random.SeedSequence([epoch_seed, i]).generate_state(1, np.uint64)[0] >> 1)


class EpochOrder(Sampler[tuple[int, int]]):
    """The order of one epoch and its augmentation seed, set by the task before each pass from
    the engine's generator, so that the ``DataLoader`` (and its persistent workers) is built
    once while order and crops follow that generator, which checkpoints restore."""

    def __init__(self, n: int):
        self.order: list[int] = list(range(n))
        self.epoch_seed = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i, self.epoch_seed) for i in self.order)

    def __len__(self) -> int:
        return len(self.order)


def balanced_split(labels: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor,
                                                                              torch.Tensor]:
    """``(meta, rest)`` indices: ``per_class`` images of every class, chosen by a seeded
    permutation, and all the others. Disjoint by construction."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    taken: dict[int, int] = {}
    meta_mask = torch.zeros(len(labels), dtype=torch.bool)
    for i in perm.tolist():
        c = int(labels[i])
        if taken.get(c, 0) < per_class:
            taken[c] = taken.get(c, 0) + 1
            meta_mask[i] = True
    short = {c: n for c, n in taken.items() if n < per_class}
    if short:
        c, n = next(iter(short.items()))
        raise ValueError(f"meta_per_class {per_class} is more than class {c} has ({n} images)")
    if meta_mask.all() and len(labels):
        raise ValueError(f"meta_per_class {per_class} leaves no training data")
    idx = torch.arange(len(labels))
    return idx[meta_mask], idx[~meta_mask]


class ImageTask:
    """A classification task on image files; subclasses say where the data is and how it looks.

    Subclasses set ``spec``, ``dataset`` (the folder name under ``$METALR_DATA``) and
    ``Options`` (their schema: :class:`LoaderOptions` and a ``meta_per_class``), and implement
    :meth:`required` (files relative to the root), :meth:`load` (train and test sources) and
    :meth:`transforms` (train and eval transforms).

    The constructor takes the options as keywords (options: see the subclass's ``Options``),
    validates them with that schema (a bad value raises pydantic's ``ValidationError``), keeps
    them resolved as ``opts``, and sets the common ones as attributes; a subclass with more
    options reads them from ``self.opts`` after calling it.
    """

    Options: ClassVar[type[LoaderOptions]]
    opts: LoaderOptions

    loss_scale: float = 1.0
    default_gamma: float = 1.0  # the paper's gamma for images
    metric: str = "accuracy"
    top5: bool = False  # also report top-5 accuracy (ImageNet's second column in the paper)
    higher_is_better: bool = True
    cheap_setup: bool = False  # decoding the data is not cheap; validate calls check_files()
    spec: ModelSpec
    dataset: str = ""
    hint: str = ""  # where to get the files, for the missing-files error

    def __init__(self, **options: Any):
        self.opts = o = self.Options(**options)
        self.root: Path = data_root(o.root, self.dataset)
        self.meta_per_class, self.eval_batch_size = o.meta_per_class, o.eval_batch_size
        self.workers = min(8, os.cpu_count() or 1) if o.workers is None else o.workers
        self.train_eval_size, self.drop_last, self.augment = (o.train_eval_size, o.drop_last,
                                                              o.augment)
        self.device = torch.device("cpu")
        self.splits: dict[str, Indexed] = {}
        self._loaders: dict[tuple[str, int], DataLoader] = {}
        self._meta_cache: Batch | None = None

    # -- what a subclass provides ------------------------------------------------------------

    def required(self) -> list[str]:
        """Files and folders, relative to :attr:`root`, that :meth:`load` reads."""
        raise NotImplementedError

    def load(self) -> tuple[Source, Source]:
        """The full training source (the meta split is carved from it) and the test source."""
        raise NotImplementedError

    def transforms(self) -> tuple[Transform, Transform]:
        """``(train, eval)`` transforms: PIL image -> normalised tensor."""
        raise NotImplementedError

    def carve(self, train: Source, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(meta, train)`` indices into the training source."""
        return balanced_split(train.labels, self.meta_per_class, seed)

    # -- the Task protocol ------------------------------------------------------------------

    def check_files(self) -> None:
        """Raise :class:`~metalr.engine.datafiles.MissingDataError` naming every missing file;
        cheap (no file is opened), so ``metalr validate`` calls it before anything runs."""
        require(self.root, self.required(), self.spec_name(), self.hint)

    def spec_name(self) -> str:
        return type(self).__name__

    def setup(self, seed: int, device: torch.device) -> None:
        self.check_files()
        self.device = torch.device(device)
        train_src, test_src = self.load()
        meta_idx, train_idx = self.carve(train_src, seed)
        train_tf, eval_tf = self.transforms()
        if not self.augment:
            train_tf = eval_tf
        gen = torch.Generator().manual_seed(seed)
        eval_train = train_idx
        if self.train_eval_size and self.train_eval_size < len(train_idx):
            eval_train = train_idx[torch.randperm(len(train_idx), generator=gen)
                                   [: self.train_eval_size]].sort().values
        self.indices = {"train": train_idx, "meta": meta_idx}
        self.splits = {
            "fit": Indexed(train_src, train_idx, train_tf),
            "train": Indexed(train_src, eval_train, eval_tf),
            "meta": Indexed(train_src, meta_idx, eval_tf),
            "test": Indexed(test_src, torch.arange(len(test_src)), eval_tf),
        }
        self._seed = seed
        self._loaders.clear()
        self._meta_cache = None

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        key = (split, batch_size)
        if key not in self._loaders:
            if not self.splits:
                raise RuntimeError("call setup(seed, device) first")
            data = self.splits[split]
            fit = split == "fit"
            self._loaders[key] = DataLoader(
                data, batch_size=batch_size, sampler=EpochOrder(len(data)) if fit else None,
                num_workers=self.workers, pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0, drop_last=fit and self.drop_last,
                # the workers' own seeds; augmentation is seeded per image (Indexed)
                generator=torch.Generator().manual_seed(self._seed),
                prefetch_factor=4 if self.workers > 0 else None,
            )
        return self._loaders[key]

    def _to_device(self, batch: Sequence[torch.Tensor]) -> Batch:
        x, y = batch
        blocking = self.device.type != "cuda"
        return (x.to(self.device, non_blocking=not blocking),
                y.to(self.device, non_blocking=not blocking))

    def num_train_batches(self, batch_size: int) -> int:
        n = len(self.splits["fit"]) if self.splits else 0
        if n == 0:
            raise RuntimeError("call setup(seed, device) first")
        whole = n // batch_size if self.drop_last else math.ceil(n / batch_size)
        if whole == 0:
            raise ValueError(f"batch size {batch_size} is larger than the {n} training images "
                             "and drop_last is set: no batch would remain")
        return whole

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        loader = self._loader("fit", batch_size)
        loader.sampler.order = torch.randperm(len(self.splits["fit"]),
                                              generator=generator).tolist()
        loader.sampler.epoch_seed = int(torch.randint(2**62, (), generator=generator))
        for batch in loader:
            yield self._to_device(batch)

    def meta_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        meta = self.splits["meta"]
        if len(meta) == 0:
            raise ValueError("this task has no meta split (meta_per_class is 0)")
        pick = torch.randperm(len(meta), generator=generator)[:batch_size]
        if self._meta_cache is None and self._meta_bytes() <= META_CACHE_BYTES:
            x, y = zip(*(meta[i] for i in range(len(meta))))
            self._meta_cache = self._to_device((torch.stack(x), torch.as_tensor(y)))
        if self._meta_cache is not None:
            pick = pick.to(self.device)
            return self._meta_cache[0][pick], self._meta_cache[1][pick]
        x, y = zip(*(meta[i] for i in pick.tolist()))
        return self._to_device((torch.stack(x), torch.as_tensor(y)))

    def _meta_bytes(self) -> int:
        return len(self.splits["meta"]) * math.prod(self.spec.input_shape) * 4

    def loss(self, model: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    @property
    def metrics(self) -> tuple[str, ...]:
        """What :meth:`evaluate` returns."""
        return ("loss", "accuracy", "top5_accuracy") if self.top5 else ("loss", "accuracy")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        if split not in ("train", "meta", "test"):
            raise KeyError(f"unknown split {split!r}; expected train, meta or test")
        if len(self.splits[split]) == 0:
            return {}
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        correct5 = torch.zeros((), device=self.device, dtype=torch.long)
        try:
            for batch in self._loader(split, self.eval_batch_size):
                x, y = self._to_device(batch)
                out = model(x)
                loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
                correct += (out.argmax(1) == y).sum()
                if self.top5:  # a label among the 5 highest scores (all of them, under 5 classes)
                    top = out.topk(min(5, out.shape[1]), dim=1).indices
                    correct5 += (top == y[:, None]).any(1).sum()
        finally:
            model.train(was_training)
        n = len(self.splits[split])  # one host sync per split, not per batch
        result = {"loss": loss_sum.item() / n, "accuracy": correct.item() / n}
        if self.top5:
            result["top5_accuracy"] = correct5.item() / n
        return result
