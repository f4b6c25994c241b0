"""A small 2D CNN for tiny images (3x3 convs at full resolution, one 2x2 pool, a linear head)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from metalr.contracts.protocols import ModelSpec


class CNNDigitsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: list[int] = Field(
        default_factory=lambda: [16, 32], min_length=1, description="widths of the conv layers"
    )


def build_cnn_digits(spec: ModelSpec, **options: Any) -> nn.Module:
    """The CNN for ``spec``'s images. Options: see :class:`CNNDigitsOptions`."""
    channels = CNNDigitsOptions(**options).channels
    if len(spec.input_shape) != 3:
        raise ValueError(f"cnn-digits needs (C, H, W) inputs, got shape {spec.input_shape}")
    if not channels or any(c < 1 for c in channels):
        raise ValueError(f"channels must be positive widths, got {channels}")
    in_ch, h, w = spec.input_shape
    layers: list[nn.Module] = []
    for out_ch in channels:
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU()]
        in_ch = out_ch
    if h >= 2 and w >= 2:  # pooling once keeps the head small without losing 8x8 detail early
        layers.append(nn.MaxPool2d(2))
        h, w = h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(in_ch * h * w, spec.num_outputs)]
    return nn.Sequential(*layers)
