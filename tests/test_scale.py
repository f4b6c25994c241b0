"""Learned schedules that work untuned: the LR probe, the learned scale, the meta-update budget,
the cool-down, and one loader for saved nets whose recipe gamma always wins (issue 7)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from metalr.contracts.protocols import ModelSpec, RunInfo
from metalr.engine.algorithm import Engine, EngineConfig
from metalr.engine.probe import HALF_DECADE, decade_grid, probe_lr, probe_steps
from metalr.engine.weights import (
    WeightsError,
    load_meta_learner,
    read_meta_learner,
    save_meta_learner,
)


class Quadratic:
    """f(w) = h/2 |w - 1|^2 with noiseless batches: k SGD steps from w = 0 leave
    f_k = h/2 (1 - lr h)^(2k) d, smallest at lr = 1/h exactly."""

    spec = ModelSpec((1,), 1)
    loss_scale, default_gamma, metric, higher_is_better = 1.0, 1.0, "loss", False

    def __init__(self, h: float):
        self.h = h

    def setup(self, seed: int, device: torch.device) -> None:
        pass

    def num_train_batches(self, batch_size: int) -> int:
        return 4

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[None]:
        return iter([None] * 4)

    def meta_batch(self, batch_size: int, generator: torch.Generator) -> None:
        return None

    def loss(self, model, batch) -> torch.Tensor:
        return 0.5 * self.h * ((model(None) - 1) ** 2).sum()

    def evaluate(self, model, split):
        return {"loss": float(self.loss(model, None))}


class Point(nn.Module):
    def __init__(self, dim: int = 5):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.w


@pytest.mark.parametrize("h", [0.3, 3.0, 30.0, 300.0])
def test_probe_on_a_quadratic(h):
    """On f = h/2 |w - 1|^2 every probe loss has a closed form, f0 (1 - lr h)^(2k): the best grid
    point is the one nearest 1/h, the edge is the last LR climbing from it (half-decades, then a
    quarter) that keeps half the best improvement, always below the divergent 2/h, and the run
    starts at half the edge. The model and the optimizer are left as they were."""
    task, model = Quadratic(h), Point()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    result = probe_lr(task, model, opt, total_steps=400, steps_per_epoch=4, batch_size=1,
                      meta_batch_size=1, seed=0)
    f0, k = 0.5 * h * 5, result.steps_per_point

    def closed(lr):
        return f0 * (1 - lr * h) ** (2 * k)

    for lr, loss in result.losses.items():
        if math.isfinite(loss):
            assert loss == pytest.approx(closed(lr), rel=1e-3, abs=1e-6)
    nearest = min(result.losses, key=lambda lr: abs(math.log(lr * h)))
    assert result.best == pytest.approx(nearest)
    assert abs(math.log10(result.best * h)) <= 0.25 + 1e-9  # within a quarter decade of 1/h
    keep = f0 - 0.5 * (f0 - closed(result.best))
    edge = result.best
    while closed(edge * HALF_DECADE) <= keep:
        edge *= HALF_DECADE
    if closed(edge * 10 ** 0.25) <= keep:
        edge *= 10 ** 0.25
    assert result.edge == pytest.approx(edge) and result.edge < 2 / h
    assert result.lr == pytest.approx(result.edge / 2)
    assert result.initial_loss == pytest.approx(f0)
    assert torch.equal(model.w, torch.zeros(5))  # the run starts where it would have
    assert not opt.state  # the real optimizer was never stepped


class Saturating(Quadratic):
    """(1 - tanh w)^2: a step far enough to the right is as good as the best, never worse."""

    def loss(self, model, batch) -> torch.Tensor:
        return ((1 - torch.tanh(model(None))) ** 2).sum()


def test_probe_climbs_to_the_edge_where_larger_steps_keep_working():
    task, model = Saturating(1.0), Point()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    result = probe_lr(task, model, opt, total_steps=400, steps_per_epoch=4, batch_size=1,
                      meta_batch_size=1, seed=0)
    keep = result.initial_loss - 0.5 * (result.initial_loss - result.losses[result.best])
    climbed = [lr for lr in result.losses if result.best <= lr <= result.edge]
    assert result.edge >= 10 * result.best  # it climbed past the best
    assert all(result.losses[lr] <= keep for lr in climbed)
    assert result.lr == pytest.approx(result.edge / 2)


def test_adam_probe_is_longer_and_starts_at_its_best():
    """Adam fails late, not within a short probe: three times the steps per point, no edge
    climb (every point measured is on the grid or next to the best), and the start is the best
    point; the edge is reported from the points measured."""
    task, model = Quadratic(3.0), Point()
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    result = probe_lr(task, model, opt, total_steps=400, steps_per_epoch=4, batch_size=1,
                      meta_batch_size=1, seed=0)
    assert result.steps_per_point == 3 * probe_steps(400, 4)
    assert result.best == min(result.losses, key=result.losses.__getitem__)
    assert result.lr == result.best
    keep = result.initial_loss - 0.5 * (result.initial_loss - result.losses[result.best])
    assert result.edge == max(lr for lr, v in result.losses.items() if v <= keep)
    assert len(result.losses) <= len(decade_grid(opt)) + 3  # grid, extension, two half-decades
    assert torch.equal(model.w, torch.zeros(5)) and not opt.state


class NoisyPoint(Point):
    """A point whose output is dropped out: the probe's losses depend on the global generator."""

    def forward(self, x):
        return nn.functional.dropout(self.w, 0.3, training=self.training)


