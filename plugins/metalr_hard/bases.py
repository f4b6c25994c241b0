"""The clean datasets that ``noisy-labels`` and ``shifted`` corrupt: MNIST-1D and digits.

Loaded through the built-in tasks' own ``load()``, so the data (generator, split, scaling) is
exactly what ``mnist1d`` and ``digits`` train on; this module only picks one.
"""

from __future__ import annotations

from typing import Literal

from metalr.contracts.protocols import ModelSpec
from metalr.engine.data import Batch

Base = Literal["mnist1d", "digits"]
NUM_CLASSES = 10


def load_base(base: Base, num_samples: int, data_seed: int) -> tuple[ModelSpec, Batch, Batch]:
    """``(spec, (x_train, y_train), (x_test, y_test))`` of the clean base dataset.

    ``num_samples`` is MNIST-1D's generated count (80% train); digits has its 1,797 images.
    """
    if base == "mnist1d":
        from metalr_mnist1d.task import MNIST1D

        task = MNIST1D(meta_size=0, num_samples=num_samples, data_seed=data_seed)
    elif base == "digits":
        from metalr_digits.task import Digits

        task = Digits(meta_size=0, data_seed=data_seed)
    else:
        raise ValueError(f"base must be 'mnist1d' or 'digits', got {base!r}")
    train, test = task.load()
    return task.spec, train, test
