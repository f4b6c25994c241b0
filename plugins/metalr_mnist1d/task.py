"""The MNIST-1D task: the dataset is generated, never downloaded."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from metalr.contracts.protocols import ModelSpec
from metalr.engine.data import TensorClassificationTask


class MNIST1DOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    meta_size: int = Field(500, ge=0, description="training samples held out as the meta set")
    num_samples: int = Field(5000, ge=100, le=1_000_000,
                             description="generated samples (80% train, 20% test)")
    data_seed: int = Field(42, ge=0, le=2**32 - 1,
                           description="seed of the generator (42 is the published dataset)")


@functools.lru_cache(maxsize=4)
def _generate(num_samples: int, data_seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, data_seed
    state = np.random.get_state()  # make_dataset reseeds numpy's global generator
    try:
        return make_dataset(args)
    finally:
        np.random.set_state(state)


class MNIST1D(TensorClassificationTask):
    """MNIST-1D, generated. Options: see :class:`MNIST1DOptions`."""

    spec = ModelSpec(input_shape=(1, 40), num_outputs=10)

    def __init__(self, **options: Any):
        o = MNIST1DOptions(**options)
        super().__init__(o.meta_size)
        self.num_samples, self.data_seed = o.num_samples, o.data_seed

    def load(self):
        d = _generate(self.num_samples, self.data_seed)

        def tensors(x: np.ndarray, y: np.ndarray):
            return torch.from_numpy(x).float().unsqueeze(1), torch.from_numpy(y).long()

        return tensors(d["x"], d["y"]), tensors(d["x_test"], d["y_test"])