def test_probe_does_not_depend_on_the_global_generator_before_it():
    """Whatever drew from the global generator before the probe (a policy's initialisation, a
    cell with more parameters) changes neither its losses nor its LR; the generator is given
    back where it stood, so the run after it is unchanged too."""
    results, after = [], []
    for before in (0, 1):
        torch.manual_seed(before)
        model = NoisyPoint()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        state = torch.get_rng_state()
        results.append(probe_lr(Quadratic(3.0), model, opt, total_steps=400, steps_per_epoch=4,
                                batch_size=1, meta_batch_size=1, seed=5))
        assert torch.equal(torch.get_rng_state(), state)
        after.append(float(torch.rand(())))
    assert results[0].losses == results[1].losses and results[0].lr == results[1].lr
    assert after[0] != after[1]  # the two runs' own draws still differ: nothing was reseeded
    other = probe_lr(Quadratic(3.0), NoisyPoint(), torch.optim.SGD(NoisyPoint().parameters(),
                     lr=0.0), total_steps=400, steps_per_epoch=4, batch_size=1, meta_batch_size=1,
                     seed=6)
    assert other.losses != results[0].losses  # the run's seed does pick the draws


def test_probe_grid_follows_the_optimizer_family():
    w = [nn.Parameter(torch.zeros(1))]
    plain = decade_grid(torch.optim.SGD(w, lr=0.1))
    heavy = decade_grid(torch.optim.SGD(w, lr=0.1, momentum=0.9))
    adam = decade_grid(torch.optim.Adam(w))
    assert heavy == pytest.approx([lr * 0.1 for lr in plain])  # 1/(1 - mu) longer steps
    assert max(adam) <= 0.1 < max(plain)


def test_probe_extends_past_an_edge():
    """1/h far above the decades: the grid extends once, then refines around the new best."""
    task, model = Quadratic(1 / 1000), Point()
    result = probe_lr(task, model, torch.optim.SGD(model.parameters(), lr=0.0),
                      total_steps=400, steps_per_epoch=4, batch_size=1, meta_batch_size=1,
                      seed=0)
    assert result.best == pytest.approx(1000.0)
    assert result.at_edge


def _digits(registry, seed=0):
    task = registry.get("task", "digits").build(meta_size=200)
    task.setup(seed, torch.device("cpu"))
    return task


def _engine(registry, task, opt_name, policy, epochs, seed=0, **opt_options):
    torch.manual_seed(seed)
    model = registry.get("model", "cnn-digits").build(task.spec)
    opt = registry.get("optimizer", opt_name).build(model.parameters(), **opt_options)
    return Engine(task, model, opt, policy, EngineConfig(epochs=epochs, seed=seed))


