"""The meta set never shares a sample with the training set (the reference code's overlaps ~98%)."""

from __future__ import annotations

import pytest
import torch

from metalr.engine.data import disjoint_split


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


def check_seeded_disjoint_split(split) -> None:
    """What a split function owes the meta set: disjoint, complete, sized, and the seed's alone.

    Two calls with the same seed agreeing proves only determinism; the splits are also checked
    for overlap, coverage and size, for every seed, and against other seeds and a moved global
    RNG (a split drawn from torch's global generator would follow whatever ran before it).
    """
    n, sizes = 100, [10, 20, -1]
    seen = []
    for seed in (0, 1, 3, 4, 12345):
        torch.manual_seed(1000 + seed)  # the global RNG in some other state every time
        parts = split(n, sizes, seed=seed)
        assert [len(p) for p in parts] == [10, 20, 70], f"seed {seed}: sizes"
        flat = torch.cat(parts).tolist()
        assert len(set(flat)) == len(flat), f"seed {seed}: the splits share a sample"
        assert sorted(flat) == list(range(n)), f"seed {seed}: samples lost"
        torch.manual_seed(7)
        again = split(n, sizes, seed=seed)
        assert all(torch.equal(a, b) for a, b in zip(parts, again)), (
            f"seed {seed}: not a function of the seed alone")
        seen.append(parts)
    for i, a in enumerate(seen):
        for b in seen[i + 1:]:
            assert all(not torch.equal(x, y) for x, y in zip(a, b)), "two seeds share a split"


def test_disjoint_split_is_disjoint_complete_and_seeded():
    check_seeded_disjoint_split(disjoint_split)


def _overlapping(n, sizes, seed):  # each split drawn on its own: they overlap
    gen = torch.Generator().manual_seed(seed)
    sizes = [n - sum(s for s in sizes if s != -1) if s == -1 else s for s in sizes]
    return [torch.randperm(n, generator=gen)[:s] for s in sizes]


def _seed_ignored(n, sizes, seed):
    return disjoint_split(n, sizes, seed=0)


def _global_rng(n, sizes, seed):  # the reference code's habit: torch's global generator
    sizes = [n - sum(s for s in sizes if s != -1) if s == -1 else s for s in sizes]
    return list(torch.split(torch.randperm(n), sizes))


def _lossy(n, sizes, seed):  # drops the last sample
    return [p[p != n - 1] for p in disjoint_split(n, sizes, seed)]


@pytest.mark.parametrize("broken", [_overlapping, _seed_ignored, _global_rng, _lossy])
def test_the_split_check_catches_a_broken_split(broken):
    with pytest.raises(AssertionError):
        check_seeded_disjoint_split(broken)


def test_split_sizes_are_checked():
    with pytest.raises(ValueError, match="do not fit"):
        disjoint_split(10, [8, 5], seed=0)
