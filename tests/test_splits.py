"""The meta set never shares a sample with the training set (the reference code's overlaps ~98%)."""

from __future__ import annotations

import pytest
import torch

from metalr.data import disjoint_split


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_mnist1d_meta_and_train_are_disjoint(registry, seed):
    task = registry.get("task", "mnist1d").build(meta_size=500)
    task.setup(seed, torch.device("cpu"))
    train, meta = task.indices["train"], task.indices["meta"]
    assert len(meta) == 500 and len(train) == 3500
    assert not set(train.tolist()) & set(meta.tolist())
    assert sorted(train.tolist() + meta.tolist()) == list(range(4000))
    # and not only the indices: no training sequence equals a meta sequence
    xt, xm = task.splits["train"][0].flatten(1), task.splits["meta"][0].flatten(1)
    assert torch.cdist(xm, xt).min() > 0


def test_split_depends_on_the_seed_only():
    a, b = disjoint_split(100, [10, -1], seed=3), disjoint_split(100, [10, -1], seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], disjoint_split(100, [10, -1], seed=4)[0])


def test_split_sizes_are_checked():
    with pytest.raises(ValueError, match="do not fit"):
        disjoint_split(10, [8, 5], seed=0)