@pytest.mark.parametrize("opt_name,options", [
    ("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.9, "nesterov": True}), ("adam", {}),
    ("adamw", {}),
])
def test_default_scale_comes_from_the_probe_of_the_run(registry, opt_name, options):
    task = _digits(registry)
    policy = registry.get("lr_policy", "mlrsnet").build()
    engine = _engine(registry, task, opt_name, policy, epochs=1, **options)
    history = engine.fit()
    probe = history.probe
    assert probe is not None and policy.probe is probe
    # the scale starts at the probe's LR and moves only by the recheck part-way in
    moved = 1.0
    if history.recheck is not None:
        moved = history.recheck.lr / history.lrs[history.recheck_step - 1]
    assert float(policy.ref_lr) == pytest.approx(probe.lr * moved, rel=1e-6)
    # the first LR is the net's output at the start: gamma * sigmoid(~0) = the start LR
    assert history.lrs[0] == pytest.approx(probe.lr, rel=0.25)
    if opt_name.startswith("adam"):
        assert probe.lr <= 0.1  # Adam's scale, not SGD's: gamma 1 (LR 0.5) diverges at step 1


def test_explicit_gamma_is_never_probed_or_learned(registry):
    task = _digits(registry)
    policy = registry.get("lr_policy", "mlrsnet").build(gamma=0.02)
    history = _engine(registry, task, "sgd", policy, epochs=1, momentum=0.9).fit()
    assert history.probe is None
    assert float(policy.gamma) == pytest.approx(0.02)
    assert not policy.learn_scale and max(history.lrs) <= 0.02


def test_paper_preset_is_the_papers_settings(registry):
    task = _digits(registry)
    policy = registry.get("lr_policy", "mlrsnet").build(preset="paper")
    engine = _engine(registry, task, "sgd", policy, epochs=2, momentum=0.9)
    history = engine.fit()
    assert history.probe is None and float(policy.gamma) == task.default_gamma == 1.0
    assert policy.cooldown == 0 and not policy.learn_scale
    assert history.t_val == task.num_train_batches(128) // 2  # twice an epoch
    assert len(engine.meta_optimizer.param_groups) == 1  # no scale group


def test_short_runs_get_enough_meta_updates_and_a_wrong_scale_moves(registry):
    """A 330-step run meta-updates at least 100 times before its cool-down, and a scale 30x too
    low is raised by the learned log(gamma) within the run."""
    task = _digits(registry)
    policy = registry.get("lr_policy", "mlrsnet").build(gamma=2e-3, learn_scale=True)
    engine = _engine(registry, task, "sgd", policy, epochs=30, momentum=0.9)
    steps = 30 * task.num_train_batches(128)
    run = RunInfo(30, task.num_train_batches(128), engine.optimizer, torch.device("cpu"), 0, task)
    policy.total_steps = steps
    t_val = policy.meta_period(run)
    active = sum(policy.meta_active(s) for s in range(steps))
    assert active == round(0.8 * steps) and len(range(0, active, t_val)) >= 100
    start = float(policy.gamma)
    history = engine.fit()
    assert history.t_val == t_val
    assert float(policy.gamma) > 3 * start  # the one-step hypergradient raised it


def test_cooldown_decays_to_zero_with_theta_frozen(registry):
    task = _digits(registry)
    policy = registry.get("lr_policy", "mlrsnet").build(gamma=0.05, learn_scale=True,
                                                        cooldown=0.5)
    engine = _engine(registry, task, "sgd", policy, epochs=2, momentum=0.9)
    theta = {}

    def on_epoch(epoch, metrics, history):
        theta[epoch] = [p.detach().clone() for p in policy.parameters()]

    history = engine.fit(on_epoch=on_epoch)
    steps = len(history.lrs)
    assert steps == 2 * task.num_train_batches(128)
    # the second half is the cool-down: no meta-update changed theta in it
    assert all(torch.equal(a, b) for a, b in zip(theta[0], theta[1]))
    length = round(0.5 * steps)
    for s in range(steps - length, steps):
        assert policy.envelope(s, steps) == pytest.approx((steps - s) / (length + 1))
    assert policy.envelope(steps - length - 1, steps) == 1.0
    assert history.lrs[-1] < history.lrs[steps - length - 1] / (length + 1) * 1.5


def test_cooldown_follows_the_horizon(registry):
    """Fractions of the run, so a net transfers to 0.5x or 4x the steps with the same shape."""
    net = registry.get("lr_policy", "mlrsnet").build()
    for total in (50, 100, 400):
        factors = [net.envelope(s, total) for s in range(total)]
        assert sum(f < 1 for f in factors) == round(0.2 * total)
        assert factors[-1] == pytest.approx(1 / (round(0.2 * total) + 1))


# -- one loader; a recipe's gamma wins --------------------------------------------------------

def _trained_net(registry, tmp_path, gamma=0.7):
    net = registry.get("lr_policy", "mlrsnet").build(gamma=gamma, learn_scale=True)
    with torch.no_grad():
        net.out.bias.add_(0.5)
        net.log_gamma.add_(0.1)  # as if meta-training had moved it
    path = save_meta_learner(tmp_path / "net.safetensors", "mlrsnet", net)
    return net, path


def test_a_recipe_gamma_survives_meta_weights(registry, tmp_path):
    source, path = _trained_net(registry, tmp_path)
    _, options, _, _ = read_meta_learner(path)
    assert "gamma" not in options  # the scale lives in the tensors only: nothing to disagree
    into = registry.get("lr_policy", "mlrsnet").build(gamma=0.2)
    load_meta_learner(path, into, policy_name="mlrsnet")
    assert float(into.gamma) == pytest.approx(0.2)
    assert torch.equal(into.out.bias, source.out.bias)  # theta itself did load
    plain = registry.get("lr_policy", "mlrsnet").build()
    load_meta_learner(path, plain, policy_name="mlrsnet")
    assert float(plain.gamma) == pytest.approx(float(source.gamma))  # no gamma: the file's


def test_the_runner_keeps_a_recipe_gamma_with_meta_weights(registry, tmp_path):
    from metalr.recipes.schema import Recipe
    from metalr.running.runner import Runner

    _, path = _trained_net(registry, tmp_path, gamma=3.0)
    recipe = Recipe.model_validate({
        "name": "gamma-wins", "task": {"name": "digits", "options": {"meta_size": 200}},
        "model": {"name": "cnn-digits"}, "train": {"epochs": 1, "seed": 0},
        "methods": {"m": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                          "lr_policy": {"name": "mlrsnet", "options": {"gamma": 0.01}},
                          "meta": {"mode": "meta-test", "weights": str(path)}}},
        "tracking": "none", "output_dir": str(tmp_path / "out")})
    summary = Runner(recipe, progress=False).run()
    (result,) = summary.results
    assert result.status == "FINISHED" and max(result.history.lrs) <= 0.01


