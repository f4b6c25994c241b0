"""HD, L4 and RTHO (plugin ``metalr_adaptive``) against independent computations.

Each policy is driven the way the engine drives it: real StepContexts, a real torch optimizer
whose every group gets the policy's LR before ``optimizer.step()``. The expected LR sequences
are written out by hand with plain tensors; RTHO's hypergradient is checked against central
finite differences of the validation loss over the LR.
"""

from __future__ import annotations

import math

import metalr_adaptive
import pydantic
import pytest
import torch
from metalr_adaptive import L4, RTHO, HypergradientDescent, MissingMetaSplitError
from metalr_adaptive.directions import UnsupportedOptimizerError, update_direction

from metalr.plugins import Registry
from metalr.protocols import RunInfo, StepContext

DT = torch.float64


def spd_matrix(n: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))
    return q @ torch.diag(torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=DT)[:n]) @ q.T


A = spd_matrix()
W0 = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=DT)


def run_info(opt: torch.optim.Optimizer, steps: int) -> RunInfo:
    return RunInfo(epochs=1, steps_per_epoch=steps, optimizer=opt, device=torch.device("cpu"),
                   seed=0, task=None)


def drive(policy, params, opt, loss_at, steps, meta_loss=None):
    """The engine's loop: backward, ``lr = policy.lr(ctx)``, set every group's LR, step.

    ``loss_at(step, params)`` is the batch loss of step ``step``. Gradients are zeroed in place
    (``set_to_none=False``), so a policy that kept ``ctx.grads`` without copying would see them
    change under it.
    """
    policy.start(run_info(opt, steps))
    lrs = []
    for step in range(steps):
        opt.zero_grad(set_to_none=False)
        loss = loss_at(step, params)
        loss.backward()
        meta_grads = None
        if meta_loss is not None:
            def meta_grads():
                return list(torch.autograd.grad(meta_loss(params), params))
        ctx = StepContext(
            step=step, epoch=0, loss=loss.detach(), loss_input=loss.detach(), params=params,
            grads=[p.grad for p in params], optimizer=opt,
            batch_loss=lambda ps, step=step: loss_at(step, ps), meta_grads=meta_grads,
        )
        lr = policy.lr(ctx)
        assert isinstance(lr, float)
        lrs.append(lr)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    return lrs


def quadratic(step, ps):
    return 0.5 * ps[0] @ A @ ps[0]


def make_opt(kind: str, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.0)
    if kind == "heavy-ball":
        return torch.optim.SGD(params, lr=0.0, momentum=0.9)
    if kind == "sgdn":
        return torch.optim.SGD(params, lr=0.0, momentum=0.9, nesterov=True)
    if kind == "adam":
        return torch.optim.Adam(params, lr=0.0, betas=(0.9, 0.999), eps=1e-8)
    raise ValueError(kind)


class HandDirection:
    """The base optimizers' update directions, written out for a single tensor."""

    def __init__(self, kind: str):
        self.kind, self.t, self.u, self.m, self.v = kind, 0, None, 0.0, 0.0

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        self.t += 1
        if self.kind == "sgd":
            return g
        if self.kind in ("heavy-ball", "sgdn"):
            self.u = g if self.u is None else 0.9 * self.u + g
            return self.u if self.kind == "heavy-ball" else g + 0.9 * self.u
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        m_hat, v_hat = self.m / (1 - 0.9**self.t), self.v / (1 - 0.999**self.t)
        return m_hat / (v_hat.sqrt() + 1e-8)


# ---------------------------------------------------------------------------------------- HD


@pytest.mark.parametrize(
    ("variant", "lr0", "beta"), [("sgd", 0.05, 0.01), ("sgdn", 0.01, 0.002), ("adam", 0.05, 1e-3)]
)
def test_hd_lr_sequence_matches_hand_computation(variant, lr0, beta):
    steps = 10
    w = torch.nn.Parameter(W0.clone())
    opt = make_opt(variant, [w])
    policy = HypergradientDescent(variant=variant, lr=lr0, hyper_lr=beta, max_lr=10.0)
    lrs = drive(policy, [w], opt, quadratic, steps)

    # a_t = a_{t-1} + beta <g_t, d_{t-1}>, d the direction the optimizer applied last step.
    x, a, prev, direction, expected = W0.clone(), lr0, None, HandDirection(variant), []
    for _ in range(steps):
        g = A @ x
        if prev is not None:
            a = min(max(a + beta * float(g @ prev), 0.0), 10.0)
        expected.append(a)
        d = direction(g)
        x = x - a * d
        prev = d
    assert lrs == pytest.approx(expected, rel=1e-10, abs=0)
    assert max(expected) - min(expected) > 1e-3 * lr0  # the rule really moved the LR
    assert torch.allclose(w.detach(), x, rtol=1e-10, atol=1e-12)


def test_hd_clamps_to_max_lr_and_never_goes_negative():
    w = torch.nn.Parameter(W0.clone())
    opt = make_opt("sgd", [w])
    lrs = drive(HypergradientDescent(lr=0.1, hyper_lr=10.0, max_lr=0.3), [w], opt, quadratic, 12)
    assert all(0.0 <= lr <= 0.3 for lr in lrs)
    assert 0.3 in lrs  # the hypergradient pushed it to the cap
    assert 0.0 in lrs  # ... and, past the stable LR, down to zero


