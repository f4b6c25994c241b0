"""The meta step at the scale users run: memory that does not grow with the run, and nothing of
the meta set leaking into the model's BatchNorm statistics. (That the virtual step is the real
step: tests/test_hypergradient.py.)"""

from __future__ import annotations

import copy
import gc
import itertools

import pytest
import torch
from torch import nn

from metalr.contracts.protocols import RunInfo
from metalr.engine.algorithm import Engine, EngineConfig
from metalr.engine.order import DataOrder


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


@pytest.mark.parametrize("opt_name,opt_options", [
    ("sgd", {"momentum": 0.9, "weight_decay": 5e-4}),
    ("adam", {}),
])
def test_meta_updates_keep_nothing_from_one_to_the_next(registry, opt_name, opt_options):
    """320 meta-updates: the live tensors after the last equal those after the 20th.

    Fails on the engine that patched the model once with ``higher.monkeypatch`` (its fast
    weights list grew by every parameter at every meta-update)."""
    task = registry.get("task", "mnist1d").build(meta_size=100, num_samples=600)
    task.setup(seed=0, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = registry.get("model", "mlp").build(task.spec, hidden=[8])
    opt = registry.get("optimizer", opt_name).build(model.parameters(), **opt_options)
    policy = registry.get("lr_policy", "mlrsnet").build(preset="paper", gamma=0.05)
    engine = Engine(task, model, opt, policy, EngineConfig(epochs=1, batch_size=64, t_val=1))
    policy.start(RunInfo(1, 320, opt, torch.device("cpu"), 0, task))
    batches = engine.order.batches(task, 64)
    counts = {}
    for step, (epoch, batch) in enumerate(itertools.islice(batches, 320), start=1):
        meta_batch = task.meta_batch(64, engine.meta_generator)
        result = engine.step(batch, meta_batch, step=step - 1, epoch=epoch)
        assert result.meta_loss is not None and not result.meta_loss.requires_grad
        if step in (20, 320):
            del result
            counts[step] = _live_tensors()
    assert counts[320] <= counts[20], counts


def _bn_engine(registry, task, policy_name, options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    policy = registry.get("lr_policy", policy_name).build(**options)
    engine = Engine(task, model, opt, policy, EngineConfig(epochs=1, batch_size=64, t_val=1))
    policy.start(RunInfo(1, 10, opt, torch.device("cpu"), 0, task))
    return engine, model


@pytest.mark.parametrize("policy_name,options,meta,steps", [
    # RTHO's first step is at its start LR; its second looks at the meta set (ctx.meta_grads)
    # and at the training batch again (a Hessian-vector product)
    ("rtho", {"lr": 0.05}, False, 2),
    ("mlrsnet", {"preset": "paper", "gamma": 0.05}, True, 1),  # the virtual step's meta forward
])
def test_the_meta_set_never_reaches_batchnorm_statistics(registry, policy_name, options, meta,
                                                         steps):
    """Running statistics equal a fixed-LR run's: only the training forwards (which come before
    any LR differs) updated them, once a step."""
    task = registry.get("task", "mnist1d").build(meta_size=100, num_samples=600)
    task.setup(seed=0, device=torch.device("cpu"))
    engine, model = _bn_engine(registry, task, policy_name, options)
    plain, plain_model = _bn_engine(registry, task, "fixed", {"lr": 0.05})
    order = DataOrder(0)
    for step, (_, batch) in enumerate(itertools.islice(order.batches(task, 64), steps)):
        meta_batch = task.meta_batch(64, engine.meta_generator) if meta else None
        engine.step(batch, meta_batch, step=step)
        plain.step(batch, step=step)
    bn, plain_bn = model[2], plain_model[2]
    assert int(bn.num_batches_tracked) == steps
    torch.testing.assert_close(bn.running_mean, plain_bn.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, plain_bn.running_var, rtol=0, atol=0)


def test_meta_grads_are_the_train_mode_gradient_of_the_meta_loss(registry):
    """ctx.meta_grads: batch statistics in the forward (train mode), against plain autograd."""
    task = registry.get("task", "mnist1d").build(meta_size=100, num_samples=600)
    task.setup(seed=0, device=torch.device("cpu"))
    engine, model = _bn_engine(registry, task, "rtho", {"lr": 0.05})
    batch = task.meta_batch(engine.cfg.meta_batch_size, DataOrder(0).meta_generator())
    grads = engine._context(torch.tensor(1.0), batch, 0, 0).meta_grads()  # its first meta batch
    twin = copy.deepcopy(model).train()  # the independent computation: a copy, plain autograd
    reference = torch.autograd.grad(task.loss(twin, batch), list(twin.parameters()))
    for g, r in zip(grads, reference, strict=True):
        torch.testing.assert_close(g, r)
    twin.eval()
    in_eval = torch.autograd.grad(task.loss(twin, batch), list(twin.parameters()))
    assert not torch.allclose(in_eval[0], reference[0])  # so it matters that it is train mode
