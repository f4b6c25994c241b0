"""MLR-SNet that reads the run's progress t/T besides the loss (issue 19, option ``progress``):
an annealing schedule has to know when the run ends. Off by default (the paper's loss-only
input); the shipped nets and files without the option load as before."""

from __future__ import annotations

import pytest
import torch
from test_scheduler import _hand_loop

from metalr.engine.algorithm import Engine, EngineConfig
from metalr.engine.weights import read_meta_learner, save_meta_learner
from metalr.scheduler.learned import LearnedLR
from metalr.testing import check_component


@pytest.mark.parametrize("name", ["mlrsnet", "mlp-lr"])
def test_a_progress_net_reads_t_over_T_and_conforms(registry, name):
    net = registry.get("lr_policy", name).build(gamma=1.0, progress=True)
    loss = torch.tensor(1.0)
    early, _ = net(net.inputs(loss, 0, 100), net.initial_state(torch.device("cpu")))
    late, _ = net(net.inputs(loss, 90, 100), net.initial_state(torch.device("cpu")))
    assert float(early.detach()) != float(late.detach())  # the same loss, later in the run
    plain = registry.get("lr_policy", name).build(gamma=1.0)
    assert plain.inputs(loss, 90, 100).shape == ()  # the paper's input: the loss alone
    check_component(registry.get("lr_policy", name), {"progress": True, "gamma": 0.2})


def test_a_meta_trained_progress_net_is_replayed_by_the_scheduler(registry, tmp_path):
    """Saved with its option in the header, loaded by LearnedLR, it gives the LRs the engine
    gave with the same (frozen) net, bit for bit: the scheduler feeds it t/T too."""
    seed, epochs, batch = 2, 2, 64

    def setup():
        task = registry.get("task", "mnist1d").build(meta_size=200, num_samples=1000)
        task.setup(seed, torch.device("cpu"))
        torch.manual_seed(seed)
        model = registry.get("model", "mlp").build(task.spec, hidden=[32])
        return task, model

    task, model = setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    policy = registry.get("lr_policy", "mlrsnet").build(gamma=0.5, progress=True, cooldown=0.2)
    Engine(task, model, opt, policy, EngineConfig(epochs=epochs, batch_size=batch, seed=seed,
                                                  t_val=3)).fit()
    path = save_meta_learner(tmp_path / "net.safetensors", "mlrsnet", policy)
    assert read_meta_learner(path)[1]["progress"] is True

    task, model = setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    frozen = registry.get("lr_policy", "mlrsnet-transfer").build(nets=[str(path)],
                                                                 scale="saved")
    history = Engine(task, model, opt, frozen, EngineConfig(
        epochs=epochs, batch_size=batch, seed=seed, meta_train=False, eval_splits=())).fit()

    task, model = setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    total = epochs * task.num_train_batches(batch)
    scheduler = LearnedLR.from_pretrained(opt, str(path), total_steps=total)
    lrs = _hand_loop(task, model, scheduler, opt, batch, seed, epochs)
    assert lrs == history.lrs and len(set(lrs)) > 5


def test_a_skip_net_reads_its_inputs_at_the_output_and_files_without_it_load_as_before(
        registry, tmp_path):
    """``skip``: the output layer reads the net's inputs (the loss, t/T) besides the LSTM's
    state, so one weight on t/T is a decay: with every other output weight zero, the LR is
    gamma * sigmoid(b + w t/T) exactly. A net saved without the option keeps its header (no
    ``skip`` key) and loads as before; one saved with it loads with it."""
    net = registry.get("lr_policy", "mlrsnet").build(gamma=1.0, progress=True, skip=True)
    assert net.out.in_features == net.hidden + 2
    with torch.no_grad():
        net.out.weight.zero_()
        net.out.weight[0, -1] = -6.0  # the weight on t/T, the last input
        net.out.bias.fill_(2.0)
    state = net.initial_state(torch.device("cpu"))
    for step in (0, 50, 99):
        lr, state = net(net.inputs(torch.tensor(0.7), step, 100), state)
        assert float(lr.detach()) == pytest.approx(float(torch.sigmoid(
            torch.tensor(2.0 - 6.0 * step / 100))), rel=1e-6)

    plain = registry.get("lr_policy", "mlrsnet").build(gamma=1.0)
    path = save_meta_learner(tmp_path / "plain.safetensors", "mlrsnet", plain)
    assert "skip" not in read_meta_learner(path)[1]
    path = save_meta_learner(tmp_path / "skip.safetensors", "mlrsnet", net)
    name, options, tensors, _ = read_meta_learner(path)
    assert options["skip"] is True
    again = registry.get("lr_policy", name).build(**options)
    again.load_state_dict(tensors, strict=False)
    assert torch.equal(again.out.weight, net.out.weight)
    check_component(registry.get("lr_policy", "mlrsnet"), {"progress": True, "skip": True,
                                                           "gamma": 0.2})