def test_hd_raises_on_a_non_finite_lr():
    w = torch.nn.Parameter(W0.clone())
    opt = make_opt("sgd", [w])
    bad = lambda step, ps: quadratic(step, ps) * (math.inf if step == 1 else 1.0)
    with pytest.raises(FloatingPointError, match="hd"):
        drive(HypergradientDescent(lr=0.1), [w], opt, bad, 3)


def test_hd_variant_must_match_the_optimizer():
    w = torch.nn.Parameter(W0.clone())
    with pytest.raises(ValueError, match="does not match"):
        HypergradientDescent(variant="adam").start(run_info(make_opt("sgd", [w]), 1))
    policy = HypergradientDescent()  # auto
    policy.start(run_info(make_opt("adam", [w]), 1))
    assert policy.variant == "adam" and policy.hyper_lr == 1e-7


# ---------------------------------------------------------------------------------------- L4


@pytest.mark.parametrize("grad_average", [0.0, 0.9], ids=["batch-grad", "averaged-grad"])
@pytest.mark.parametrize("kind", ["sgd", "heavy-ball", "adam"])
def test_l4_lr_sequence_matches_hand_computation(kind, grad_average):
    steps, alpha, gamma, tau, b = 15, 0.15, 0.9, 50.0, grad_average
    w = torch.nn.Parameter(W0.clone())
    opt = make_opt(kind, [w])
    policy = L4(alpha=alpha, gamma=gamma, forget_time=tau, grad_average=b)
    lrs = drive(policy, [w], opt, quadratic, steps)

    x, l_min, direction, expected, min_moved = W0.clone(), None, HandDirection(kind), [], False
    avg = torch.zeros_like(x)
    for t in range(1, steps + 1):
        loss, g = float(0.5 * x @ A @ x), A @ x
        if l_min is None:
            l_min = 0.75 * loss
        elif loss < l_min:
            l_min, min_moved = loss, True
        avg = b * avg + (1 - b) * g
        g_hat = avg / (1 - b**t)  # = g when b == 0
        v = direction(g)
        eta = alpha * (loss - gamma * l_min) / (float(g_hat @ v) + 1e-12)
        eta = max(eta, 0.0)
        l_min *= 1 + 1 / tau
        expected.append(eta)
        x = x - eta * v
    assert lrs == pytest.approx(expected, rel=1e-10, abs=1e-300)
    assert min_moved  # both branches of L_min's update were exercised
    assert torch.allclose(w.detach(), x, rtol=1e-10, atol=1e-12)


def test_l4_rejects_optimizers_it_cannot_read():
    w = torch.nn.Parameter(W0.clone())
    with pytest.raises(UnsupportedOptimizerError, match="RMSprop"):
        L4().start(run_info(torch.optim.RMSprop([w]), 1))


# ------------------------------------------------------------------------- update directions


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.0),
        lambda ps: torch.optim.SGD(ps, lr=0.0, momentum=0.9, dampening=0.2, weight_decay=0.05),
        lambda ps: torch.optim.SGD(ps, lr=0.0, momentum=0.8, nesterov=True, weight_decay=0.05),
        lambda ps: torch.optim.Adam(ps, lr=0.0, weight_decay=0.05),
        lambda ps: torch.optim.Adam(ps, lr=0.0, betas=(0.5, 0.9), amsgrad=True),
        lambda ps: torch.optim.AdamW(ps, lr=0.0, weight_decay=0.1),
    ],
    ids=["sgd", "sgd-momentum-damp-wd", "sgd-nesterov-wd", "adam-wd", "adam-amsgrad", "adamw"],
)
def test_update_direction_is_what_the_optimizer_applies(make):
    gen = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.randn(3, generator=gen, dtype=DT))
    m = torch.nn.Parameter(torch.randn(2, 2, generator=gen, dtype=DT))
    groups = [{"params": [w]}, {"params": [m], "weight_decay": 0.0}]
    opt = make(groups)
    for step, lr in enumerate([0.1, 0.03, 0.2, 0.05]):
        opt.zero_grad()
        (torch.sin(w * (step + 1)).sum() + (m @ w[:2]).pow(3).sum()).backward()
        d = update_direction(opt, [w, m], [w.grad, m.grad])
        before = [w.detach().clone(), m.detach().clone()]
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        for b, p, di in zip(before, [w, m], d):
            torch.testing.assert_close(b - p.detach(), lr * di, rtol=1e-10, atol=1e-14)


# -------------------------------------------------------------------------------------- RTHO

C_TRAIN = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5], [-1.0, 1.5, 0.5]], dtype=DT)
C_VAL = torch.tensor([0.3, -0.7, 1.1], dtype=DT)
M_VAL = torch.tensor([[1.0, 0.5], [-0.5, 2.0]], dtype=DT)
A3 = spd_matrix(3, seed=2)


