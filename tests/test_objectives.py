"""Meta-objectives (issue 19): the component kind, and ``unroll`` held against real steps.

The reference for ``unroll``'s hypergradient is independent of higher: K real steps of a copy
of the real optimizer (its state included) at LR +- eps, the meta loss after them, a central
finite difference, in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
from metalr_objectives import Averaged, MeanStep, OneStep, Unroll
from torch import nn

from metalr.engine.algorithm import Engine, EngineConfig
from metalr.recipes.loader import load_recipe
from metalr.testing import check_component


def _engine(task, registry, optimizer, objective, clip=None):
    torch.manual_seed(0)
    model = registry.get("model", "mlp").build(task.spec, hidden=[16]).double()
    opt = optimizer(model.parameters())
    policy = registry.get("lr_policy", "mlrsnet").build(gamma=0.1)
    engine = Engine(task, model, opt, policy,
                    EngineConfig(epochs=1, batch_size=32, seed=0, clip_grad_norm=clip), objective)
    gen = torch.Generator().manual_seed(0)
    batch = next(iter(task.train_batches(32, gen)))
    for step in range(2):  # real steps first: momentum buffers / Adam moments exist
        engine._training_loss(batch, step, 0)
        opt.step()
    ctx = engine._training_loss(batch, 7, 0)
    meta = task.meta_batch(64, gen)
    return engine, model, opt, ctx, meta


def _real_k_steps(engine, model, opt, look, meta, k, lr, clip):
    """K steps of a copy of the real optimizer (state and all) from a copy of the model."""
    twin = copy.deepcopy(model)
    twin_opt = type(opt)(twin.parameters(), **{k_: v for k_, v in opt.defaults.items()
                                               if k_ != "lr"}, lr=lr)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict aliases tensors
    for group in twin_opt.param_groups:
        group["lr"] = lr
    for p, q in zip(twin.parameters(), model.parameters()):
        p.grad = q.grad.clone()
    twin_opt.step()
    for i in range(1, k):
        twin_opt.zero_grad()
        engine.task.loss(twin, look.train_batch(i)).backward()
        if clip:
            nn.utils.clip_grad_norm_(twin.parameters(), clip)
        twin_opt.step()
    return float(engine.task.loss(twin, meta).detach())


OPTIMIZERS = {
    "sgdm": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3, weight_decay=1e-4),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("clip", [None, 0.5])
def test_unroll_hypergradient_is_the_derivative_of_k_real_steps(mnist1d_64, registry, float64,
                                                                 name, clip):
    k, lr0 = 4, 0.05 if name == "sgdm" else 3e-3
    engine, model, opt, ctx, meta = _engine(mnist1d_64, registry, OPTIMIZERS[name], Unroll(k=k),
                                            clip)
    look = engine._lookahead(ctx, meta)
    lr = torch.tensor(lr0, requires_grad=True)
    value = Unroll(k=k).meta_loss(look, lr)
    (grad,) = torch.autograd.grad(value, lr)
    assert float(value.detach()) == pytest.approx(
        _real_k_steps(engine, model, opt, look, meta, k, lr0, clip), rel=1e-10)
    eps = lr0 * 1e-4
    fd = (_real_k_steps(engine, model, opt, look, meta, k, lr0 + eps, clip)
          - _real_k_steps(engine, model, opt, look, meta, k, lr0 - eps, clip)) / (2 * eps)
    assert float(grad) == pytest.approx(fd, rel=1e-5)
    one = engine._lookahead(ctx, meta)
    (first,) = torch.autograd.grad(OneStep().meta_loss(one, lr), lr)
    assert float(first) != pytest.approx(float(grad), rel=1e-3)  # K steps see something else


def test_unroll_of_one_step_is_the_one_step_objective(mnist1d_64, registry, float64):
    engine, _, _, ctx, meta = _engine(mnist1d_64, registry, OPTIMIZERS["sgdm"], Unroll(k=1))
    lr = torch.tensor(0.05, requires_grad=True)
    a = Unroll(k=1).meta_loss(engine._lookahead(ctx, meta), lr)
    b = OneStep().meta_loss(engine._lookahead(ctx, meta), lr)
    assert float(a.detach()) == float(b.detach())
    assert float(torch.autograd.grad(a, lr)[0]) == float(torch.autograd.grad(b, lr)[0])


def test_the_further_batches_are_the_steps_own_and_leave_the_run_alone(mnist1d_64, registry,
                                                                        float64):
    engine, _, _, ctx, meta = _engine(mnist1d_64, registry, OPTIMIZERS["sgdm"], Unroll(k=3))
    one, again = engine._lookahead(ctx, meta), engine._lookahead(ctx, meta)
    assert torch.equal(one.train_batch(2)[0], again.train_batch(2)[0])  # the same on a resume
    assert not torch.equal(one.train_batch(1)[0], one.train_batch(2)[0])


@pytest.mark.parametrize("name,options", [("one-step", {}), ("unroll", {"k": 3}),
                                          ("averaged", {"horizon": 5}), ("mean-step", {})])
def test_builtin_objectives_conform(registry, name, options):
    check_component(registry.get("meta_objective", name), options)


def test_a_recipe_chooses_the_objective_and_it_is_checked(registry, tmp_path):
    good = load_recipe("recipes/quickstart.yaml",
                       ["methods.mlrsnet.meta.objective={name: unroll, options: {k: 3}}"])
    assert good.methods["mlrsnet"].meta.objective.options == {"k": 3}
    from metalr.recipes.loader import RecipeError

    with pytest.raises(RecipeError, match="methods.mlrsnet.meta.objective"):
        load_recipe("recipes/quickstart.yaml",
                    ["methods.mlrsnet.meta.objective={name: unroll, options: {k: 0}}"])
    with pytest.raises(RecipeError, match="methods.mlrsnet.meta.objective"):
        load_recipe("recipes/quickstart.yaml", ["methods.mlrsnet.meta.objective=two-step"])


THIRD_PARTY = '''
from pydantic import BaseModel, ConfigDict
from metalr import hookimpl


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = 0.5


class Blend:
    """A third party's objective: the meta loss one step ahead and two steps ahead, blended."""

    def __init__(self, weight=0.5):
        self.weight = weight

    def meta_loss(self, look, lr):
        steps = look.steps(lr)
        one = look.meta_loss(steps.first())
        batch = look.train_batch(1)
        two = look.meta_loss(steps.next(lambda w: look.train_loss(w, batch)))
        return (1 - self.weight) * one + self.weight * two

    def run_state(self):  # nothing carries from one meta-update to the next
        return {}

    def load_run_state(self, state):
        pass


