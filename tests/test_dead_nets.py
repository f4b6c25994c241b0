"""Dead nets (issue 18): a net whose weights have all lost their gradient is told from a plateau,
the probe does not start a run at an LR that killed it, and a run whose net dies restarts.

A deep plain CNN (six 3x3 convs, no normalisation; bench/unseen.py's ``digits-deep``) with SGD
momentum shows all three: its probe sees no signal, and LRs of 1 and up leave its ReLUs dead
within 20 steps; at 0.1-0.16 it dies within 100-165 steps; at 0.03-0.05 it trains.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metalr.engine.algorithm import Engine, EngineConfig
from metalr.engine.probe import died
from metalr.engine.recheck import halved


def _backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    return list(model.parameters())


def test_died_is_every_weight_without_a_gradient():
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    relu = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))
    assert not died(_backward(relu, x, y))  # alive: some units pass a gradient
    with torch.no_grad():
        relu[0].bias.fill_(-1e3)  # every first-layer unit off for every input
    # the second layer's units pass their bias on: the output's weights still learn
    assert not died(_backward(relu, x, y)) and relu[4].weight.grad.abs().sum() > 0
    with torch.no_grad():
        relu[2].bias.fill_(-1e3)  # and every second-layer unit: the ReLUs are dead
    assert died(_backward(relu, x, y))
    assert relu[4].bias.grad.abs().sum() > 0  # only the output bias moves (toward the prior)
    gru = nn.GRU(8, 16)
    head = nn.Linear(16, 3)
    gru.zero_grad()
    nn.functional.cross_entropy(head(gru(x.unsqueeze(0))[0][0]), y).backward()
    assert not died(list(gru.parameters()) + list(head.parameters()))
    # a weight that took no part (no gradient at all) is not evidence: never dead
    unused = nn.ModuleDict({"net": relu, "spare": nn.Linear(4, 4)})
    _backward(relu, x, y)
    assert not died(list(unused.parameters()))
    assert not died([])  # nothing trained, nothing dead


def test_halved_reads_window_means_against_the_first():
    """When the death watch lets the first weights go: a 10-step mean below half the first."""
    assert not halved([2.0] * 19)  # under two windows: nothing to compare
    assert not halved([2.0] * 10 + [1.01] * 10)  # 0.505 of the first: not yet
    assert halved([2.0] * 10 + [0.99] * 10)
    assert halved([2.0] * 10 + [0.1] * 10 + [3.0] * 30)  # once is enough


def _deep_digits(registry, seed: int, **policy_options):
    task = registry.get("task", "digits").build()
    task.setup(seed, torch.device("cpu"))
    torch.manual_seed(seed)
    model = registry.get("model", "cnn-digits").build(task.spec, channels=[16] * 6)
    opt = registry.get("optimizer", "sgd").build(model.parameters(), momentum=0.9,
                                                 weight_decay=5e-4)
    policy = registry.get("lr_policy", "probed-wsd").build(**policy_options)
    history = Engine(task, model, opt, policy, EngineConfig(epochs=30, seed=seed)).fit()
    return history, history.epochs[-1]["test_accuracy"]


@pytest.mark.slow
def test_a_dead_net_restarts_below_the_lr_that_killed_it(registry):
    """Seed 0: the probe, blind on the plateau, saw 1-10 kill the net within its 20 steps and
    starts at half the largest LR that left it alive, 0.16 (1.6 before it counted dead points as
    harm). That still dies, by step 33: the run restarts from its first weights a half-decade
    lower (0.05) and trains; without the recheck and the death watch (``recheck: 0``) it ends
    at chance."""
    history, accuracy = _deep_digits(registry, 0)
    probe = history.probe
    assert not probe.signal and probe.died
    assert probe.lr < min(probe.died) / 2  # not started where it measured a death
    assert history.restarts
    first = history.restarts[0]
    assert history.lrs[first] == pytest.approx(history.lrs[first - 1] / math.sqrt(10), rel=0.01)
    _, alone = _deep_digits(registry, 0, recheck=0)
    assert alone < 0.15 and accuracy > 0.9


def test_a_restart_is_on_the_console_line_and_in_mlflow(run_tracked, capsys):
    """The same run through ``metalr run``'s runner: its line says where the net died and the LR
    it restarted at; the steps are an MLflow param and in history.json."""
    run, params, saved = run_tracked({
        "name": "dead",
        "task": {"name": "digits"},
        "model": {"name": "cnn-digits", "options": {"channels": [16] * 6}},
        "train": {"epochs": 6, "seeds": [0], "batch_size": 128, "device": "cpu"},
        "methods": {"control": {"optimizer": {"name": "sgd", "options": {
            "momentum": 0.9, "weight_decay": 5e-4}}, "lr_policy": {"name": "probed-wsd"}}}})
    history = run.history
    assert history.restarts
    out = capsys.readouterr().out
    for at in history.restarts:
        assert (f"dead at step {at}: restarted from the first weights at LR "
                f"{history.lrs[at]:.3g}") in out
    assert params["restarts"] == " ".join(map(str, history.restarts))
    assert params["restarts_blown"] == "-" and not history.blown  # died, did not blow up
    assert f'"restarts": {history.restarts}' in saved


def test_a_run_that_blew_up_restarts_instead_of_ending(registry):
    """Plain SGD, seed 2: the recheck's plateau rule moves the run from its start (0.89) up to
    its ceiling, 1.78, where the loss goes from 2.3 to 7e15 within ten steps. That ended the
    run (``TrainingDiverged``); now it restarts from its first weights and the policy's first
    state, a half-decade below the LR that blew it up, and the run finishes."""
    task = registry.get("task", "digits").build()
    task.setup(2, torch.device("cpu"))
    torch.manual_seed(2)
    model = registry.get("model", "cnn-digits").build(task.spec, channels=[16] * 6)
    opt = registry.get("optimizer", "sgd").build(model.parameters(), momentum=0.0,
                                                 weight_decay=5e-4)
    policy = registry.get("lr_policy", "probed-wsd").build()
    history = Engine(task, model, opt, policy, EngineConfig(epochs=30, seed=2)).fit()
    assert history.blown and set(history.blown) <= set(history.restarts)
    at = history.blown[0]
    assert max(history.losses[:at]) > 1e3 * history.losses[0]  # it did blow up
    assert history.lrs[at] == pytest.approx(history.lrs[at - 1] / math.sqrt(10), rel=0.01)
    assert all(math.isfinite(v) for v in history.losses[at:])
    assert len(history.epochs) == 30 and math.isfinite(history.epochs[-1]["test_loss"])