def test_loader_errors_name_the_file(registry, tmp_path):
    _, path = _trained_net(registry, tmp_path)
    wide = registry.get("lr_policy", "mlrsnet").build(hidden=8)
    with pytest.raises(WeightsError, match=r"net.safetensors: its tensors do not fit") as err:
        load_meta_learner(path, wide, policy_name="mlrsnet")
    # the option that gives the file's net its shape, named with the recipe's value
    assert "the file's header has hidden: 40 (here 8)" in str(err.value)
    skip = registry.get("lr_policy", "mlrsnet").build(skip=True)
    with pytest.raises(WeightsError, match=r"has skip: False \(here True\)"):
        load_meta_learner(path, skip, policy_name="mlrsnet")
    with pytest.raises(WeightsError, match=r"holds a 'mlrsnet' net, not 'mlp-lr'"):
        load_meta_learner(path, registry.get("lr_policy", "mlp-lr").build(),
                          policy_name="mlp-lr")
    net = load_meta_learner(path, frozen=True)
    assert not any(p.requires_grad for p in net.parameters())


def test_adamw_is_an_optimizer_with_an_exact_virtual_step(registry):
    """Listed, and its differentiable copy is registered (the step itself: test_hypergradient)."""
    import higher.optim

    opt = registry.get("optimizer", "adamw").build([nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 1e-2
    assert type(opt) in higher.optim._opt_mapping


@pytest.mark.parametrize("epochs,expected", [(4, {1, 2, 4}), (2, {1, 2})])
def test_save_phases_follow_the_horizon(registry, tmp_path, epochs, expected):
    """meta.save_phases: 3 saves the nets of the ceiling rule for whatever train.epochs is, so
    shortening a recipe never breaks it (save_epochs: [1, 30, 60] fails validation at 20)."""
    from metalr.recipes.schema import Recipe
    from metalr.running.runner import Runner

    recipe = Recipe.model_validate({
        "name": "phases", "task": {"name": "digits", "options": {"meta_size": 200}},
        "model": {"name": "cnn-digits"}, "train": {"epochs": epochs, "seed": 0},
        "methods": {"m": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                          "lr_policy": {"name": "mlrsnet", "options": {"gamma": 0.05}},
                          "meta": {"save_phases": 3}}},
        "tracking": "none", "output_dir": str(tmp_path / "out")})
    (result,) = Runner(recipe, progress=False).run().results
    saved = {int(tag[5:]) for tag in result.files if tag.startswith("epoch")}
    assert result.status == "FINISHED" and saved == expected and "final" in result.files
