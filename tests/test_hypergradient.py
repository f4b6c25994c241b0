"""The engine's one-step hypergradient, held against an independent computation.

The reference is written out by hand here: torch's SGD (weight decay, momentum, Nesterov) and
Adam update rules as plain tensor arithmetic, differentiated with ``torch.func.grad``, and a
central finite difference of the same meta loss. The engine goes through `higher`, by its own
``virtual_step``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metalr.engine.algorithm import Engine, EngineConfig
from metalr.engine.differentiable import virtual_step

pytestmark = pytest.mark.usefixtures("float64")


@pytest.fixture(scope="module")
def task(mnist1d_64):
    return mnist1d_64


def torch_sgd_direction(w, g, state, group):
    d = g + group["weight_decay"] * w
    mu = group["momentum"]
    if mu == 0:
        return d
    buf = mu * state["momentum_buffer"] + (1 - group["dampening"]) * d
    return d + mu * buf if group["nesterov"] else buf


def torch_adam_step(w, g, state, group, lr, decoupled=False):
    b1, b2 = group["betas"]
    k = float(state["step"]) + 1
    if decoupled:  # AdamW: shrink the weights, then Adam on the plain gradient
        w, d = w * (1 - lr * group["weight_decay"]), g
    else:
        d = g + group["weight_decay"] * w
    m = b1 * state["exp_avg"] + (1 - b1) * d
    v = b2 * state["exp_avg_sq"] + (1 - b2) * d * d
    return w - lr / (1 - b1**k) * m / (v.sqrt() / (1 - b2**k) ** 0.5 + group["eps"])


CASES = [
    ("sgd", {"momentum": 0.9, "weight_decay": 5e-4}),
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    ("adam", {"weight_decay": 1e-4}),
    ("adamw", {"weight_decay": 1e-2}),
]


class _Attention(nn.Module):
    """One pre-norm transformer encoder layer over MNIST-1D's 40 positions, mean-pooled: a
    model no plugin ships, whose meta step goes through multi-head attention and layer norm."""

    def __init__(self, classes: int):
        super().__init__()
        self.embed = nn.Linear(1, 8)
        self.body = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                               norm_first=True)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        return self.head(self.body(self.embed(x.reshape(len(x), -1, 1))).mean(1))


@pytest.mark.parametrize("learn_scale", [False, True])
@pytest.mark.parametrize("policy_name", ["mlrsnet", "mlp-lr"])
@pytest.mark.parametrize("opt_name,opt_options", CASES)
def test_hypergradient_matches_torch_func_and_finite_differences(
    registry, task, opt_name, opt_options, policy_name, learn_scale
):
    """Through the LR alone, and with log(gamma) learned too (the auto preset's scale)."""
    torch.manual_seed(0)
    model = registry.get("model", "mlp").build(task.spec, hidden=[16]).double()
    _check_hypergradient(registry, task, model, opt_name, opt_options, policy_name, learn_scale)


@pytest.mark.parametrize("opt_name,opt_options", [CASES[0], CASES[3]], ids=["momentum", "adamw"])
def test_hypergradient_through_attention(registry, task, opt_name, opt_options):
    """The same check through a transformer layer (bench/unseen.py's ``gpt-char`` family)."""
    torch.manual_seed(0)
    model = _Attention(task.spec.num_outputs).double()
    _check_hypergradient(registry, task, model, opt_name, opt_options, "mlrsnet", True)


def _check_hypergradient(registry, task, model, opt_name, opt_options, policy_name, learn_scale):
    opt = registry.get("optimizer", opt_name).build(model.parameters(), **opt_options)
    gamma = 0.05 if opt_name == "sgd" else 0.01
    policy = registry.get("lr_policy", policy_name).build(
        gamma=gamma, learn_scale=learn_scale, cooldown=0.0).double()
    engine = Engine(task, model, opt, policy, EngineConfig(epochs=1, batch_size=64, t_val=10**9))
    from metalr.contracts.protocols import RunInfo

    policy.start(RunInfo(1, 1, opt, torch.device("cpu"), 0, task))
    gen = torch.Generator().manual_seed(0)
    batches = task.train_batches(64, gen)
    for _ in range(3):  # a few real steps, so momentum buffers / Adam moments are not empty
        engine.step(next(batches))
    batch, meta_batch = next(batches), task.meta_batch(64, gen)

    names = [n for n, _ in model.named_parameters()]
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    state0 = {n: copy.deepcopy(opt.state[p]) for n, p in model.named_parameters()}
    group = opt.param_groups[0]
    lstm_state0 = copy.deepcopy(policy.state)
    theta0 = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    assert ("log_gamma" in theta0) == learn_scale
    fixed = {**dict(policy.named_buffers()),
             **{n: p for n, p in policy.named_parameters() if not p.requires_grad}}

    engine.step(batch, meta_batch)
    engine_grad = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}

    # --- the independent computation -------------------------------------------------------
    def batch_loss(w):
        return task.loss(lambda x: functional_call(model, w, (x,)), batch)

    w_leaf = {n: t.clone().requires_grad_() for n, t in w0.items()}
    loss0 = batch_loss(w_leaf)
    g = dict(zip(names, torch.autograd.grad(loss0, list(w_leaf.values()))))

    def meta_loss(theta):
        lr, _ = functional_call(policy, {**theta, **fixed}, (loss0.detach(), lstm_state0))
        if opt_name == "sgd":
            w_hat = {n: w0[n] - lr * torch_sgd_direction(w0[n], g[n], state0[n], group)
                     for n in names}
        else:
            w_hat = {n: torch_adam_step(w0[n], g[n], state0[n], group, lr, opt_name == "adamw")
                     for n in names}
        return task.loss(lambda x: functional_call(model, w_hat, (x,)), meta_batch)

    reference = torch.func.grad(meta_loss)(theta0)
    flat = lambda d: torch.cat([d[n].reshape(-1) for n in theta0])
    e, r = flat(engine_grad), flat(reference)
    assert r.norm() > 0
    assert (e - r).norm() / r.norm() < 1e-6

    # central finite differences along random directions
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = {n: torch.randn(t.shape, generator=gen) for n, t in theta0.items()}
        eps = 1e-6
        plus = meta_loss({n: theta0[n] + eps * v[n] for n in theta0})
        minus = meta_loss({n: theta0[n] - eps * v[n] for n in theta0})
        fd = (plus - minus) / (2 * eps)
        analytic = (e * flat(v)).sum()
        assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(analytic).item()) + 1e-9


