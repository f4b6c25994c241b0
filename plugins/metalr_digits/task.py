"""The digits task: 1,797 real 8x8 images from ``sklearn.datasets.load_digits``.

The test split is held out by a fixed data seed (the same for every run, so test sets are
comparable across seeds); the meta split is then carved from the rest by the run seed.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from metalr.contracts.protocols import ModelSpec
from metalr.engine.data import Batch, TensorClassificationTask, disjoint_split

NUM_SAMPLES = 1797


class DigitsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    test_size: int = Field(297, ge=1, le=NUM_SAMPLES - 2, description="samples held out for test")
    meta_size: int = Field(200, ge=0, description="training samples held out as the meta set")
    data_seed: int = Field(0, description="seed of the test split (fixed across runs)")


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixels are 0..16
    return x, torch.as_tensor(d.target, dtype=torch.long)


class Digits(TensorClassificationTask):
    """sklearn's digits. Options: see :class:`DigitsOptions`."""

    spec = ModelSpec(input_shape=(1, 8, 8), num_outputs=10)

    def __init__(self, **options: Any):
        o = DigitsOptions(**options)
        super().__init__(o.meta_size)
        self.test_size, self.data_seed = o.test_size, o.data_seed

    def load(self) -> tuple[Batch, Batch]:
        x, y = _load_digits()
        self.test_idx, self.pool_idx = disjoint_split(len(y), [self.test_size, -1], self.data_seed)
        # Standardise with statistics of the non-test pool only, so no test information leaks.
        pool = x[self.pool_idx]
        mean, std = pool.mean(), pool.std()
        x = (x - mean) / std
        return (x[self.pool_idx], y[self.pool_idx]), (x[self.test_idx], y[self.test_idx])

    def setup(self, seed: int, device: torch.device) -> None:
        super().setup(seed, device)
        # Report indices into the full dataset, so splits can be checked against each other.
        self.indices = {
            "train": self.pool_idx[self.indices["train"]],
            "meta": self.pool_idx[self.indices["meta"]],
            "test": self.test_idx,
        }
