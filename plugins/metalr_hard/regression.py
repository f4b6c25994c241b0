"""``regression``: Friedman #1 (``sklearn.datasets.make_friedman1``), MSE loss, metric RMSE.

Targets stay in their own units (mean ~14, std ~5): a practitioner's regression loss has the
scale of its targets, not the ~ln(classes) of a cross-entropy. The first losses are ~200, the
gradients of the head are ~30x those of a classifier, and nothing saturates, so an LR that is
right for classification diverges here and a loss-reading schedule sees values far outside the
range it was built for. ``loss_scale`` is the variance of the training targets, the MSE of the
best constant predictor: the counterpart of ln(vocab) for a language model, so that a
normalised loss of 1 means "no better than the mean".

``evaluate`` gives ``loss`` (MSE), ``rmse`` (the headline, lower is better) and ``r2``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from metalr.contracts.protocols import ModelSpec
from metalr.engine.data import Batch, TensorClassificationTask

NUM_FEATURES = 10  # Friedman #1 uses 5; the other 5 are distractors


class RegressionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_train: int = Field(2000, ge=20, description="generated training samples (meta included)")
    num_test: int = Field(1000, ge=2, description="generated test samples")
    noise: float = Field(1.0, ge=0.0, description="std of the Gaussian noise on the targets")
    meta_size: int = Field(300, ge=0, description="training samples held out as the meta set")
    data_seed: int = Field(0, ge=0, description="seed of the generated data (fixed across runs)")


@functools.lru_cache(maxsize=4)
def _friedman1(n: int, noise: float, seed: int) -> Batch:
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n, NUM_FEATURES, noise=noise, random_state=seed)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)


class Regression(TensorClassificationTask):
    spec = ModelSpec(input_shape=(NUM_FEATURES,), num_outputs=1)  # "classification": not an LM
    metric = "rmse"
    metrics = ("loss", "rmse", "r2")
    higher_is_better = False

    def __init__(self, **options: Any):
        """Options: see :class:`RegressionOptions` (validated here; an unknown one fails)."""
        o = RegressionOptions(**options)
        super().__init__(o.meta_size)
        num_train, num_test = o.num_train, o.num_test
        self.num_train, self.num_test = num_train, num_test
        self.noise, self.data_seed = o.noise, o.data_seed
        x, y = _friedman1(num_train + num_test, o.noise, o.data_seed)
        self._train, self._test = (x[:num_train], y[:num_train]), (x[num_train:], y[num_train:])
        self.loss_scale = float(self._train[1].var(unbiased=False))

    def load(self) -> tuple[Batch, Batch]:
        return self._train, self._test

    def loss(self, model: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(model(x).squeeze(-1), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, batch_size: int = 1024) -> dict[str, float]:
        sums = self.summed(model, split, batch_size, lambda out, y: (
            F.mse_loss(out.squeeze(-1), y, reduction="sum").item(),))
        if sums is None:
            return {}
        (sse,), n = sums
        mse = sse / n
        var = float(self.splits[split][1].var(unbiased=False))
        return {"loss": mse, "rmse": math.sqrt(mse), "r2": 1.0 - mse / var if var > 0 else 0.0}
