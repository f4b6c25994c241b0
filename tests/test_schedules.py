"""The hand-designed schedules (plugin ``metalr_schedules``) against closed forms.

Each policy is driven the way the engine drives it: ``start(RunInfo)``, then per step a real
StepContext after backward, ``lr = policy.lr(ctx)`` written into every param group of a real
optimizer before ``optimizer.step()``, and ``end_epoch(epoch, metrics)`` after each epoch. The
expected sequences are computed here without torch's schedulers.
"""

from __future__ import annotations

import math

import pydantic
import pytest
import torch
from metalr_schedules import (
    SGDR,
    WSD,
    CosineLR,
    ExponentialLR,
    MultiStepLR,
    PlateauLR,
    default_milestones,
)
from metalr_schedules.torch_schedules import (
    ExponentialOptions,
    MultiStepOptions,
    PlateauOptions,
    SGDROptions,
    WSDOptions,
)

from metalr.contracts.protocols import LRPolicy, RunInfo, StepContext
from metalr.engine.algorithm import Engine, EngineConfig


def drive(policy, epochs: int, steps_per_epoch: int, metrics=None) -> list[list[float]]:
    """Run ``policy`` over a tiny least-squares problem; the LRs of every step, by epoch.

    ``metrics(epoch)`` gives the end-of-epoch metrics (default: the batch loss only).
    """
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([w], lr=0.0)
    policy.start(RunInfo(epochs=epochs, steps_per_epoch=steps_per_epoch, optimizer=opt,
                         device=torch.device("cpu"), seed=0, task=None))
    lrs, step = [], 0
    for epoch in range(epochs):
        epoch_lrs = []
        for _ in range(steps_per_epoch):
            opt.zero_grad()
            loss = 0.5 * (w**2).sum()
            loss.backward()
            ctx = StepContext(step=step, epoch=epoch, loss=loss.detach(), loss_input=loss.detach(),
                              params=[w], grads=[w.grad], optimizer=opt,
                              batch_loss=lambda ps: 0.5 * (ps[0] ** 2).sum())
            lr = policy.lr(ctx)
            assert isinstance(lr, float)
            epoch_lrs.append(lr)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            step += 1
        lrs.append(epoch_lrs)
        policy.end_epoch(epoch, metrics(epoch) if metrics else {"train_batch_loss": 1.0})
    return lrs


def flat(lrs: list[list[float]]) -> list[float]:
    return [lr for epoch in lrs for lr in epoch]


def test_exponential_is_lr_times_gamma_to_the_epoch():
    lrs = flat(drive(ExponentialLR(lr=0.1, gamma=0.9), epochs=5, steps_per_epoch=3))
    assert lrs == pytest.approx([0.1 * 0.9**e for e in range(5) for _ in range(3)], rel=1e-12)


