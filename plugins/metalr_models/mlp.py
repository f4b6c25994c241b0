"""A multilayer perceptron over the flattened input."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from metalr.contracts.protocols import ModelSpec


class MLPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [100, 100], description="widths of hidden layers")


def build_mlp(spec: ModelSpec, **options: Any) -> nn.Module:
    """The registered ``mlp`` factory; options: see :class:`MLPOptions`."""
    o = MLPOptions(**options)
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(spec.input_shape)
    for h in o.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, spec.num_outputs))
    return nn.Sequential(*layers)
