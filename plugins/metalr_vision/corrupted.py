"""CIFAR-10-C / CIFAR-100-C as *training* sets: the robustness experiment (Table 1, Table 7).

Following Appendix D, a model trains on one corruption of the 10,000 CIFAR test images (all five
severities: 50,000 images, or one severity: 10,000), the meta set is a few *clean* images per
class, and the test set is the clean CIFAR training set (50,000 images, footnote 7).

The clean meta images are drawn from the CIFAR test images, which are the sources of the
corrupted ones: every corrupted copy of a meta image is dropped from training, so the meta set
shares no picture with the training set, and none with the test set.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from metalr.contracts.protocols import ModelSpec
from metalr.engine.datafiles import data_root, require

from . import transforms
from .cifar import CIFAR10_TEST, CIFAR10_TRAIN, CIFAR100_FOLDER
from .image_task import ImageTask, LoaderOptions, Transform
from .sources import ArraySource, cifar_source, npy_source

Corruption = Literal[
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform",
    "pixelate", "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate",
]
"""The 15 corruptions of the paper, then the 4 extra ones the archives also hold."""

PER_SEVERITY = 10_000


class CIFAR10COptions(LoaderOptions):
    corruption: Corruption = Field("gaussian_noise", description="the .npy file trained on")
    severity: int | None = Field(None, ge=1, le=5, description="1..5; unset: all five "
                                 "(50,000 images, the paper's setting)")
    clean_root: str | None = Field(None, description="the clean CIFAR folder (meta and test "
                                   "data); default $METALR_DATA/cifar10 (cifar100)")
    meta_per_class: int = Field(10, ge=0, description="clean images per class as the meta "
                                "set (10, Appendix D)")


class CIFAR10C(ImageTask):
    """Train on CIFAR-10-C ``<corruption>.npy``; meta: clean images; test: clean training set.

    Options: see :class:`CIFAR10COptions`."""

    Options = CIFAR10COptions
    opts: CIFAR10COptions
    spec = ModelSpec(input_shape=(3, 32, 32), num_outputs=10)
    dataset = "CIFAR-10-C"
    clean_dataset = "cifar10"
    hint = "extract CIFAR-10-C.tar from https://zenodo.org/record/2535967"
    stats = transforms.CIFAR10

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.opts
        self.corruption, self.severity = o.corruption, o.severity
        self.clean_root = data_root(o.clean_root, self.clean_dataset)

    def spec_name(self) -> str:
        return self.dataset

    def required(self) -> list[str]:
        return [f"{self.corruption}.npy", "labels.npy"]

    def clean_required(self) -> list[str]:
        return [*CIFAR10_TRAIN, CIFAR10_TEST]

    def check_files(self) -> None:
        problems = []
        for root, names, what in ((self.root, self.required(), self.dataset),
                                  (self.clean_root, self.clean_required(),
                                   f"clean {self.clean_dataset}")):
            try:
                require(root, names, what, self.hint)
            except FileNotFoundError as exc:
                problems.append(exc)
        if problems:
            raise type(problems[0])(" | ".join(str(p) for p in problems))

    def clean(self) -> tuple[ArraySource, ArraySource]:
        """The clean ``(test images, training images)``."""
        return (cifar_source(self.clean_root, [CIFAR10_TEST], "labels"),
                cifar_source(self.clean_root, CIFAR10_TRAIN, "labels"))

    def load(self) -> tuple[ArraySource, ArraySource]:
        rows = (slice(None) if self.severity is None else
                slice((self.severity - 1) * PER_SEVERITY, self.severity * PER_SEVERITY))
        corrupted = npy_source(self.root / f"{self.corruption}.npy", self.root / "labels.npy",
                               rows)
        clean_test, clean_train = self.clean()
        self._n_corrupted, self._n_clean = len(corrupted), len(clean_test)
        # One source: the corrupted images, then the clean test images they were made from.
        train = ArraySource(np.concatenate([corrupted.images, clean_test.images]),
                            torch.cat([corrupted.labels, clean_test.labels]))
        return train, clean_train

    def carve(self, train: ArraySource, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, clean = self._n_corrupted, self._n_clean
        from .image_task import balanced_split

        meta, _ = balanced_split(train.labels[n:], self.meta_per_class, seed)
        # row r of the corrupted file was made from clean test image r % 10,000
        source_of = torch.arange(n) % clean
        keep = ~torch.isin(source_of, meta)
        return meta + n, torch.arange(n)[keep]

    def transforms(self) -> tuple[Transform, Transform]:
        return transforms.crop_flip(32, self.stats)


class CIFAR100C(CIFAR10C):
    """CIFAR-100-C: the same experiment with the 100 fine labels."""

    spec = ModelSpec(input_shape=(3, 32, 32), num_outputs=100)
    dataset = "CIFAR-100-C"
    clean_dataset = "cifar100"
    hint = "extract CIFAR-100-C.tar from https://zenodo.org/record/3555552"
    stats = transforms.CIFAR100

    def clean_required(self) -> list[str]:
        return [f"{CIFAR100_FOLDER}/train", f"{CIFAR100_FOLDER}/test"]

    def clean(self) -> tuple[ArraySource, ArraySource]:
        folder = self.clean_root / CIFAR100_FOLDER
        return (cifar_source(folder, ["test"], "fine_labels"),
                cifar_source(folder, ["train"], "fine_labels"))
