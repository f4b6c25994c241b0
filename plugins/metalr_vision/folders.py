"""TinyImageNet and ImageNet from class folders: the transfer targets of Figures 6 and 8.

ImageNet uses the layout of pytorch/examples/imagenet (``train/<wnid>/*.JPEG``,
``val/<wnid>/*.JPEG`` after its valprep script). TinyImageNet is used as its archive unpacks:
``train/<wnid>/images/*.JPEG`` and ``val/images`` with ``val/val_annotations.txt`` (or ``val/``
already sorted into class folders); its validation set is the test set (the test labels are not
public).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from metalr.contracts.protocols import ModelSpec

from . import transforms
from .image_task import ImageTask, LoaderOptions, Transform
from .sources import FileSource, annotated_source, folder_source


class TinyImageNetOptions(LoaderOptions):
    meta_per_class: int = Field(10, ge=0, description="training images per class held out "
                                "as the meta set (2,000 in all)")


class TinyImageNet(ImageTask):
    """200 classes of 64x64 images: 100,000 training, 10,000 validation (used as test).

    Options: see :class:`TinyImageNetOptions`."""

    Options = TinyImageNetOptions
    spec = ModelSpec(input_shape=(3, 64, 64), num_outputs=200)
    top5 = True
    dataset = "tiny-imagenet-200"
    hint = "unzip tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip)"

    def spec_name(self) -> str:
        return "TinyImageNet"

    def required(self) -> list[str]:
        return ["train", "val"]

    def load(self) -> tuple[FileSource, FileSource]:
        train, classes = folder_source(self.root / "train")
        self.spec = ModelSpec(self.spec.input_shape, len(classes))  # 200 in the real archive
        annotations = self.root / "val" / "val_annotations.txt"
        if annotations.is_file():
            return train, annotated_source(self.root / "val", annotations, classes)
        return train, folder_source(self.root / "val", classes)[0]

    def transforms(self) -> tuple[Transform, Transform]:
        return transforms.crop_flip(64, transforms.TINY_IMAGENET)


class ImageNetOptions(LoaderOptions):
    meta_per_class: int = Field(1, ge=0, description="training images per class held out as "
                                "the meta set (1,000 in all)")
    image_size: int = Field(224, ge=8, description="crop size (Resize is 8/7 of it)")
    eval_batch_size: int = Field(256, ge=1, description="batch size when evaluating a split")


class ImageNet(ImageTask):
    """ILSVRC-2012: 1,000 classes; its 50,000 validation images are the test set.

    Options: see :class:`ImageNetOptions`."""

    Options = ImageNetOptions
    opts: ImageNetOptions
    dataset = "imagenet"
    top5 = True  # the paper's Table 6: top-1 and top-5
    hint = "ILSVRC2012 train/ and val/ in class folders, as pytorch/examples/imagenet expects"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.image_size = image_size = self.opts.image_size
        self.spec = ModelSpec(input_shape=(3, image_size, image_size), num_outputs=1000)

    def spec_name(self) -> str:
        return "ImageNet"

    def required(self) -> list[str]:
        return ["train", "val"]

    def load(self) -> tuple[FileSource, FileSource]:
        train, classes = folder_source(self.root / "train")
        self.spec = ModelSpec(self.spec.input_shape, len(classes))  # 1,000 in the real data
        return train, folder_source(self.root / "val", classes)[0]

    def transforms(self) -> tuple[Transform, Transform]:
        return transforms.imagenet(self.image_size, round(self.image_size * 8 / 7))
