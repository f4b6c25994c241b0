"""The paper's image data and networks: CIFAR-10/100, SVHN, CIFAR-10-C/100-C, TinyImageNet,
ImageNet (streamed through DataLoaders, files in ``$METALR_DATA``), torchvision's ResNets,
MobileNetV2, ShuffleNetV2 and DenseNet-121 with a CIFAR stem, and Wide ResNets."""

from metalr import hookimpl

from .cifar import CIFAR10, CIFAR100, SVHN, CIFAR10Options, CIFAR100Options, SVHNOptions
from .corrupted import CIFAR10C, CIFAR100C, CIFAR10COptions
from .folders import ImageNet, ImageNetOptions, TinyImageNet, TinyImageNetOptions
from .torchvision_models import (
    VisionOptions,
    build_densenet121,
    build_mobilenet_v2,
    build_resnet18,
    build_resnet34,
    build_resnet50,
    build_shufflenet_v2,
)
from .wrn import WRNOptions, build_wrn


@hookimpl
def register_tasks(register):
    register("cifar10", CIFAR10, options=CIFAR10Options,
             summary="CIFAR-10 files, crop+flip, 1,000-image meta split")
    register("cifar100", CIFAR100, options=CIFAR100Options,
             summary="CIFAR-100 files, crop+flip, 1,000-image meta split")
    register("svhn", SVHN, options=SVHNOptions, summary="SVHN .mat files, crop+flip")
    register("cifar10-c", CIFAR10C, options=CIFAR10COptions,
             summary="train on a CIFAR-10-C corruption; clean meta set and test set")
    register("cifar100-c", CIFAR100C, options=CIFAR10COptions,
             summary="train on a CIFAR-100-C corruption; clean meta set and test set")
    register("tiny-imagenet", TinyImageNet, options=TinyImageNetOptions,
             summary="TinyImageNet class folders, 64x64, 200 classes")
    register("imagenet", ImageNet, options=ImageNetOptions,
             summary="ImageNet class folders, pytorch/examples transforms")


@hookimpl
def register_models(register):
    for name, build, what in (
        ("resnet18", build_resnet18, "torchvision ResNet-18"),
        ("resnet34", build_resnet34, "torchvision ResNet-34"),
        ("resnet50", build_resnet50, "torchvision ResNet-50"),
        ("mobilenet-v2", build_mobilenet_v2, "torchvision MobileNetV2"),
        ("shufflenet-v2", build_shufflenet_v2, "torchvision ShuffleNetV2 x1.0"),
        ("densenet121", build_densenet121, "torchvision DenseNet-121"),
    ):
        register(name, build, options=VisionOptions, summary=f"{what}; CIFAR stem on small inputs")
    register("wrn", build_wrn, options=WRNOptions,
             summary="Wide ResNet, depth 6n+4 (default WRN-28-10), dropout option")
