"""HD, L4 and RTHO (plugin ``metalr_adaptive``) run by the engine, against independent computations.

Each policy trains a small MLP on MNIST-1D (float64) through ``Engine.step``, and what is checked
is the LR the engine applied: ``StepResult.lr``, which a step pre-hook confirms is every param
group's LR when ``optimizer.step()`` runs. The reference is a plain loop written here from the
papers' rules: the same batches, gradients from ``torch.func.grad`` of a functional copy of the
model, and the base optimizers' updates written out as tensor arithmetic. RTHO's tangent
``dw_t / d eta`` is carried by ``torch.func.jvp`` through that hand-written SGD (forward mode,
where the plugin uses double-backward Hessian-vector products and a hand-derived recursion), and
its hypergradient is also held against central finite differences of the validation loss over
the LR of plain torch SGD runs.
"""

from __future__ import annotations

import itertools
import math

import metalr_adaptive
import pydantic
import pytest
import torch
from metalr_adaptive import L4, RTHO, HypergradientDescent, MissingMetaSplitError
from metalr_adaptive.directions import UnsupportedOptimizerError, update_direction
from torch.func import functional_call

from metalr.contracts.protocols import RunInfo
from metalr.contracts.registry import Registry
from metalr.engine.algorithm import Engine, EngineConfig, TrainingDiverged
from metalr.engine.order import DataOrder

pytestmark = pytest.mark.usefixtures("float64")

DT = torch.float64
BATCH = 32  # 380 training samples: 12 batches an epoch


@pytest.fixture(scope="module")
def task(mnist1d_64):
    return mnist1d_64


def make_model(registry, task):
    torch.manual_seed(0)
    return registry.get("model", "mlp").build(task.spec, hidden=[16]).double()


def train_batches(task, n: int, seed: int = 0) -> list:
    """The first ``n`` batches of the engine's data order for ``seed``."""
    return [batch for _, batch in itertools.islice(DataOrder(seed).batches(task, BATCH), n)]


def run_info(opt: torch.optim.Optimizer, steps: int, task=None) -> RunInfo:
    return RunInfo(epochs=1, steps_per_epoch=steps, optimizer=opt, device=torch.device("cpu"),
                   seed=0, task=task)


def engine_lrs(task, model, opt, policy, batches, meta_train: bool = True) -> list[float]:
    """Train on ``batches`` with ``Engine.step``; the LRs it applied, one per step.

    ``meta_batch_size`` covers the whole meta split, so ``ctx.meta_grads`` (RTHO) is the gradient
    of the validation loss over all of it, whatever order the meta generator draws.
    """
    config = EngineConfig(epochs=1, batch_size=BATCH, meta_train=meta_train,
                          meta_batch_size=len(task.splits["meta"][1]), eval_splits=())
    engine = Engine(task, model, opt, policy, config)
    policy.start(run_info(opt, len(batches), task))
    applied: list[list[float]] = []
    hook = opt.register_step_pre_hook(
        lambda o, args, kwargs: applied.append([g["lr"] for g in o.param_groups]))
    try:
        lrs = [engine.step(batch, step=t).lr for t, batch in enumerate(batches)]
    finally:
        hook.remove()
    assert all(isinstance(lr, float) for lr in lrs)
    assert applied == [[lr] * len(opt.param_groups) for lr in lrs]
    return lrs


# -- the reference: a functional model and the base optimizers written out ----------------------


def functional_loss(model, task, batch):
    names = [n for n, _ in model.named_parameters()]
    return lambda w: task.loss(lambda x: functional_call(model, dict(zip(names, w)), (x,)), batch)


def gradient(model, task, batch, w: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.func.grad(functional_loss(model, task, batch))(list(w)))


def dot(xs, ys) -> float:
    return float(sum((x * y).sum() for x, y in zip(xs, ys, strict=True)))


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
    """The direction ``d`` of ``w <- w - lr * d`` of each optimizer of :func:`make_opt`."""

    def __init__(self, kind: str):
        self.kind, self.t, self.u, self.m, self.v = kind, 0, None, None, None

    def __call__(self, g: list[torch.Tensor]) -> list[torch.Tensor]:
        self.t += 1
        if self.kind == "sgd":
            return list(g)
        if self.kind in ("heavy-ball", "sgdn"):  # torch's first momentum step copies g
            self.u = list(g) if self.u is None else [0.9 * u + gi for u, gi in zip(self.u, g)]
            return self.u if self.kind == "heavy-ball" else [
                gi + 0.9 * u for gi, u in zip(g, self.u)]
        zero = [torch.zeros_like(gi) for gi in g]
        self.m = [0.9 * m + 0.1 * gi for m, gi in zip(self.m or zero, g)]
        self.v = [0.999 * v + 0.001 * gi * gi for v, gi in zip(self.v or zero, g)]
        b1, b2 = 1 - 0.9**self.t, 1 - 0.999**self.t
        return [m / b1 / ((v / b2).sqrt() + 1e-8) for m, v in zip(self.m, self.v)]


