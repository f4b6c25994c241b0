"""Wide ResNet (Zagoruyko & Komodakis 2016), the CIFAR-100 network of Tables 2 and 3.

Not in torchvision, so written here after the authors' CIFAR code: depth 6n+4, pre-activation
basic blocks (BN-ReLU-conv) with an optional dropout between the two convolutions, widths
16, 16k, 32k, 64k, then BN-ReLU, global average pooling and a linear layer.
"""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn
from torch.nn import functional as F

from metalr.contracts.protocols import ModelSpec


class WRNOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    depth: int = Field(28, ge=10, description="6n + 4 (28: WRN-28-10)")
    widen_factor: int = Field(10, ge=1, description="k: the blocks are 16k, 32k, 64k wide")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="between the two convolutions of "
                           "a block (0.3 in some of the WRN paper's runs)")

    @field_validator("depth")
    @classmethod
    def _six_n_plus_4(cls, depth: int) -> int:
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 (10, 16, 22, 28, 40, ...), got {depth}")
        return depth


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = (None if cin == cout and stride == 1 else
                         nn.Conv2d(cin, cout, 1, stride, 0, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.dropout:
            out = F.dropout(out, self.dropout, self.training)
        return self.conv2(out) + skip


class WideResNet(nn.Module):
    """The network; its option values come from :class:`WRNOptions` (see :func:`build_wrn`)."""

    def __init__(self, num_classes: int, depth: int, widen_factor: int, dropout: float,
                 in_channels: int = 3):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks = []
        for stage, (cin, cout) in enumerate(itertools.pairwise(widths)):
            for i in range(n):
                blocks.append(Block(cin if i == 0 else cout, cout,
                                    2 if stage and i == 0 else 1, dropout))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[-1])
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def build_wrn(spec: ModelSpec, **options: Any) -> nn.Module:
    """A Wide ResNet for ``spec``'s images and classes. Options: see :class:`WRNOptions`."""
    if spec.kind != "classification" or len(spec.input_shape) != 3:
        raise ValueError(f"wrn needs an image classification task, got {spec.kind} inputs of "
                         f"shape {spec.input_shape}")
    o = WRNOptions(**options)
    return WideResNet(spec.num_outputs, o.depth, o.widen_factor, o.dropout, spec.input_shape[0])
