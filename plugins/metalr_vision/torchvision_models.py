"""torchvision's ImageNet architectures, with a CIFAR stem for small images.

torchvision's stems shrink a 224-pixel image 4x (ResNet, DenseNet, ShuffleNet) or 2x (MobileNetV2)
before the first block; on a 32x32 image that leaves 1x1 maps at the end. The CIFAR versions the
paper's code uses (kuangliu/pytorch-cifar) keep full resolution in the stem instead, and this is
what ``stem: cifar`` does:

- ResNet-18/34/50: first conv 3x3, stride 1 (was 7x7, stride 2), no max-pool.
- DenseNet-121: ``conv0`` 3x3 stride 1, no ``pool0``.
- ShuffleNetV2: ``conv1`` stride 1, no max-pool.
- MobileNetV2: first conv stride 1 and the second stage (24 channels) stride 1, as in
  kuangliu's MobileNetV2 (torchvision's network keeps its total stride of 32 otherwise).

``stem: auto`` picks ``cifar`` for inputs up to 64 pixels (CIFAR, SVHN, TinyImageNet, where the
ImageNet stem would leave 2x2 maps) and ``imagenet`` above. Weights are always random
(``weights=None``): nothing is downloaded.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from metalr.contracts.protocols import ModelSpec

Stem = Literal["auto", "cifar", "imagenet"]
SMALL_INPUT = 64


class VisionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stem: Stem = Field("auto", description="cifar: full-resolution 3x3 stem; auto: cifar for "
                       f"inputs up to {SMALL_INPUT} pixels")


def _use_cifar_stem(spec: ModelSpec, stem: str, name: str) -> bool:
    if spec.kind != "classification" or len(spec.input_shape) != 3:
        raise ValueError(f"{name} needs an image classification task (C, H, W inputs), got "
                         f"{spec.kind} inputs of shape {spec.input_shape}")
    if stem == "auto":
        return max(spec.input_shape[1:]) <= SMALL_INPUT
    return stem == "cifar"


def _resnet(depth: int):
    def build(spec: ModelSpec, **options: Any) -> nn.Module:
        from torchvision import models

        o = VisionOptions(**options)
        name = f"resnet{depth}"
        model = getattr(models, name)(weights=None, num_classes=spec.num_outputs)
        if _use_cifar_stem(spec, o.stem, name):
            model.conv1 = nn.Conv2d(spec.input_shape[0], 64, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        elif spec.input_shape[0] != 3:
            model.conv1 = nn.Conv2d(spec.input_shape[0], 64, 7, 2, 3, bias=False)
        return model

    build.__name__ = f"build_resnet{depth}"
    build.__doc__ = (f"torchvision ResNet-{depth}; CIFAR stem for small inputs. "
                     "Options: see VisionOptions.")
    return build


build_resnet18, build_resnet34, build_resnet50 = _resnet(18), _resnet(34), _resnet(50)


def build_densenet121(spec: ModelSpec, **options: Any) -> nn.Module:
    """torchvision DenseNet-121; CIFAR stem for small inputs. Options: see VisionOptions."""
    from torchvision import models

    o = VisionOptions(**options)
    model = models.densenet121(weights=None, num_classes=spec.num_outputs)
    if _use_cifar_stem(spec, o.stem, "densenet121"):
        model.features.conv0 = nn.Conv2d(spec.input_shape[0], 64, 3, 1, 1, bias=False)
        model.features.pool0 = nn.Identity()
    return model


def build_shufflenet_v2(spec: ModelSpec, **options: Any) -> nn.Module:
    """torchvision ShuffleNetV2 x1.0; CIFAR stem for small inputs. Options: see VisionOptions."""
    from torchvision import models

    o = VisionOptions(**options)
    model = models.shufflenet_v2_x1_0(weights=None, num_classes=spec.num_outputs)
    if _use_cifar_stem(spec, o.stem, "shufflenet-v2"):
        conv = model.conv1[0]
        model.conv1[0] = nn.Conv2d(spec.input_shape[0], conv.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return model


MOBILENET_V2_CIFAR = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2],
                      [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
"""torchvision's inverted-residual setting with the 24-channel stage at stride 1."""


def build_mobilenet_v2(spec: ModelSpec, **options: Any) -> nn.Module:
    """torchvision MobileNetV2; CIFAR stem (and stride-1 second stage) for small inputs.
    Options: see VisionOptions."""
    from torchvision import models

    cifar = _use_cifar_stem(spec, VisionOptions(**options).stem, "mobilenet-v2")
    model = models.mobilenet_v2(weights=None, num_classes=spec.num_outputs,
                                inverted_residual_setting=MOBILENET_V2_CIFAR if cifar else None)
    if cifar:
        conv = model.features[0][0]
        model.features[0][0] = nn.Conv2d(spec.input_shape[0], conv.out_channels, 3, 1, 1,
                                         bias=False)
    return model
