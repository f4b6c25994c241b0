"""``shifted``: the test distribution differs from the one training and validation see.

Two shifts (``shift``):

- ``imbalance`` (default): the training pool is long-tailed, class k keeping a share
  ``imbalance ** (-k / 9)`` of its samples (1/20 for the rarest at 20, the CIFAR-LT profile of
  Cui et al. 2019); the test split stays balanced.
- ``covariate``: the test inputs are translated by ``pixels`` steps (zeros shifted in; along
  the signal for mnist1d, to the right for digits); labels and training data are untouched.

The meta split comes from the training pool, as a practitioner's validation split would. So
tuning and MLR-SNet optimise for the wrong distribution: an LR that wins on the meta split
(fitting the head classes, or the exact pixel positions) is not the one that wins on test.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from metalr.engine.data import Batch, TensorClassificationTask

from .bases import NUM_CLASSES, Base, load_base


class ShiftedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: Base = Field("mnist1d", description="the clean dataset: mnist1d or digits")
    shift: Literal["imbalance", "covariate"] = Field("imbalance", description="which shift")
    imbalance: float = Field(20.0, ge=1.0, description="imbalance: head / tail class size")
    pixels: int = Field(4, ge=0, description="covariate: steps the test inputs are translated")
    meta_size: int = Field(300, ge=0, description="training samples held out as the meta set")
    num_samples: int = Field(5000, ge=100, le=1_000_000,
                             description="mnist1d only: samples generated")
    data_seed: int = Field(42, ge=0, le=2**32 - 1,
                           description="seed of the base data and the subsampling")


def long_tail(y: torch.Tensor, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """Indices keeping ``round(n_k * ratio ** (-k / 9))`` random samples of each class k."""
    keep = []
    for k in range(NUM_CLASSES):
        idx = (y == k).nonzero().flatten()
        n = max(1, round(len(idx) * ratio ** (-k / (NUM_CLASSES - 1))))
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
    return torch.cat(keep).sort().values


def translate(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Shift along the last axis by ``steps``, zeros shifted in (no wrap-around)."""
    if steps == 0:
        return x
    out = torch.zeros_like(x)
    out[..., steps:] = x[..., :-steps]
    return out


class Shifted(TensorClassificationTask):
    def __init__(self, **options: Any):
        """Options: see :class:`ShiftedOptions` (validated here; an unknown one fails). A
        ``pixels`` not below the base's input length fails here (the schema cannot know it)."""
        o = ShiftedOptions(**options)
        super().__init__(o.meta_size)
        self.shift, self.imbalance, self.pixels = o.shift, o.imbalance, o.pixels
        self.spec, (x, y), (x_test, y_test) = load_base(o.base, o.num_samples, o.data_seed)
        if o.pixels >= self.spec.input_shape[-1]:
            raise ValueError(f"pixels ({o.pixels}) must be below the input length "
                             f"{self.spec.input_shape[-1]}")
        if o.shift == "imbalance":
            self.kept = long_tail(y, o.imbalance, torch.Generator().manual_seed(o.data_seed))
            x, y = x[self.kept], y[self.kept]
        else:
            x_test = translate(x_test, o.pixels)
        self._train, self._test = (x, y), (x_test, y_test)

    def load(self) -> tuple[Batch, Batch]:
        return self._train, self._test