class _Parts(nn.Module):
    """A model with the parameters a virtual step can get wrong: one the loss never uses, one
    frozen, one the optimizer does not hold."""

    def __init__(self):
        super().__init__()
        self.used = nn.Linear(6, 3)
        self.unused = nn.Parameter(torch.randn(4))
        self.frozen = nn.Parameter(torch.randn(3), requires_grad=False)
        self.unheld = nn.Parameter(torch.randn(3))

    def forward(self, x):
        return self.used(x) + self.frozen + self.unheld


OPTIMIZERS = [
    (torch.optim.SGD, {"weight_decay": 1e-2}),
    (torch.optim.SGD, {"momentum": 0.9, "weight_decay": 1e-2}),
    (torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    (torch.optim.Adam, {"weight_decay": 1e-2}),
    (torch.optim.AdamW, {"weight_decay": 1e-1}),
]


@pytest.mark.parametrize("cls,options", OPTIMIZERS,
                         ids=["sgd", "momentum", "nesterov", "adam", "adamw"])
def test_virtual_step_moves_what_the_real_step_moves(float64, cls, options):
    """At the same LR the virtual weights equal the weights after ``optimizer.step()``, for
    the parameter the loss does not use (no gradient: weight decay and momentum must not move
    it), the frozen one and the one outside the optimizer."""
    torch.manual_seed(0)
    model = _Parts()
    held = [p for n, p in model.named_parameters() if n != "unheld"]
    opt = cls(held, lr=0.05, **options)
    # the unused parameter got gradients once, so it has momentum / moments of its own
    model.unused.grad = torch.randn(4)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    for step in range(4):
        opt.zero_grad(set_to_none=step > 0)
        nn.functional.mse_loss(model(x + step), y).backward()
        if step == 3:
            params = list(model.parameters())
            grads = [p.grad for p in params]
            assert grads[list(dict(model.named_parameters())).index("unused")] is None
            before = [p.detach().clone() for p in params]
            virtual = virtual_step(opt, params, grads, torch.tensor(0.05))
        opt.step()
    for (name, p), v, b in zip(model.named_parameters(), virtual, before, strict=True):
        torch.testing.assert_close(v.detach(), p.detach(), rtol=1e-12, atol=1e-14, msg=name)
    moved = {n for (n, p), b in zip(model.named_parameters(), before) if not torch.equal(p, b)}
    assert moved == {"used.weight", "used.bias"}  # the real step: what the test is about


def test_virtual_step_leaves_the_optimizer_state_alone(float64):
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, 5)).pow(2).mean().backward()
        opt.step()
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    lr = torch.tensor(0.01, requires_grad=True)
    w_hat = virtual_step(opt, list(model.parameters()), [p.grad for p in model.parameters()], lr)
    sum(w.sum() for w in w_hat).backward()
    assert lr.grad is not None and lr.grad != 0
    for p in model.parameters():
        for k, v in opt.state[p].items():
            assert torch.equal(v, state[id(p)][k]), k
