"""CIFAR-10, CIFAR-100 and SVHN: 32x32 tasks of Tables 2, 3, 5 and Figures 4-7.

The files are the datasets' own (what torchvision's ``download=True`` would fetch), read here
without torchvision's checksum step, so a user's copy and the tests' tiny copies in the same
format take the same path. CIFAR's pickled batches go through an unpickler that rebuilds numpy
arrays only.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from metalr.contracts.protocols import ModelSpec

from . import transforms
from .image_task import ImageTask, LoaderOptions, Transform
from .sources import ArraySource, cifar_source, svhn_source

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = [f"{CIFAR10_FOLDER}/data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = f"{CIFAR10_FOLDER}/test_batch"
CIFAR100_FOLDER = "cifar-100-python"


class CIFAR10Options(LoaderOptions):
    meta_per_class: int = Field(100, ge=0, description="training images per class held out "
                                "as the meta set (1,000 in all, Appendix B)")


class CIFAR10(ImageTask):
    """CIFAR-10: 50,000 training images (less the meta split), 10,000 test images.

    Options: see :class:`CIFAR10Options`."""

    Options = CIFAR10Options
    spec = ModelSpec(input_shape=(3, 32, 32), num_outputs=10)
    dataset = "cifar10"
    hint = "extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"
    stats = transforms.CIFAR10

    def spec_name(self) -> str:
        return "CIFAR-10"

    def required(self) -> list[str]:
        return [*CIFAR10_TRAIN, CIFAR10_TEST]

    def load(self) -> tuple[ArraySource, ArraySource]:
        return (cifar_source(self.root, CIFAR10_TRAIN, "labels"),
                cifar_source(self.root, [CIFAR10_TEST], "labels"))

    def transforms(self) -> tuple[Transform, Transform]:
        return transforms.crop_flip(32, self.stats)


class CIFAR100Options(LoaderOptions):
    meta_per_class: int = Field(10, ge=0, description="training images per class held out "
                                "as the meta set (1,000 in all, Appendix B)")


class CIFAR100(CIFAR10):
    """CIFAR-100 with its 100 fine labels. Options: see :class:`CIFAR100Options`."""

    Options = CIFAR100Options
    spec = ModelSpec(input_shape=(3, 32, 32), num_outputs=100)
    dataset = "cifar100"
    hint = "extract cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"
    stats = transforms.CIFAR100

    def spec_name(self) -> str:
        return "CIFAR-100"

    def required(self) -> list[str]:
        return [f"{CIFAR100_FOLDER}/train", f"{CIFAR100_FOLDER}/test"]

    def load(self) -> tuple[ArraySource, ArraySource]:
        return (cifar_source(self.root / CIFAR100_FOLDER, ["train"], "fine_labels"),
                cifar_source(self.root / CIFAR100_FOLDER, ["test"], "fine_labels"))


class SVHNOptions(LoaderOptions):
    meta_per_class: int = Field(100, ge=0, description="training images per class held out "
                                "as the meta set")
    extra: bool = Field(False, description="add the 531,131 'extra' images to training")
    flip: bool = Field(True, description="horizontal flip in the augmentation (the paper "
                       "trains SVHN exactly as CIFAR-10)")


class SVHN(ImageTask):
    """SVHN (format 2, cropped digits): 73,257 training and 26,032 test images.

    Options: see :class:`SVHNOptions`."""

    Options = SVHNOptions
    opts: SVHNOptions
    spec = ModelSpec(input_shape=(3, 32, 32), num_outputs=10)
    dataset = "svhn"
    hint = "train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.extra, self.flip = self.opts.extra, self.opts.flip

    def spec_name(self) -> str:
        return "SVHN"

    def required(self) -> list[str]:
        return ["train_32x32.mat", "test_32x32.mat"] + (["extra_32x32.mat"] if self.extra else [])

    def load(self) -> tuple[ArraySource, ArraySource]:
        import numpy as np
        import torch

        train = svhn_source(self.root / "train_32x32.mat")
        if self.extra:
            more = svhn_source(self.root / "extra_32x32.mat")
            train = ArraySource(np.concatenate([train.images, more.images]),
                                torch.cat([train.labels, more.labels]))
        return train, svhn_source(self.root / "test_32x32.mat")

    def transforms(self) -> tuple[Transform, Transform]:
        return transforms.crop_flip(32, transforms.SVHN, flip=self.flip)