@hookimpl
def register_meta_objectives(register):
    register("blend", Blend, options=Options, summary="one and two steps ahead, blended")
'''


def test_a_third_party_objective_is_found_checked_and_runs(tmp_path, monkeypatch):
    """Through an entry point like any distribution's: the conformance check passes and a
    recipe meta-trains with it."""
    from test_plugins import write_distribution

    from metalr.contracts.registry import Registry
    from metalr.running.runner import Runner

    write_distribution(tmp_path, "metalr-blend", "metalr_blend", THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry(strict=True)
    registry.load_entry_points()
    component = registry.get("meta_objective", "blend")
    assert component.source == "metalr-blend:blend"
    check_component(component, {"weight": 0.25})
    recipe = load_recipe("recipes/quickstart.yaml", [
        "methods.mlrsnet.meta.objective={name: blend, options: {weight: 0.25}}",
        "train.epochs=3", "train.seeds=[0]", "tracking=none", f"output_dir={tmp_path / 'out'}",
        "methods.mlrsnet.meta.save_phases=null"], registry, only=["mlrsnet"])
    (run,) = Runner(recipe, registry, progress=False).run().results
    assert run.status == "FINISHED" and run.final("test_accuracy") > 0.3


# -- averaged: the meta loss at a running average of the weights --------------------------------


def _real_step_weights(model, opt, lr):
    """The weights after one real step of a copy of the real optimizer (state and all) at
    ``lr`` with the model's current gradients: independent of higher."""
    twin = copy.deepcopy(model)
    twin_opt = type(opt)(twin.parameters(), **{k_: v for k_, v in opt.defaults.items()
                                               if k_ != "lr"}, lr=lr)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for group in twin_opt.param_groups:
        group["lr"] = lr
    for p, q in zip(twin.parameters(), model.parameters()):
        p.grad = q.grad.clone()
    twin_opt.step()
    return [p.detach() for p in twin.parameters()]


def _meta_loss_at(engine, model, weights, meta):
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p, w in zip(twin.parameters(), weights):
            p.copy_(w)
    return float(engine.task.loss(twin, meta).detach())


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_averaged_is_the_meta_loss_at_the_mean_and_its_derivative(mnist1d_64, registry, float64,
                                                                   name):
    """Two meta-updates with a real step between: the mean is then beta w0 + (1 - beta) w1 of
    the real weights, and the meta loss is at beta * mean + (1 - beta) * (one real step from w1
    at lr), held with its LR derivative against real optimizer steps and a central finite
    difference; asking again at the same meta-update does not move the mean."""
    horizon, (lr1, lr2) = 4.0, (0.05, 0.08) if name == "sgdm" else (3e-3, 5e-3)
    beta = 1 - 1 / horizon
    objective = Averaged(horizon=horizon)
    engine, model, opt, ctx, meta = _engine(mnist1d_64, registry, OPTIMIZERS[name], objective)
    w0 = [p.detach().clone() for p in model.parameters()]
    first = objective.meta_loss(engine._lookahead(ctx, meta), torch.tensor(lr1))
    mixed = [beta * a + (1 - beta) * b for a, b in zip(w0, _real_step_weights(model, opt, lr1))]
    assert float(first) == pytest.approx(_meta_loss_at(engine, model, mixed, meta), rel=1e-10)

    for group in opt.param_groups:
        group["lr"] = lr1
    opt.step()  # the real step: the next meta-update sees new weights
    ctx = engine._training_loss(next(iter(mnist1d_64.train_batches(
        32, torch.Generator().manual_seed(1)))), 8, 0)
    w1 = [p.detach().clone() for p in model.parameters()]
    mean = [beta * a + (1 - beta) * b for a, b in zip(w0, w1)]

    def reference(at: float) -> float:
        step = _real_step_weights(model, opt, at)
        return _meta_loss_at(engine, model, [beta * m + (1 - beta) * w
                                             for m, w in zip(mean, step)], meta)

    lr = torch.tensor(lr2, requires_grad=True)
    value = objective.meta_loss(engine._lookahead(ctx, meta), lr)
    (grad,) = torch.autograd.grad(value, lr)
    assert float(value.detach()) == pytest.approx(reference(lr2), rel=1e-10)
    eps = lr2 * 1e-4
    fd = (reference(lr2 + eps) - reference(lr2 - eps)) / (2 * eps)
    assert float(grad) == pytest.approx(fd, rel=1e-5)
    again = objective.meta_loss(engine._lookahead(ctx, meta), torch.tensor(lr2))
    assert float(again) == float(value.detach())  # the same meta-update: the mean stays
    one = OneStep().meta_loss(engine._lookahead(ctx, meta), lr)
    assert float(torch.autograd.grad(one, lr)[0]) != pytest.approx(float(grad), rel=1e-2)


def test_averaged_over_one_meta_update_is_the_one_step_objective(mnist1d_64, registry, float64):
    objective = Averaged(horizon=1)
    engine, _, opt, ctx, meta = _engine(mnist1d_64, registry, OPTIMIZERS["sgdm"], objective)
    for _ in range(2):
        opt.step()
        lr = torch.tensor(0.05, requires_grad=True)
        a = objective.meta_loss(engine._lookahead(ctx, meta), lr)
        b = OneStep().meta_loss(engine._lookahead(ctx, meta), lr)
        assert float(a.detach()) == float(b.detach())
        assert float(torch.autograd.grad(a, lr)[0]) == float(torch.autograd.grad(b, lr)[0])


def test_averaged_resumes_with_its_mean(mnist1d_64, registry, float64):
    """The mean is run state: an objective loaded from a checkpoint's state continues exactly."""
    from metalr.engine import checkpoint as ckpt

    objective = Averaged(horizon=5)
    engine, _, opt, ctx, meta = _engine(mnist1d_64, registry, OPTIMIZERS["sgdm"], objective)
    objective.meta_loss(engine._lookahead(ctx, meta), torch.tensor(0.05))
    opt.step()  # the next meta-update folds new weights into the mean
    saved = ckpt.component_state("meta_objective", objective)
    resumed = Averaged(horizon=5)
    ckpt.load_component_state("meta_objective", resumed, saved, "averaged")
    fresh = Averaged(horizon=5)
    a, b, c = (o.meta_loss(engine._lookahead(ctx, meta), torch.tensor(0.09))
               for o in (objective, resumed, fresh))
    assert float(a) == float(b) != float(c)


def _real_step_with(model, opt, lr, grads):
    """One real step of a copy of the real optimizer from the current weights with ``grads``."""
    saved = [p.grad for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g
    try:
        return _real_step_weights(model, opt, lr)
    finally:
        for p, g in zip(model.parameters(), saved):
            p.grad = g


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_mean_step_is_its_formula_on_real_steps_and_its_derivative(mnist1d_64, registry, float64,
                                                                   name):
    """Value and LR derivative held against two real steps of copies of the real optimizer
    (this batch's gradient, and the further batch's taken at the same weights) and a central
    finite difference: L(mean) - (L(w + half) + L(w - half)) / 2 + L(w)."""
    engine, model, opt, ctx, meta = _engine(mnist1d_64, registry, OPTIMIZERS[name], MeanStep())
    look = engine._lookahead(ctx, meta)
    twin = copy.deepcopy(model)
    engine.task.loss(twin, look.train_batch(1)).backward()
    other_grads = [p.grad.detach().clone() for p in twin.parameters()]
    here = [p.detach().clone() for p in model.parameters()]
    ours = [p.grad.detach().clone() for p in model.parameters()]

    def reference(lr: float) -> float:
        a = _real_step_with(model, opt, lr, ours)
        b = _real_step_with(model, opt, lr, other_grads)
        half = [(x - y) / 2 for x, y in zip(a, b)]
        return (_meta_loss_at(engine, model, [(x + y) / 2 for x, y in zip(a, b)], meta)
                - (_meta_loss_at(engine, model, [w + h for w, h in zip(here, half)], meta)
                   + _meta_loss_at(engine, model, [w - h for w, h in zip(here, half)], meta)) / 2
                + _meta_loss_at(engine, model, here, meta))

    at = 0.05 if name == "sgdm" else 3e-3
    lr = torch.tensor(at, requires_grad=True)
    value = MeanStep().meta_loss(engine._lookahead(ctx, meta), lr)
    (grad,) = torch.autograd.grad(value, lr)
    assert float(value.detach()) == pytest.approx(reference(at), rel=1e-10)
    eps = at * 1e-4
    fd = (reference(at + eps) - reference(at - eps)) / (2 * eps)
    assert float(grad) == pytest.approx(fd, rel=1e-5)
    one = OneStep().meta_loss(engine._lookahead(ctx, meta), lr)
    assert float(torch.autograd.grad(one, lr)[0]) != pytest.approx(float(grad), rel=1e-2)


def _quadratic_look(b1, b2, c, a, lr_real=0.1, momentum=0.9):
    """A Lookahead on L(w) = (w - target)' A (w - target) / 2 with SGD momentum whose buffer is
    warm: the meta loss's target is ``c``, the training batches' are ``b1`` (this step's) and
    ``b2`` (the further batch)."""
    from metalr.contracts.protocols import Lookahead
    from metalr.engine.differentiable import VirtualSteps

    def loss(w, target):
        return 0.5 * (w[0] - target) @ a @ (w[0] - target)

    w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, len(c), dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=lr_real, momentum=momentum)
    for target in (c + 0.5, c - 0.3):  # two real steps: the momentum buffer is not the gradient
        opt.zero_grad()
        loss([w], target).backward()
        opt.step()
    opt.zero_grad()
    loss([w], b1).backward()
    look = Lookahead(steps=lambda lr: VirtualSteps(opt, [w], [w.grad], lr),
                     train_batch=lambda k: b2, train_loss=lambda ws, b: loss(ws, b),
                     meta_loss=lambda ws: loss(ws, c))
    buf = opt.state[w]["momentum_buffer"]
    d1 = momentum * buf + w.grad
    d2 = momentum * buf + a @ (w.detach() - b2)
    return look, w.detach(), d1, d2


def test_mean_step_cancels_the_batch_noise_on_a_quadratic(float64):
    """On a quadratic the objective is L(w) - lr grad.(d1 + d2)/2 + lr^2/2 d1'A d2 exactly (the
    closed form, not higher), where the one-step objective has d1'A d1: the batch noise's own
    curvature, which is what rewards a smaller LR. Without noise (both batches alike) the two
    objectives agree to rounding."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)) @ q.T
    c = torch.randn(6, generator=gen, dtype=torch.float64)
    b1, b2 = (c + 0.7 * torch.randn(6, generator=gen, dtype=torch.float64) for _ in range(2))
    look, w, d1, d2 = _quadratic_look(b1, b2, c, a)
    grad_meta = a @ (w - c)
    at = 0.3
    lr = torch.tensor(at, dtype=torch.float64, requires_grad=True)
    value = MeanStep().meta_loss(look, lr)
    (dlr,) = torch.autograd.grad(value, lr)
    base = float(0.5 * (w - c) @ a @ (w - c))
    closed = base - at * grad_meta @ (d1 + d2) / 2 + at**2 / 2 * d1 @ a @ d2
    assert float(value.detach()) == pytest.approx(float(closed), rel=1e-12)
    assert float(dlr) == pytest.approx(float(-grad_meta @ (d1 + d2) / 2 + at * d1 @ a @ d2),
                                       rel=1e-12)
    one = OneStep().meta_loss(look, lr)
    assert float(torch.autograd.grad(one, lr)[0]) == pytest.approx(
        float(-grad_meta @ d1 + at * d1 @ a @ d1), rel=1e-12)
    assert float(d1 @ a @ d1) > float(d1 @ a @ d2)  # the noise's curvature, gone

    same, w, d1, _ = _quadratic_look(b1, b1, c, a)
    lr = torch.tensor(at, dtype=torch.float64, requires_grad=True)
    x, y = MeanStep().meta_loss(same, lr), OneStep().meta_loss(same, lr)
    assert float(x.detach()) == pytest.approx(float(y.detach()), rel=1e-12)
    assert float(torch.autograd.grad(x, lr)[0]) == pytest.approx(
        float(torch.autograd.grad(y, lr)[0]), rel=1e-10)
