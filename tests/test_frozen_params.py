"""A model with frozen parameters meta-trains: fine-tuning a head is a common use.

The functional model of the virtual step is patched with every parameter; the virtual step must
hand it every parameter too (the frozen ones unchanged), whether or not the optimizer holds them.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call

from metalr.contracts.protocols import RunInfo
from metalr.engine.algorithm import Engine, EngineConfig

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("float64")


@pytest.fixture(scope="module")
def task(mnist1d_64):
    return mnist1d_64


def frozen_mlp(registry, task):
    torch.manual_seed(0)
    model = registry.get("model", "mlp").build(task.spec, hidden=[16]).double()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    first.requires_grad_(False)  # the first layer is frozen, the head trains
    return model, {n for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("hand_frozen_to_optimizer", [True, False])
def test_frozen_layer_meta_trains_and_stays_put(registry, task, hand_frozen_to_optimizer):
    model, frozen = frozen_mlp(registry, task)
    assert frozen
    params = model.parameters() if hand_frozen_to_optimizer else (
        p for p in model.parameters() if p.requires_grad)
    opt = registry.get("optimizer", "sgd").build(params, momentum=0.9, weight_decay=5e-4)
    policy = registry.get("lr_policy", "mlrsnet").build(gamma=0.05).double()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    theta = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    history = Engine(task, model, opt, policy,
                     EngineConfig(epochs=1, batch_size=64, t_val=2)).fit()
    assert history.lrs and all(lr > 0 for lr in history.lrs)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (n in frozen), n
    assert any(not torch.equal(p, theta[n]) for n, p in policy.named_parameters()
               if p.requires_grad), "theta was not meta-trained"


def test_hypergradient_with_a_frozen_layer_matches_torch_func(registry, task):
    model, frozen = frozen_mlp(registry, task)
    opt = registry.get("optimizer", "sgd").build(model.parameters(), momentum=0.9,
                                                 weight_decay=5e-4)
    policy = registry.get("lr_policy", "mlrsnet").build(gamma=0.05, cooldown=0.0).double()
    engine = Engine(task, model, opt, policy, EngineConfig(epochs=1, batch_size=64, t_val=10**9))
    policy.start(RunInfo(1, 1, opt, CPU, 0, task))
    gen = torch.Generator().manual_seed(0)
    batches = task.train_batches(64, gen)
    for _ in range(3):  # momentum buffers are not empty
        engine.step(next(batches))
    batch, meta_batch = next(batches), task.meta_batch(64, gen)

    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    state0 = {n: copy.deepcopy(opt.state.get(p, {})) for n, p in model.named_parameters()}
    group, lstm_state0 = opt.param_groups[0], copy.deepcopy(policy.state)
    theta0 = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    fixed = {**dict(policy.named_buffers()),
             **{n: p for n, p in policy.named_parameters() if not p.requires_grad}}
    engine.step(batch, meta_batch)
    engine_grad = torch.cat([p.grad.reshape(-1) for n, p in policy.named_parameters()
                             if p.requires_grad])

    # Independent: torch's SGD written out, frozen weights left where they are.
    trainable = [n for n in w0 if n not in frozen]
    leaf = {n: w0[n].clone().requires_grad_(n not in frozen) for n in w0}
    loss0 = task.loss(lambda x: functional_call(model, leaf, (x,)), batch)
    g = dict(zip(trainable, torch.autograd.grad(loss0, [leaf[n] for n in trainable])))

    def meta_loss(theta):
        lr, _ = functional_call(policy, {**theta, **fixed}, (loss0.detach(), lstm_state0))
        w_hat = dict(w0)
        for n in trainable:
            d = g[n] + group["weight_decay"] * w0[n]
            w_hat[n] = w0[n] - lr * (group["momentum"] * state0[n]["momentum_buffer"] + d)
        return task.loss(lambda x: functional_call(model, w_hat, (x,)), meta_batch)

    ref = torch.func.grad(meta_loss)(theta0)
    r = torch.cat([ref[n].reshape(-1) for n in theta0])
    assert r.norm() > 0
    assert (engine_grad - r).norm() / r.norm() < 1e-6