def test_multistep_cuts_after_each_milestone():
    lrs = flat(drive(MultiStepLR(lr=0.5, milestones=[2, 4], factor=0.1), 6, steps_per_epoch=2))
    expected = [0.5 * 0.1 ** sum(e >= m for m in (2, 4)) for e in range(6) for _ in range(2)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_multistep_default_scales_the_papers_schedule_to_the_run():
    assert default_milestones(200) == [60, 120, 180]  # the paper: /10 every 60 of 200 epochs
    assert default_milestones(10) == [3, 6, 9]
    assert default_milestones(1) == []
    lrs = drive(MultiStepLR(lr=0.1), epochs=10, steps_per_epoch=1)
    assert flat(lrs) == pytest.approx([0.1 * 0.1 ** min(e // 3, 3) for e in range(10)], rel=1e-12)


def sgdr_closed_form(t: float, lr: float, T_0: int, T_mult: int, eta_min: float) -> float:
    """eta_min + (lr - eta_min)(1 + cos(pi T_cur / T_i)) / 2, periods found by walking them."""
    T_i, T_cur = T_0, t
    while T_cur >= T_i:
        T_cur -= T_i
        T_i *= T_mult
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * T_cur / T_i)) / 2


@pytest.mark.parametrize(("T_0", "T_mult"), [(1, 2), (2, 1), (1, 3)])
def test_sgdr_follows_the_closed_form_per_iteration(T_0, T_mult):
    epochs, steps = 7, 4
    lrs = flat(drive(SGDR(lr=0.1, T_0=T_0, T_mult=T_mult, eta_min=1e-3), epochs, steps))
    expected = [sgdr_closed_form(s / steps, 0.1, T_0, T_mult, 1e-3) for s in range(epochs * steps)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    # It restarts: back to the full LR at every period boundary, and it anneals within a period.
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[T_0 * steps] == pytest.approx(0.1)
    assert lrs[1] < lrs[0]


def test_sgdr_defaults_are_the_papers():
    opts = SGDROptions()
    assert (opts.lr, opts.T_0, opts.T_mult, opts.eta_min) == (0.1, 10, 2, 1e-5)


def test_cosine_anneals_once_over_the_whole_run():
    epochs, steps, lr, eta_min = 3, 5, 0.2, 0.01
    lrs = flat(drive(CosineLR(lr=lr, eta_min=eta_min), epochs, steps))
    total = epochs * steps
    expected = [eta_min + (lr - eta_min) * (1 + math.cos(math.pi * s / total)) / 2
                for s in range(total)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt"])
def test_wsd_warms_up_holds_and_decays_in_its_shape(shape):
    epochs, steps, lr = 4, 5, 0.3  # 20 steps: 2 of warm-up (10%), 6 of decay (30%)
    lrs = flat(drive(WSD(lr=lr, warmup=0.1, decay=0.3, shape=shape), epochs, steps))
    decay = {"linear": lambda x: 1 - x, "cosine": lambda x: (1 + math.cos(math.pi * x)) / 2,
             "sqrt": lambda x: 1 - math.sqrt(x)}[shape]
    expected = [lr / 2, lr] + [lr] * 12 + [lr * decay(k / 7) for k in range(1, 7)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[-1] > 0 and all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_wsd_defaults_are_mlrsnets_cooldown_on_a_constant_lr():
    """No warm-up, the last 20% linear to 0: the same multiples as MLR-SNet's cool-down, so a
    tuned WSD is the control for the learned schedule with nothing learned."""
    from metalr_mlrsnet.base import cooldown_factor

    epochs, steps, lr = 6, 7, 0.05
    lrs = flat(drive(WSD(lr=lr), epochs, steps))
    total = epochs * steps
    assert lrs == pytest.approx([lr * cooldown_factor(s, total, 0.2) for s in range(total)],
                                rel=1e-12)


def test_wsd_phases_must_fit_the_run():
    with pytest.raises(pydantic.ValidationError, match="exceed the run"):
        WSDOptions(warmup=0.5, decay=0.6)
    with pytest.raises(pydantic.ValidationError):
        WSD(shape="step")


def test_plateau_divides_by_four_after_a_non_improving_epoch():
    losses = [1.0, 0.9, 0.95, 0.8, 0.8, 0.85]
    lrs = drive(PlateauLR(lr=20.0), epochs=6, steps_per_epoch=2,
                metrics=lambda e: {"meta_loss": losses[e], "test_loss": 0.0})
    # By hand: the LR of epoch e+1 is cut by 4 whenever epoch e did not beat the best so far
    # by the relative threshold 1e-4 (patience 0).
    expected, lr, best = [], 20.0, math.inf
    for loss in losses:
        expected += [lr, lr]
        if loss < best * (1 - 1e-4):
            best = loss
        else:
            lr /= 4
    assert flat(lrs) == pytest.approx(expected, rel=1e-12)
    assert [e[0] for e in lrs] == [20.0, 20.0, 20.0, 5.0, 5.0, 1.25]


def test_plateau_can_watch_an_accuracy_and_skips_unevaluated_epochs():
    accs = {0: 0.5, 2: 0.4, 3: 0.6}  # epoch 1 not evaluated (eval_every > 1)
    metrics = lambda e: {"meta_accuracy": accs[e]} if e in accs else {"train_batch_loss": 1.0}
    lrs = drive(PlateauLR(lr=1.0, monitor="meta_accuracy", mode="max"), 4, 1, metrics)
    assert flat(lrs) == [1.0, 1.0, 1.0, 0.25]


def test_plateau_names_a_metric_that_never_came():
    with pytest.raises(KeyError, match="meta_los.*never reported.*meta_loss"):
        drive(PlateauLR(monitor="meta_los"), 2, 1, metrics=lambda e: {"meta_loss": 1.0})


def test_policies_restart_cleanly_and_refuse_lr_before_start():
    policy = ExponentialLR(lr=0.1, gamma=0.5)
    assert isinstance(policy, LRPolicy)
    first = drive(policy, 3, 2)
    assert drive(policy, 3, 2) == first
    for fresh in (ExponentialLR(), SGDR(), CosineLR(), PlateauLR(), MultiStepLR()):
        with pytest.raises(RuntimeError, match="start"):
            fresh.lr(None)


@pytest.mark.parametrize(
    ("model", "bad"),
    [
        (ExponentialOptions, {"lr": 0.0}),
        (ExponentialOptions, {"gamma": 1.5}),
        (ExponentialOptions, {"gama": 0.9}),
        (MultiStepOptions, {"milestones": [60, 30]}),
        (MultiStepOptions, {"factor": 1.0}),
        (SGDROptions, {"T_0": 0}),
        (SGDROptions, {"lr": 1e-3, "eta_min": 1e-2}),
        (PlateauOptions, {"mode": "up"}),
        (PlateauOptions, {"patience": -1}),
    ],
)
def test_options_reject_bad_values(model, bad):
    with pytest.raises(pydantic.ValidationError):
        model(**bad)


def test_registered_with_schemas(registry):
    for name in ("fixed", "exponential", "multistep", "sgdr", "cosine", "plateau"):
        component = registry.get("lr_policy", name)
        assert component.options is not None
        assert isinstance(component.build(), LRPolicy)
    assert registry.get("lr_policy", "plateau").build().factor == 0.25


def test_engine_applies_the_schedule_to_the_real_optimizer(registry):
    task = registry.get("task", "digits").build()
    task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    model = registry.get("model", "cnn-digits").build(task.spec, channels=[4])
    optimizer = registry.get("optimizer", "sgd").build(model.parameters())
    policy = registry.get("lr_policy", "exponential").build(lr=0.1, gamma=0.5)
    seen = []
    original_step = optimizer.step

    def step(*args, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return original_step(*args, **kwargs)

    optimizer.step = step
    cfg = EngineConfig(epochs=2, batch_size=256, eval_splits=("meta",))
    history = Engine(task, model, optimizer, policy, cfg).fit()
    steps = task.num_train_batches(256)
    expected = [0.1] * steps + [0.05] * steps
    assert history.lrs == pytest.approx(expected) and seen == pytest.approx(expected)
