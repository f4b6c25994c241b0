"""A 1D CNN in the style of the MNIST-1D paper's baseline (about 94% there)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from metalr.contracts.protocols import ModelSpec


class CNN1DOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: int = Field(25, ge=1, description="channels of each conv layer")
    layers: int = Field(3, ge=1, description="number of conv layers")
    kernel_size: int = Field(5, ge=1)


def build_cnn1d(spec: ModelSpec, **options: Any) -> nn.Module:
    """The registered ``cnn1d`` factory; options: see :class:`CNN1DOptions`."""
    o = CNN1DOptions(**options)
    channels, layers, kernel_size = o.channels, o.layers, o.kernel_size
    in_ch, length = spec.input_shape
    blocks: list[nn.Module] = []
    for i in range(layers):
        stride = 2 if i > 0 else 1
        blocks += [
            nn.Conv1d(in_ch if i == 0 else channels, channels, kernel_size, stride, kernel_size // 2),
            nn.ReLU(),
        ]
        length = (length + 2 * (kernel_size // 2) - kernel_size) // stride + 1
    blocks += [nn.Flatten(), nn.Linear(channels * length, spec.num_outputs)]
    return nn.Sequential(*blocks)
