"""Tiny copies of the datasets in their true on-disk formats, for tests and dry runs.

``write_all(folder)`` lays out ``folder/<dataset>/...`` exactly as ``$METALR_DATA`` expects, with a
few random images per class, so a recipe can be validated and run end to end on a machine
without the real data (``METALR_DATA=folder metalr validate recipes/paper/...``). Labels are
written so that image ``i`` of a split has class ``i % classes``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CORRUPTIONS_WRITTEN = ("gaussian_noise", "shot_noise")


def _images(n: int, size: int, seed: int, classes: int = 10) -> np.ndarray:
    """Noise over a colour of image ``i``'s class ``i % classes``: learnable, so a dry run (and
    the model checks) can see the loss fall."""
    noise = np.random.default_rng(seed).integers(0, 128, (n, size, size, 3))
    colours = np.random.default_rng(1234).integers(0, 128, (classes, 3))
    return (noise + colours[np.arange(n) % classes][:, None, None, :]).astype(np.uint8)


def _pickle(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(data, f, protocol=2)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # (N, 3072), channel-major


def write_cifar10(root: Path, per_batch: int = 20, test: int = 20) -> Path:
    """``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (str keys, as
    torchvision reads them)."""
    folder = root / "cifar-10-batches-py"
    for i in range(1, 6):
        imgs = _images(per_batch, 32, i)
        _pickle(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5",
                                              "data": _cifar_rows(imgs),
                                              "labels": [j % 10 for j in range(per_batch)],
                                              "filenames": [f"{i}_{j}.png"
                                                            for j in range(per_batch)]})
    imgs = _images(test, 32, 0)
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1",
                                    "data": _cifar_rows(imgs),
                                    "labels": [j % 10 for j in range(test)]})
    _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return root


def write_cifar100(root: Path, train: int = 300, test: int = 200) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` with ``fine_labels`` and ``coarse_labels``."""
    folder = root / "cifar-100-python"
    for name, n, seed in (("train", train, 1), ("test", test, 0)):
        _pickle(folder / name, {"data": _cifar_rows(_images(n, 32, seed, 100)),
                                "fine_labels": [j % 100 for j in range(n)],
                                "coarse_labels": [j % 20 for j in range(n)]})
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    return root


def write_svhn(root: Path, train: int = 60, test: int = 20) -> Path:
    """``root/{train,test}_32x32.mat``: ``X`` (32, 32, 3, N) uint8, ``y`` (N, 1) in 1..10."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", train, 1), ("test", test, 0)):
        x = _images(n, 32, seed).transpose(1, 2, 3, 0)
        y = np.array([[j % 10 or 10] for j in range(n)], dtype=np.uint8)  # 10 stands for 0
        savemat(str(root / f"{name}_32x32.mat"), {"X": x, "y": y})
    return root


def write_cifar_c(root: Path, clean: int = 20, classes: int = 10) -> Path:
    """``root/<corruption>.npy`` (5 severities x ``clean`` images) and ``labels.npy``."""
    root.mkdir(parents=True, exist_ok=True)
    labels = np.tile(np.arange(clean) % classes, 5).astype(np.uint8)
    np.save(root / "labels.npy", labels)
    for k, name in enumerate(CORRUPTIONS_WRITTEN):  # row r has label r % clean % classes
        images = np.concatenate([_images(clean, 32, 10 + k + 100 * s, classes) for s in range(5)])
        np.save(root / f"{name}.npy", images)
    return root


def write_image_folders(root: Path, classes: int = 3, per_class: int = 4, size: int = 64,
                        tiny_layout: bool = False) -> Path:
    """PNG class folders: ImageNet's ``train/<wnid>/x.png``, ``val/<wnid>/x.png``, or
    TinyImageNet's ``train/<wnid>/images/x.png``, ``val/images`` + ``val_annotations.txt``."""
    from PIL import Image

    wnids = [f"n{i:08d}" for i in range(classes)]
    rng = np.random.default_rng(0)
    lines = []
    for split, n in (("train", per_class), ("val", 2)):
        for c, wnid in enumerate(wnids):
            for j in range(n):
                pixels = rng.integers(0, 128, (size, size, 3)) + 40 * c
                img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                if tiny_layout and split == "val":
                    name = f"val_{c}_{j}.png"
                    path = root / "val" / "images" / name
                    lines.append(f"{name}\t{wnid}\t0\t0\t{size}\t{size}")
                elif tiny_layout:
                    path = root / "train" / wnid / "images" / f"{wnid}_{j}.png"
                else:
                    path = root / split / wnid / f"{wnid}_{j}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                img.save(path)
    if tiny_layout:
        (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def write_all(base: Path) -> Path:
    """Every image dataset, each in its subfolder of ``base`` (the ``$METALR_DATA`` layout)."""
    base = Path(base)
    write_cifar10(base / "cifar10")
    write_cifar100(base / "cifar100")
    write_svhn(base / "svhn")
    write_cifar_c(base / "CIFAR-10-C", classes=10)
    write_cifar_c(base / "CIFAR-100-C", clean=200, classes=100)
    write_image_folders(base / "tiny-imagenet-200", tiny_layout=True)
    write_image_folders(base / "imagenet", size=72)
    return base
