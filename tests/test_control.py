"""The control for a learned schedule (issue 19): ``probed-wsd``, MLR-SNet's schedule with
nothing learned. Same probe, brake, recheck and cool-down; the LR held at the probed start."""

from __future__ import annotations

import pytest
import torch
from metalr_mlrsnet.base import cooldown_factor

from metalr.contracts.protocols import Rechecked
from metalr.engine.algorithm import Engine, EngineConfig, is_meta_learned


def _fit(registry, name, seed=0, epochs=8, **options):
    task = registry.get("task", "mnist1d").build(meta_size=200, num_samples=1000)
    task.setup(seed, torch.device("cpu"))
    torch.manual_seed(seed)
    model = registry.get("model", "mlp").build(task.spec, hidden=[32])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    policy = registry.get("lr_policy", name).build(**options)
    history = Engine(task, model, opt, policy,
                     EngineConfig(epochs=epochs, seed=seed, batch_size=64)).fit()
    return history, policy


def test_the_control_holds_the_probed_start_and_cools_down(registry):
    history, policy = _fit(registry, "probed-wsd")
    assert not is_meta_learned(policy) and isinstance(policy, Rechecked)
    total = len(history.lrs)
    assert history.recheck is not None and not history.recheck.signal and not policy.braked
    expected = [history.probe.lr * cooldown_factor(s, total, 0.2) for s in range(total)]
    assert history.lrs == pytest.approx(expected, rel=1e-6)


def test_the_control_is_mlrsnet_without_the_learning(registry):
    """Same start, same options; the learned net's LR moves, the control's does not."""
    learned, _ = _fit(registry, "mlrsnet")
    held, _ = _fit(registry, "probed-wsd")
    assert held.probe.lr == learned.probe.lr
    assert held.lrs[0] == pytest.approx(learned.lrs[0], rel=0.05)  # both start at the probe's
    active = round(0.8 * len(held.lrs))
    assert len(set(held.lrs[:active])) == 1 and len(set(learned.lrs[:active])) > active // 2


def test_the_control_takes_mlrsnets_scale_options(registry):
    spec = registry.get("lr_policy", "probed-wsd")
    assert set(spec.options.model_fields) == {"preset", "gamma", "scale", "start_factor", "brake",
                                              "recheck", "cooldown"}
    history, _ = _fit(registry, "probed-wsd", gamma=0.2, cooldown=0.5, epochs=2)
    total = len(history.lrs)
    assert history.probe is None and history.recheck is None  # an explicit gamma: no probe
    assert history.lrs == pytest.approx([0.1 * cooldown_factor(s, total, 0.5)
                                         for s in range(total)], rel=1e-6)
