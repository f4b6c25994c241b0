"""``deep-mlp``: a deep plain MLP, no normalisation, no residuals, PyTorch's default init.

The default ``nn.Linear`` init (uniform, variance 1 / (3 fan_in)) shrinks a ReLU signal by about
six in variance per layer, so the output of a deep stack barely depends on its input and the
gradients of the early layers are orders of magnitude below those of the head. The usable LR
window is narrow and moves as the net wakes up, which a short probe or a fixed schedule misses
(what was measured at depths 8 and 16: docs/hard-tasks.md).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from metalr.contracts.protocols import ModelSpec

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class DeepMLPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    depth: int = Field(8, ge=1, le=200, description="hidden layers")
    width: int = Field(64, ge=1, description="units of every hidden layer")
    activation: Literal["relu", "tanh"] = Field("relu", description="nonlinearity")


def build_deep_mlp(spec: ModelSpec, **options: Any) -> nn.Module:
    """``depth`` hidden layers of ``width`` units and a linear head (options: see
    :class:`DeepMLPOptions`, which validates them; an unknown one fails)."""
    o = DeepMLPOptions(**options)
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(spec.input_shape)
    for _ in range(o.depth):
        layers += [nn.Linear(fan_in, o.width), ACTIVATIONS[o.activation]()]
        fan_in = o.width
    layers.append(nn.Linear(fan_in, spec.num_outputs))
    return nn.Sequential(*layers)
