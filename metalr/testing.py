"""Conformance checks for plugin authors: test a component the way metalr tests its own.

    from metalr.plugins import get_registry
    from metalr.testing import check_component

    def test_my_rule():
        check_component(get_registry().get("lr_policy", "my-rule"), {"lr": 0.1})

Each check runs the component for real inside the engine on a small, seeded, synthetic task
(no data to download) and raises ``AssertionError`` with a message saying what broke.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from metalr.data import TensorClassificationTask
from metalr.engine import Engine, EngineConfig, is_episodic, is_meta_learned
from metalr.plugins import Component
from metalr.protocols import ModelSpec, RunInfo, StepContext


class Blobs(TensorClassificationTask):
    """Four Gaussian blobs in 8 dimensions: learnable in a few steps, generated from a seed."""

    spec = ModelSpec(input_shape=(8,), num_outputs=4)

    def __init__(self, meta_size: int = 64, n: int = 512, seed: int = 0):
        super().__init__(meta_size)
        self.n, self.data_seed = n, seed

    def load(self):
        gen = torch.Generator().manual_seed(self.data_seed)
        centres = 3 * torch.randn(4, 8, generator=gen)

        def draw(n):
            y = torch.randint(4, (n,), generator=gen)
            return centres[y] + torch.randn(n, 8, generator=gen), y

        return draw(self.n), draw(self.n // 4)


def _mlp(spec: ModelSpec) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(spec.input_shape), 16), nn.ReLU(),
                         nn.Linear(16, spec.num_outputs))


def _engine(task, model, policy, epochs=2, optimizer=None, **config) -> Engine:
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    return Engine(task, model, opt, policy, EngineConfig(epochs=epochs, batch_size=32, **config))


class _Fixed:
    def start(self, run):
        pass

    def lr(self, ctx):
        return 0.05

    def end_epoch(self, epoch, metrics):
        pass


def check_component(component: Component, options: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
    """Run the conformance check for the component's kind (``task=`` for models)."""
    checks = {"lr_policy": check_lr_policy, "task": check_task, "model": check_model,
              "optimizer": check_optimizer, "tracker": check_tracker}
    checks[component.kind](component, options or {}, **kwargs)


def check_lr_policy(component: Component, options: dict[str, Any]) -> None:
    task = Blobs()
    task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    policy = component.build(**options)
    for method in ("start", "lr", "end_epoch"):
        assert callable(getattr(policy, method, None)), f"{component.name}: no {method}()"
    learned = is_meta_learned(policy)
    if learned:  # what the engine calls on a hypergradient meta-learner
        for method in ("meta_parameters", "virtual_lr", "meta_period", "meta_active",
                       "state_dict", "load_state_dict"):
            assert callable(getattr(policy, method, None)), f"{component.name}: no {method}()"
    before = {k: v.clone() for k, v in policy.state_dict().items()} if learned else {}
    history = _engine(task, _mlp(task.spec), policy, t_val=4).fit()
    assert history.lrs, f"{component.name}: no steps were taken"
    if is_episodic(policy):  # trains itself (metalr.episodes); its saved state must act the same
        twin = component.build(**options)
        twin.load_state_dict(policy.state_dict())
        runs = []
        for p in (policy, twin):
            torch.manual_seed(0)
            runs.append(_engine(task, _mlp(task.spec), p, meta_train=False).fit().lrs)
        assert runs[0] == runs[1], f"{component.name}: state_dict round trip changed the LRs"
    assert all(math.isfinite(lr) and lr >= 0 for lr in history.lrs), (
        f"{component.name}: LRs must be finite and >= 0, got {history.lrs[:5]}...")
    if learned:
        after = policy.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), (
            f"{component.name}: theta did not change during meta-training")
        # a state_dict round trip gives the same net: same LRs for the same losses
        twin = component.build(**options)
        twin.load_state_dict(after)
        run = RunInfo(1, 1, None, torch.device("cpu"), 0, task)
        policy.start(run)
        twin.start(run)
        for loss in (2.0, 1.5, 0.7):
            x = torch.tensor(loss)
            ctx = StepContext(0, 0, x, x, [], [], None, None)
            assert policy.lr(ctx) == twin.lr(ctx), f"{component.name}: state_dict round trip"


def check_task(component: Component, options: dict[str, Any]) -> None:
    task = component.build(**options)
    task.setup(0, torch.device("cpu"))
    for attr in ("spec", "loss_scale", "default_gamma", "metric", "higher_is_better"):
        assert hasattr(task, attr), f"{component.name}: missing attribute {attr}"
    gen = torch.Generator().manual_seed(0)
    batches = list(task.train_batches(32, gen))
    assert len(batches) == task.num_train_batches(32), (
        f"{component.name}: num_train_batches disagrees with train_batches")
    assert task.loss_scale > 0 and task.default_gamma > 0
    meta = task.meta_batch(16, gen)
    if task.spec.kind != "classification":
        return  # other kinds need their own model; their plugin's tests cover loss and evaluate
    torch.manual_seed(0)
    model = _mlp(task.spec)
    for batch in (batches[0], meta):
        loss = task.loss(model, batch)
        assert loss.ndim == 0 and torch.isfinite(loss), f"{component.name}: loss must be a scalar"
    for split in ("train", "meta", "test"):
        metrics = task.evaluate(model, split)
        assert {"loss", task.metric} <= set(metrics), (
            f"{component.name}: evaluate({split!r}) must give 'loss' and {task.metric!r}")


def check_model(component: Component, options: dict[str, Any], task: Any = None) -> None:
    """Train the model for three epochs on ``task`` (default: the blobs) and see the loss fall.

    Pass a task whose spec the model accepts (an image or sequence model needs its own).
    """
    if task is None:
        task = Blobs()
        task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    model = component.build(task.spec, **options)
    assert isinstance(model, nn.Module), f"{component.name}: factory must return an nn.Module"
    history = _engine(task, model, _Fixed(), epochs=3).fit()
    first, last = history.epochs[0]["train_batch_loss"], history.epochs[-1]["train_batch_loss"]
    assert last < first, f"{component.name}: training did not lower the loss ({first} -> {last})"


def check_optimizer(component: Component, options: dict[str, Any]) -> None:
    task = Blobs()
    task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    model = _mlp(task.spec)
    opt = component.build(model.parameters(), **options)
    assert isinstance(opt, torch.optim.Optimizer), f"{component.name}: not a torch optimizer"
    history = _engine(task, model, _Fixed(), epochs=3, optimizer=opt).fit()
    assert history.losses[-1] < history.losses[0], f"{component.name}: loss did not go down"


def check_tracker(component: Component, options: dict[str, Any]) -> None:
    """A parent and a child run, with params, tags (provenance), a metric and a status."""
    import inspect

    tracker = component.build(**options)
    params = inspect.signature(tracker.start_run).parameters
    assert "tags" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()), (
        f"{component.name}: start_run must take tags= (the run's provenance)")
    tags = {"metalr.device": "cpu", "metalr.torch_threads": "1"}
    parent = tracker.start_run("metalr-conformance", "check", {"a": 1}, tags=tags)
    assert isinstance(parent, str) and parent, f"{component.name}: start_run must return a run id"
    child = tracker.start_run("metalr-conformance", "check/child", {"b": 2}, parent, tags=tags)
    tracker.log_metrics(child, {"x": 1.0}, 0)
    tracker.end_run(child, "FINISHED")
    tracker.end_run(parent, "FINISHED")
    tracker.close()