def assert_weights(model, w):
    for p, r in zip(model.parameters(), w, strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------- HD


def hd_reference(model, task, batches, kind, lr0, beta, max_lr):
    """Baydin et al. (2018): a_t = clip(a_{t-1} + beta <g_t, d_{t-1}>, 0, max_lr), where d_{t-1}
    is the direction the optimizer applied last step (for SGD, -dL_t/da_{t-1} = <g_t, g_{t-1}>)."""
    w = [p.detach().clone() for p in model.parameters()]
    a, prev, direction, lrs = lr0, None, HandDirection(kind), []
    for batch in batches:
        g = gradient(model, task, batch, w)
        if prev is not None:
            a = min(max(a + beta * dot(g, prev), 0.0), max_lr)
        lrs.append(a)
        prev = direction(g)
        w = [wi - a * di for wi, di in zip(w, prev)]
    return lrs, w


@pytest.mark.parametrize(
    ("variant", "lr0", "beta"), [("sgd", 0.05, 0.01), ("sgdn", 0.01, 0.002), ("adam", 0.01, 1e-4)]
)
def test_hd_lr_sequence_matches_hand_computation(registry, task, variant, lr0, beta):
    model, batches = make_model(registry, task), train_batches(task, 10)
    expected, w = hd_reference(model, task, batches, variant, lr0, beta, 10.0)
    opt = make_opt(variant, model.parameters())
    policy = HypergradientDescent(variant=variant, lr=lr0, hyper_lr=beta, max_lr=10.0)
    lrs = engine_lrs(task, model, opt, policy, batches)
    assert lrs == pytest.approx(expected, rel=1e-9, abs=0)
    assert max(expected) - min(expected) > 1e-2 * lr0  # the rule really moved the LR
    assert_weights(model, w)


def test_hd_clamps_to_max_lr_and_never_goes_negative(registry, task):
    model, batches = make_model(registry, task), train_batches(task, 12)
    lr0, beta, cap = 0.1, 10.0, 1.0
    expected, w = hd_reference(model, task, batches, "sgd", lr0, beta, cap)
    lrs = engine_lrs(task, model, make_opt("sgd", model.parameters()),
                     HypergradientDescent(lr=lr0, hyper_lr=beta, max_lr=cap), batches)
    assert lrs == pytest.approx(expected, rel=1e-9, abs=0)
    assert cap in lrs  # the hypergradient pushed it to the cap
    assert 0.0 in lrs  # ... and, past the stable LR, down to zero
    assert_weights(model, w)


def test_hd_raises_on_a_non_finite_lr(registry, task):
    model, batches = make_model(registry, task), train_batches(task, 3)
    x, y = batches[1]
    batches[1] = (x * math.inf, y)  # a batch whose loss, and so whose hypergradient, is NaN
    opt = make_opt("sgd", model.parameters())
    with pytest.raises(TrainingDiverged, match=r"hd: the LR became nan at step 1"):
        engine_lrs(task, model, opt, HypergradientDescent(lr=0.1), batches)


def test_hd_variant_must_match_the_optimizer():
    w = torch.nn.Parameter(torch.zeros(4, dtype=DT))
    with pytest.raises(ValueError, match="does not match"):
        HypergradientDescent(variant="adam").start(run_info(make_opt("sgd", [w]), 1))
    policy = HypergradientDescent()  # auto
    policy.start(run_info(make_opt("adam", [w]), 1))
    assert policy.variant == "adam" and policy.hyper_lr == 1e-7


# ---------------------------------------------------------------------------------------- L4


@pytest.mark.parametrize("grad_average", [0.0, 0.9], ids=["batch-grad", "averaged-grad"])
@pytest.mark.parametrize("kind", ["sgd", "heavy-ball", "adam"])
def test_l4_lr_sequence_matches_hand_computation(registry, task, kind, grad_average):
    """Rolinek & Martius (2018): eta_t = alpha (L_t - gamma L_min) / <g_hat_t, v_t>, v_t the
    optimizer's direction, g_hat_t the bias-corrected average of the batch gradients (decay b),
    L_min = min(L_min, L_t) (starting at 0.75 L_0), then L_min *= 1 + 1/tau."""
    steps, alpha, gamma, tau, b = 20, 0.15, 0.9, 50.0, grad_average
    model, batches = make_model(registry, task), train_batches(task, steps)

    w = [p.detach().clone() for p in model.parameters()]
    l_min, direction, expected, min_moved = None, HandDirection(kind), [], False
    avg = [torch.zeros_like(wi) for wi in w]
    for t, batch in enumerate(batches, start=1):
        loss = float(functional_loss(model, task, batch)(w))
        g = gradient(model, task, batch, w)
        if l_min is None:
            l_min = 0.75 * loss
        elif loss < l_min:
            l_min, min_moved = loss, True
        avg = [b * a + (1 - b) * gi for a, gi in zip(avg, g)]
        g_hat = [a / (1 - b**t) for a in avg]  # = g when b == 0
        v = direction(g)
        eta = max(alpha * (loss - gamma * l_min) / (dot(g_hat, v) + 1e-12), 0.0)
        l_min *= 1 + 1 / tau
        expected.append(eta)
        w = [wi - eta * vi for wi, vi in zip(w, v)]

    opt = make_opt(kind, model.parameters())
    policy = L4(alpha=alpha, gamma=gamma, forget_time=tau, grad_average=b)
    lrs = engine_lrs(task, model, opt, policy, batches)
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert min_moved  # both branches of L_min's update were exercised
    assert len(set(lrs)) == steps
    assert_weights(model, w)


def test_l4_rejects_optimizers_it_cannot_read():
    w = torch.nn.Parameter(torch.zeros(4, dtype=DT))
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

SGD_CONFIGS = {
    "plain": dict(),
    "plain-wd": dict(weight_decay=0.05),
    "heavy-ball": dict(momentum=0.9),
    "heavy-ball-damp-wd": dict(momentum=0.9, dampening=0.3, weight_decay=0.05),
    "nesterov-wd": dict(momentum=0.8, nesterov=True, weight_decay=0.05),
}


def sgd_on(model, config: dict) -> torch.optim.SGD:
    """Two groups, the biases without weight decay, so per-group settings are exercised."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    return torch.optim.SGD([{"params": weights}, {"params": biases, "weight_decay": 0.0}],
                           lr=0.0, **config)


def val_loss(model, task):
    """The validation loss E_val: the whole meta split."""
    return functional_loss(model, task, task.splits["meta"])


def hand_sgd_step(model, task, config: dict):
    """torch.optim.SGD's step written out: ``(w, buf, eta) -> (w', buf')`` on one batch."""
    mu, damp = config.get("momentum", 0.0), config.get("dampening", 0.0)
    decays = [config.get("weight_decay", 0.0) if n.endswith("weight") else 0.0
              for n, _ in model.named_parameters()]

    def step(batch, first: bool):
        loss = functional_loss(model, task, batch)

        def f(w, buf, eta):
            g = torch.func.grad(loss)(w)
            new_w, new_buf = [], []
            for wi, bi, gi, wd in zip(w, buf, g, decays):
                d = gi + wd * wi
                if mu:  # the first momentum step copies the gradient
                    bi = d if first else mu * bi + (1 - damp) * d
                    d = d + mu * bi if config.get("nesterov") else bi
                new_w.append(wi - eta * d)
                new_buf.append(bi)
            return new_w, new_buf

        return f

    return step


def rtho_reference(model, task, batches, config, eta, beta, every=1, max_lr=None):
    """Franceschi et al. (2017), real time: every ``every`` steps,
    eta <- clip(eta - beta <grad E_val(w_t), Z_t>, 0, max_lr) with Z_t = dw_t/d eta, the tangent
    of the run so far (every step's LR moved by the same d eta), by forward mode."""
    step = hand_sgd_step(model, task, config)
    w = [p.detach().clone() for p in model.parameters()]
    buf, z, z_buf = ([torch.zeros_like(wi) for wi in w] for _ in range(3))
    lrs, hypergradients = [], []
    for t, batch in enumerate(batches):
        if t > 0 and t % every == 0:
            hypergradients.append(dot(torch.func.grad(val_loss(model, task))(w), z))
            eta = max(eta - beta * hypergradients[-1], 0.0)
            eta = eta if max_lr is None else min(eta, max_lr)
        lrs.append(eta)
        (w, buf), (z, z_buf) = torch.func.jvp(
            step(batch, first=t == 0), (w, buf, torch.tensor(eta)),
            (z, z_buf, torch.tensor(1.0)))
    return lrs, hypergradients, w


@pytest.mark.parametrize("config", list(SGD_CONFIGS), ids=list(SGD_CONFIGS))
def test_rtho_lr_sequence_matches_forward_mode_reference(registry, task, config):
    steps, eta, beta = 8, 0.05, 0.02
    model, batches = make_model(registry, task), train_batches(task, steps)
    expected, hypergradients, w = rtho_reference(model, task, batches, SGD_CONFIGS[config],
                                                 eta, beta)
    opt = sgd_on(model, SGD_CONFIGS[config])
    lrs = engine_lrs(task, model, opt, RTHO(lr=eta, hyper_lr=beta), batches)
    assert lrs == pytest.approx(expected, rel=1e-8, abs=0)
    assert max(abs(h) for h in hypergradients) > 1e-2  # non-trivial hypergradients ...
    assert max(lrs) - min(lrs) > 1e-2 * eta  # ... that moved the LR
    assert_weights(model, w)


def val_after(model0, task, batches, eta: float, config: dict) -> float:
    """E_val(w_T) after plain torch SGD steps at a fixed LR ``eta``, from ``model0``'s weights."""
    import copy

    model = copy.deepcopy(model0)
    opt = sgd_on(model, config)
    for group in opt.param_groups:
        group["lr"] = eta
    for batch in batches:
        opt.zero_grad()
        task.loss(model, batch).backward()
        opt.step()
    with torch.no_grad():
        return float(task.loss(model, task.splits["meta"]))


@pytest.mark.parametrize("config", ["plain-wd", "heavy-ball-damp-wd", "nesterov-wd"])
def test_rtho_hypergradient_matches_finite_differences(registry, task, config):
    """The LR stays eta for the first T steps; the first hyper-step is at step T, at w_T, with
    Z_T = dw_T/d eta: the LR the engine applies there is eta - beta dE_val(w_T)/d eta."""
    steps, eta, beta = 6, 0.05, 0.01
    model, batches = make_model(registry, task), train_batches(task, steps + 1)
    h = 1e-6
    fd = (val_after(model, task, batches[:steps], eta + h, SGD_CONFIGS[config])
          - val_after(model, task, batches[:steps], eta - h, SGD_CONFIGS[config])) / (2 * h)
    policy = RTHO(lr=eta, hyper_lr=beta, update_every=steps)
    lrs = engine_lrs(task, model, sgd_on(model, SGD_CONFIGS[config]), policy, batches)
    assert lrs[:steps] == [eta] * steps
    assert abs(fd) > 1e-2  # a non-trivial hypergradient
    assert policy.hypergradient == pytest.approx(fd, rel=1e-5)
    assert lrs[steps] == pytest.approx(eta - beta * fd, rel=1e-7)


def test_rtho_keeps_the_lr_non_negative_and_capped(registry, task):
    steps, eta, beta, cap = 10, 0.05, 1.0, 0.08
    config = SGD_CONFIGS["heavy-ball"]
    model, batches = make_model(registry, task), train_batches(task, steps)
    expected, _, w = rtho_reference(model, task, batches, config, eta, beta, every=2, max_lr=cap)
    policy = RTHO(lr=eta, hyper_lr=beta, max_lr=cap, update_every=2)
    lrs = engine_lrs(task, model, sgd_on(model, config), policy, batches)
    assert lrs == pytest.approx(expected, rel=1e-8, abs=0)
    assert cap in lrs and all(0.0 <= lr <= cap for lr in lrs)
    assert lrs[1] == lrs[0] and lrs[3] == lrs[2]  # hyper-steps every 2 steps only
    assert_weights(model, w)


def test_rtho_needs_a_meta_split_and_sgd(registry, task):
    model, batches = make_model(registry, task), train_batches(task, 1)
    opt = sgd_on(model, {})
    with pytest.raises(MissingMetaSplitError, match="meta split"):
        engine_lrs(task, model, opt, RTHO(), batches, meta_train=False)
    with pytest.raises(UnsupportedOptimizerError, match="SGD"):
        RTHO().start(run_info(torch.optim.Adam(model.parameters()), 1))


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
