"""Readers for the datasets' own on-disk formats, each giving images and labels by index.

CIFAR (python batches), SVHN (``.mat``), CIFAR-C (``.npy``) are small enough to hold in memory as
one uint8 array; class folders (TinyImageNet, ImageNet) are read file by file in the loader's
workers. None of them downloads anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cifar_pickle import load_pickled_batch


@dataclass
class ArraySource:
    """Images held as one ``(N, H, W, 3)`` uint8 array."""

    images: np.ndarray
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])


@dataclass
class FileSource:
    """Images read from files (any format PIL opens), converted to RGB."""

    paths: list[str]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        with Image.open(self.paths[i]) as img:
            return img.convert("RGB")


Source = ArraySource | FileSource


def cifar_source(folder: Path, files: list[str], label_key: str) -> ArraySource:
    """CIFAR-10/100 python batches: ``data`` is ``(N, 3072)`` uint8 (channel-major rows)."""
    images, labels = [], []
    for name in files:
        batch = load_pickled_batch(folder / name)
        if "data" not in batch or label_key not in batch:
            raise ValueError(f"{folder / name} has no 'data' / {label_key!r} entries "
                             f"(keys: {sorted(batch)}); is it a CIFAR python batch?")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[label_key])
    hwc = np.ascontiguousarray(np.concatenate(images).transpose(0, 2, 3, 1))
    return ArraySource(hwc, torch.as_tensor(labels, dtype=torch.long))


def svhn_source(path: Path) -> ArraySource:
    """SVHN format 2 (``train_32x32.mat``): ``X`` is ``(32, 32, 3, N)``, ``y`` is 1..10 with 10
    standing for the digit 0 (as torchvision maps it)."""
    from scipy.io import loadmat

    mat = loadmat(str(path))
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path} has no 'X' / 'y' arrays; is it SVHN's *_32x32.mat?")
    x = np.ascontiguousarray(np.asarray(mat["X"], dtype=np.uint8).transpose(3, 0, 1, 2))
    y = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10
    return ArraySource(x, torch.as_tensor(y))


def npy_source(images: Path, labels: Path, rows: slice) -> ArraySource:
    """CIFAR-10-C / 100-C: ``<corruption>.npy`` is ``(50000, 32, 32, 3)`` uint8, severities 1..5
    in blocks of 10,000; ``labels.npy`` gives their labels."""
    x = np.load(images, mmap_mode="r", allow_pickle=False)
    y = np.load(labels, allow_pickle=False)
    if len(x) != len(y):
        raise ValueError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    return ArraySource(np.ascontiguousarray(x[rows]),
                       torch.as_tensor(np.asarray(y[rows], dtype=np.int64)))


IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".ppm", ".bmp", ".webp", ".tif", ".tiff")


def folder_source(folder: Path, classes: list[str] | None = None) -> tuple[FileSource, list[str]]:
    """Class folders, ImageFolder's layout (``folder/<class>/**/<image>``); classes sorted.

    ``classes`` fixes the class list (and order) to that of another split."""
    from torchvision.datasets import ImageFolder

    found = ImageFolder(str(folder), is_valid_file=_is_image, allow_empty=True)
    if classes is not None and found.classes != classes:
        unknown = sorted(set(found.classes) - set(classes))
        if unknown:
            raise ValueError(f"{folder} has class folders the training split lacks: "
                             f"{', '.join(unknown[:5])}")
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[found.classes[t]] for _, t in found.samples]
    else:
        labels = [t for _, t in found.samples]
    return (FileSource([p for p, _ in found.samples], torch.as_tensor(labels, dtype=torch.long)),
            classes or found.classes)


def annotated_source(folder: Path, annotations: Path, classes: list[str]) -> FileSource:
    """TinyImageNet's ``val/``: images in ``val/images/``, labels in ``val_annotations.txt``
    (file name, class id, box) -- not class folders."""
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for line_no, line in enumerate(annotations.read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in index:
            raise ValueError(f"{annotations}, line {line_no}: class {parts[1]!r} is not a "
                             "class folder of train/")
        paths.append(str(folder / "images" / parts[0]))
        labels.append(index[parts[1]])
    return FileSource(paths, torch.as_tensor(labels, dtype=torch.long))


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)