def train_loss(step, ps):
    """Non-quadratic and different on every step, so the Hessian changes along the run."""
    w, m = ps
    c = C_TRAIN[step % 3]
    return (0.5 * (w - c) @ A3 @ (w - c) + 0.1 * (w**4).sum()
            + 0.5 * ((m @ w[:2] - c[1:]) ** 2).sum() + 0.2 * torch.cos(m).sum())


def val_loss(ps):
    w, m = ps
    return 0.5 * ((w - C_VAL) ** 2).sum() + 0.5 * ((m - M_VAL) ** 2).sum() + torch.sin(w).sum()


SGD_CONFIGS = {
    "plain": dict(),
    "plain-wd": dict(weight_decay=0.05),
    "heavy-ball": dict(momentum=0.9),
    "heavy-ball-damp-wd": dict(momentum=0.9, dampening=0.3, weight_decay=0.05),
    "nesterov-wd": dict(momentum=0.8, nesterov=True, weight_decay=0.05),
}


def rtho_start():
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(3, generator=gen, dtype=DT), torch.randn(2, 2, generator=gen, dtype=DT)]


def sgd_on(params, config):
    # two groups, the second without weight decay, so per-group settings are exercised
    return torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]], "weight_decay": 0.0}],
                           lr=0.0, **config)


def val_after(eta: float, steps: int, config: dict) -> float:
    """E_val(w_T) after ``steps`` plain torch SGD steps at a fixed LR ``eta``."""
    params = [torch.nn.Parameter(p.clone()) for p in rtho_start()]
    opt = sgd_on(params, config)
    for group in opt.param_groups:
        group["lr"] = eta
    for step in range(steps):
        opt.zero_grad()
        train_loss(step, params).backward()
        opt.step()
    with torch.no_grad():
        return float(val_loss(params))


@pytest.mark.parametrize("config", list(SGD_CONFIGS), ids=list(SGD_CONFIGS))
def test_rtho_hypergradient_matches_finite_differences(config):
    steps, eta, beta = 6, 0.05, 1e-3
    params = [torch.nn.Parameter(p.clone()) for p in rtho_start()]
    opt = sgd_on(params, SGD_CONFIGS[config])
    # The LR stays eta for the first `steps` steps; the first hyper-step is at call `steps`,
    # at w_T, with Z_T = dw_T/d eta.
    policy = RTHO(lr=eta, hyper_lr=beta, update_every=steps)
    lrs = drive(policy, params, opt, train_loss, steps + 1, meta_loss=val_loss)
    assert lrs[:steps] == [eta] * steps

    h = 1e-6
    fd = (val_after(eta + h, steps, SGD_CONFIGS[config])
          - val_after(eta - h, steps, SGD_CONFIGS[config])) / (2 * h)
    assert abs(fd) > 1e-2  # a non-trivial hypergradient
    assert policy.hypergradient == pytest.approx(fd, rel=1e-5)
    # ... and the hyper-step used it: eta_T = eta - beta * dE/d eta
    assert lrs[steps] == pytest.approx(eta - beta * fd, rel=1e-9)


def test_rtho_keeps_the_lr_non_negative_and_capped():
    params = [torch.nn.Parameter(p.clone()) for p in rtho_start()]
    opt = sgd_on(params, SGD_CONFIGS["heavy-ball"])
    lrs = drive(RTHO(lr=0.05, hyper_lr=10.0, max_lr=0.08), params, opt, train_loss, 10,
                meta_loss=val_loss)
    assert all(0.0 <= lr <= 0.08 for lr in lrs)
    assert len(set(lrs)) > 1


def test_rtho_needs_a_meta_split_and_sgd():
    params = [torch.nn.Parameter(p.clone()) for p in rtho_start()]
    with pytest.raises(MissingMetaSplitError, match="meta split"):
        drive(RTHO(), params, sgd_on(params, {}), train_loss, 1)
    with pytest.raises(UnsupportedOptimizerError, match="SGD"):
        RTHO().start(run_info(torch.optim.Adam(params), 1))


# ---------------------------------------------------------------------------------- plugin


def test_plugin_registers_the_three_policies_with_strict_options():
    registry = Registry(strict=True)
    registry._loaded = True  # only this plugin, not whatever entry points are installed
    assert registry.add_plugin(metalr_adaptive, "test:adaptive")
    assert sorted(registry.components["lr_policy"]) == ["hd", "l4", "rtho"]
    hd = registry.components["lr_policy"]["hd"].build(variant="sgdn", lr=0.01)
    assert isinstance(hd, HypergradientDescent) and hd.options.variant == "sgdn"
    assert isinstance(registry.components["lr_policy"]["l4"].build(), L4)
    assert isinstance(registry.components["lr_policy"]["rtho"].build(hyper_lr=0.0), RTHO)
    for name, bad in [("hd", {"lr": 0}), ("hd", {"variant": "rmsprop"}), ("hd", {"lr": 2.0}),
                      ("l4", {"alpha": -1}), ("l4", {"momentum": 0.9}),
                      ("rtho", {"update_every": 0}), ("rtho", {"hyper_lr": -1e-3})]:
        with pytest.raises(pydantic.ValidationError):
            registry.components["lr_policy"][name].build(**bad)
