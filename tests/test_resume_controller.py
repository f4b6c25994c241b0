"""A frozen LR controller resumed mid-run gives every LR of the run that never stopped.

Its LR is carried from block to block and its features average over the run, so a checkpoint
that kept only the controller's weights restarted the LR from ``initial_lr`` and the averages
from nothing (issue 22): the run went on, inexactly, without a word.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("stable_baselines3")

from metalr.engine import checkpoint
from metalr.engine.algorithm import Engine, EngineConfig, RunInterrupted
from metalr.testing import Blobs, _mlp


@pytest.fixture(scope="module")
def task():
    t = Blobs()
    t.setup(0, torch.device("cpu"))
    return t


def engine(registry, task) -> Engine:
    """A meta-test run (frozen controller, no PPO) of 2 epochs of 14 steps, acting every 4."""
    policy = registry.get("lr_policy", "lr-controller").build(initial_lr=0.05, act_every=4)
    torch.manual_seed(3)
    model = _mlp(task.spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    return Engine(task, model, opt, policy, EngineConfig(
        epochs=2, batch_size=32, seed=3, meta_batch_size=32, meta_train=False))


def test_a_controller_meta_test_run_resumes_mid_run_bit_for_bit(registry, task, tmp_path):
    reference = engine(registry, task).fit()
    assert len(set(reference.lrs)) > 3  # the controller moved the LR: there is a state to keep
    saved, steps = [], iter(range(10**6))

    def save(state):
        saved.append(checkpoint.save(tmp_path / f"ckpt{len(saved)}.pt", state))

    with pytest.raises(RunInterrupted):  # stopped after step 21: inside a block of epoch 2
        engine(registry, task).fit(checkpoint=save, stop=lambda: next(steps) == 21)
    assert len(saved) == 2  # the end of epoch 1 (step 14, inside a block too) and the stop
    for path in saved:
        state, _ = checkpoint.load(path)
        resumed = engine(registry, task).fit(resume=state)
        assert resumed.lrs == reference.lrs, path.name
        assert resumed.losses == reference.losses, path.name
