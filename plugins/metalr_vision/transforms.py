"""The paper's augmentation and normalisation, per image size.

32x32 (CIFAR, SVHN): random crop with 4 pixels of padding and a horizontal flip, as in the
paper's code. ImageNet: the pytorch/examples recipe the paper used (RandomResizedCrop 224 + flip;
Resize 256 + CenterCrop 224). TinyImageNet (64x64): the CIFAR recipe at 64 pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torchvision is imported when a transform is built, not when plugins load
    from torchvision import transforms as T

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

CIFAR10: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
SVHN: Stats = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
IMAGENET: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TINY_IMAGENET: Stats = ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))


def crop_flip(size: int, stats: Stats, padding: int = 4, flip: bool = True) -> tuple[T.Compose,
                                                                                      T.Compose]:
    """``(train, eval)`` for small images: padded random crop (+ flip) / none."""
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(*stats)]
    train = [T.RandomCrop(size, padding=padding)] + ([T.RandomHorizontalFlip()] if flip else [])
    return T.Compose(train + norm), T.Compose(norm)


def imagenet(size: int = 224, resize: int = 256, stats: Stats = IMAGENET) -> tuple[T.Compose,
                                                                                   T.Compose]:
    """``(train, eval)`` of pytorch/examples/imagenet."""
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(*stats)]
    return (T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip()] + norm),
            T.Compose([T.Resize(resize), T.CenterCrop(size)] + norm))
