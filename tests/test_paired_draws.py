"""A learned schedule and its control train with the same random draws (a paired comparison).

Dropout draws from torch's global generator. MLR-SNet's own initialisation and its meta-updates'
forward passes must not move the training run's draws, or a learned-vs-control difference on a
dropout model is partly a different sequence of masks (docs/design.md).
"""

from __future__ import annotations

import torch
from torch import nn

from metalr.engine.algorithm import Engine, EngineConfig
from metalr.recipes.schema import ComponentRef, Method, TrainConfig
from metalr.running.job import Job, Training


class Recorder(nn.Module):
    """Logs one draw from the global generator per training-mode forward pass, with the batch's
    size (7 rows: a meta batch; any other size: a training batch)."""

    def __init__(self):
        super().__init__()
        self.log: list[tuple[int, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.log.append((len(x), float(torch.rand(()))))
        return x


def recorded_run(registry, task, meta_train: bool) -> list[tuple[int, float]]:
    torch.manual_seed(0)
    recorder = Recorder()
    model = nn.Sequential(nn.Flatten(), recorder, nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    policy = registry.get("lr_policy", "mlrsnet").build(gamma=0.2)  # no probe, no recheck
    Engine(task, model, opt, policy,
           EngineConfig(epochs=1, batch_size=64, meta_batch_size=7, seed=0, t_val=2,
                        meta_train=meta_train)).fit()
    return recorder.log


def test_meta_updates_leave_the_training_draws_alone(registry):
    task = registry.get("task", "digits").build(meta_size=200)
    task.setup(0, torch.device("cpu"))
    learned = recorded_run(registry, task, True)
    frozen = recorded_run(registry, task, False)
    on_training = [entry for entry in learned if entry[0] != 7]
    assert len(learned) > len(on_training) > 0  # the meta forward passes drew too
    assert [draw for _, draw in on_training] == [draw for _, draw in frozen]


def test_building_a_policy_leaves_the_training_draws_alone(registry, tmp_path):
    """MLR-SNet's cell is initialised from the global generator; the control has nothing to
    initialise. After building either, the run draws the same numbers."""
    task = registry.get("task", "digits").build(meta_size=200)
    task.setup(0, torch.device("cpu"))
    after = {}
    for policy in ("mlrsnet", "probed-wsd"):
        training = Training(
            Job(policy, 0, 1), Method(optimizer=ComponentRef(name="sgd"),
                                      lr_policy=ComponentRef(name=policy)),
            {}, ComponentRef(name="mlp", options={"hidden": [16]}), TrainConfig(epochs=1), task,
            torch.device("cpu"), registry, tmp_path / policy, "paired")
        model, _, built = training.build(0)
        assert sum(p.numel() for p in built.parameters()) > (2 if policy == "mlrsnet" else 0)
        after[policy] = (torch.rand(4), [p.detach().clone() for p in model.parameters()])
    (mlrsnet_draws, mlrsnet_weights), (control_draws, control_weights) = after.values()
    assert all(torch.equal(a, b) for a, b in zip(mlrsnet_weights, control_weights))
    assert torch.equal(mlrsnet_draws, control_draws)
