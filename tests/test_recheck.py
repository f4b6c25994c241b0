"""Recovery from a wrong start (issue 18, part 2): the recheck part-way into the run.

MLR-SNet under ``preset: auto`` probes the run's LR again at 10% of the run, from the current
weights and optimizer state (:func:`metalr.engine.recheck.recheck_lr`), and moves its scale when
a far better LR is measured. A start 30x too low (``start_factor``) is moved up on two tasks and
the run ends far above the same run without the recheck; a start that is right is left alone; a
start 10x too high is braked, moved down where it does harm, and restarted from the first
weights where it killed the net (MNIST-1D and digits). What the recheck did is in the history.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from metalr.engine.algorithm import Engine, EngineConfig
from metalr.engine.probe import SIGNAL_FLOOR, probe_steps
from metalr.engine.recheck import recheck_lr


def _run(registry, task_name, task_options, model_name, model_options, opt_name, opt_options,
         epochs, seed, name="mlrsnet", **policy_options):
    task = registry.get("task", task_name).build(**task_options)
    task.setup(seed, torch.device("cpu"))
    torch.manual_seed(seed)
    model = registry.get("model", model_name).build(task.spec, **model_options)
    opt = registry.get("optimizer", opt_name).build(model.parameters(), **opt_options)
    policy = registry.get("lr_policy", name).build(**policy_options)
    engine = Engine(task, model, opt, policy, EngineConfig(epochs=epochs, seed=seed))
    history = engine.fit()
    return history, history.epochs[-1]["test_accuracy"], policy


MLP_SGDM = ("mnist1d", {"meta_size": 500}, "mlp", {"hidden": [100, 100]}, "sgd",
            {"momentum": 0.9, "weight_decay": 5e-4}, 60)
MLP_ADAM = ("mnist1d", {"meta_size": 500}, "mlp", {"hidden": [100, 100]}, "adam", {}, 60)
DIGITS_ADAM = ("digits", {}, "cnn-digits", {}, "adam", {}, 30)


@pytest.mark.parametrize("setting,margin", [
    (MLP_SGDM, 0.05),
    pytest.param(MLP_ADAM, 0.04, marks=pytest.mark.slow),
    pytest.param(DIGITS_ADAM, -0.005, marks=pytest.mark.slow),
], ids=["mnist1d-mlp-sgdm", "mnist1d-mlp-adam", "digits-cnn-adam"])
def test_a_start_30x_too_low_is_moved_up_and_the_run_recovers(registry, setting, margin):
    """Measured over seeds 0-2 (recipes/ablations/recheck-*.yaml, docs/design.md): on the
    MNIST-1D MLP every seed ends 8-14 points above the same run without the mechanisms, with SGD
    momentum and with Adam; digits is easy enough that Adam at 1/30 of its LR still reaches
    96-98%, so there the LR must move and the run must not lose."""
    low, low_acc, _ = _run(registry, *setting, seed=1, start_factor=1 / 30)
    stuck, stuck_acc, _ = _run(registry, *setting, seed=1, start_factor=1 / 30, recheck=0)
    assert stuck.recheck is None and low.recheck is not None
    at = low.recheck_step
    assert at == round(0.1 * len(low.lrs))
    before, after = low.lrs[at - 1], low.lrs[at]
    assert low.recheck.signal and low.recheck.lr / before >= 5  # moved up by a decade or so
    assert after / before >= 5  # and the run's LR followed from the next step on
    assert low.lrs[:at] == stuck.lrs[:at]  # the same run until then
    assert low_acc > stuck_acc + margin


def test_a_right_start_is_left_alone(registry):
    history, _, policy = _run(registry, *MLP_SGDM, seed=1)
    assert history.recheck is not None and not history.recheck.signal
    assert history.recheck.lr == history.lrs[history.recheck_step - 1]
    assert policy.braked == []  # the brake never fired


@pytest.mark.parametrize("setting", [MLP_SGDM, pytest.param(MLP_ADAM, marks=pytest.mark.slow)],
                         ids=["sgdm", "adam"])  # Adam's cases (7-11 s): tox -e slow
def test_a_start_10x_too_high_is_braked_before_it_kills_the_net(registry, setting):
    """SGD momentum at 10x the probed LR leaves the MNIST-1D MLP at chance for the rest of the
    run (measured: 9-10% on seeds 0-2); Adam at 10x, 9-35%. The brake cuts the scale at the
    first loss jump, within the first few steps, and the run ends near the default's."""
    high, high_acc, policy = _run(registry, *setting, seed=1, start_factor=10)
    braked = policy.braked
    none, none_acc, _ = _run(registry, *setting, seed=1, start_factor=10, brake=0, recheck=0)
    _, default_acc, _ = _run(registry, *setting, seed=1)
    assert braked and braked[0] < 20
    assert high.lrs[braked[0]] < high.lrs[braked[0] - 1] / 3  # cut by sqrt(10) there
    assert high.lrs[:braked[0]] == none.lrs[:braked[0]]  # the same run until the cut
    assert none_acc < 0.45 and high_acc > none_acc + 0.2
    assert high_acc > default_acc - 0.06


def _mid_run(registry):
    task = registry.get("task", "digits").build()
    task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    model = registry.get("model", "cnn-digits").build(task.spec)
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    for _, batch in zip(range(10), task.train_batches(128, torch.Generator().manual_seed(0))):
        opt.zero_grad()
        task.loss(model, batch).backward()
        opt.step()
    return task, model, opt


def test_the_recheck_gives_the_run_back_as_it_found_it(registry):
    task, model, opt = _mid_run(registry)
    weights = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(opt.state_dict())
    rng = torch.get_rng_state()
    kwargs = dict(steps=probe_steps(300, 14), batch_size=128, meta_batch_size=128, seed=0)
    first = recheck_lr(task, model, opt, 0.003, **kwargs)
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    after = opt.state_dict()
    for index, slot in state["state"].items():
        for key, value in slot.items():
            assert torch.equal(torch.as_tensor(after["state"][index][key]),
                               torch.as_tensor(value)), (index, key)
    again = recheck_lr(task, model, opt, 0.003, **kwargs)
    assert again.losses == first.losses and again.lr == first.lr  # deterministic
    # the grid: a decade each way, one past a winning end, the half-decades around the best
    assert {0.0003, 0.003, 0.03} <= {round(k, 10) for k in first.losses}
    assert first.steps == kwargs["steps"] * (len(first.losses) + 1)  # + the noise replicate
    assert first.noise > 0


def test_a_harmful_lr_is_moved_down_and_a_merely_slower_one_is_not(registry):
    """Adam at 1.0 wrecks the digits CNN within a few steps: the recheck moves down. At the
    right LR a smaller one may win a few steps without the current one doing harm: kept."""
    task, model, opt = _mid_run(registry)
    kwargs = dict(steps=20, batch_size=128, meta_batch_size=128, seed=0)
    harmful = recheck_lr(task, model, opt, 1.0, **kwargs)
    assert harmful.losses[1.0] > harmful.initial_loss  # it does harm ...
    assert harmful.signal and harmful.lr < 1.0  # ... so the run moves down
    assert harmful.lr == min(harmful.losses, key=harmful.losses.__getitem__)
    right = recheck_lr(task, model, opt, 0.003, **kwargs)
    assert right.losses[0.003] < right.initial_loss
    assert right.lr >= 0.003  # never down from an LR that makes progress


def _braked(registry, losses, jump=None):
    """The steps at which MLR-SNet's brake cuts, for this sequence of training losses (``jump``:
    the threshold the run's probe measured, :func:`metalr.engine.probe.jump_tolerance`)."""
    from types import SimpleNamespace

    from metalr.engine.probe import ProbeResult

    policy = registry.get("lr_policy", "mlrsnet").build()
    policy.total_steps = 1000  # a 50-step window
    if jump is not None:
        policy.probe = ProbeResult(float(policy.gamma) / 2, jump=jump)
    scale = float(policy.gamma)
    for step, loss in enumerate(losses):
        policy._brake(SimpleNamespace(step=step, loss=torch.tensor(loss)))
    assert float(policy.gamma) == pytest.approx(scale / 10 ** (len(policy.braked) / 2))
    return policy.braked


def test_the_brake_cuts_a_jump_that_holds_not_a_one_step_spike(registry):
    # the CPU suite's language model at its right LR (28): one step spikes, the next is below
    assert _braked(registry, [8.86, 8.08, 15.48, 7.93, 7.73, 7.54, 7.46]) == []
    # the MNIST-1D MLP at 10x its LR: the jump at step 4 is still above the start at step 5
    assert _braked(registry, [2.31, 2.33, 2.13, 2.19, 2.78, 2.39, 2.40, 2.35]) == [5]
    # a loss that stays up is cut twice at most, 3 steps apart: 10x in all
    assert _braked(registry, [2.3] + [3.0] * 30) == [2, 5]
    # only in the window (5% of the run)
    assert _braked(registry, [2.3] * 60 + [3.0] * 10) == []


def test_the_brake_reads_the_noise_its_probe_measured(registry):
    """Batch losses 30% apart with no step taken (a regression on raw targets) are no jump
    where the probe measured that much noise; a rise beyond it still is."""
    noisy = [100.0, 125.0, 128.0, 95.0, 110.0, 127.0, 126.0, 90.0]
    assert _braked(registry, noisy) == [2, 6]  # with 10%, noise alone is cut twice
    assert _braked(registry, noisy, jump=0.3) == []
    assert _braked(registry, [100.0, 90.0, 150.0, 140.0, 80.0], jump=0.3) == [3]



@pytest.mark.slow
def test_a_gru_on_its_plateau_is_lifted_off_it_by_the_recheck(tmp_path, monkeypatch):
    """The hard suite's GRU with SGD momentum, seed 1 (about 25 s a run): the probe sees no
    signal and starts at 0.5; at 10% the run is still at chance, the recheck moves it up to its
    ceiling (1.0) and the run escapes its plateau. Without the recheck the same start stays at
    chance for the whole run (measured: 0.28; 4 classes)."""
    from pathlib import Path

    from metalr.recipes.loader import load_recipe
    from metalr.running.runner import Runner

    monkeypatch.chdir(Path(__file__).parents[1])

    def final(*extra):
        recipe = load_recipe("recipes/hard/seq-recall-gru.yaml",
                             ["train.seeds=[1]", "tracking=none", f"output_dir={tmp_path}",
                              *extra], only=["sgdm-mlrsnet"])
        (run,) = Runner(recipe, progress=False).run().results
        return run.history, run.final("test_accuracy")

    lifted, lifted_acc = final()
    stuck, stuck_acc = final("methods.sgdm-mlrsnet.lr_policy.options.recheck=0")
    assert not lifted.probe.signal and lifted.probe.lr == stuck.probe.lr
    at = lifted.recheck_step
    assert lifted.recheck.signal and lifted.lrs[at] >= 1.5 * lifted.lrs[at - 1]
    assert lifted.recheck.lr <= lifted.probe.ceiling * 1.001
    assert stuck.recheck is None
    assert lifted_acc > 0.9 and stuck_acc < 0.4


def _mlp_at_half(registry, steps):
    """The CPU suite's MNIST-1D MLP after ``steps`` steps of SGD momentum at its probed 0.5."""
    task = registry.get("task", "mnist1d").build(meta_size=500)
    task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    model = registry.get("model", "mlp").build(task.spec, hidden=[100, 100])
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    gen, done = torch.Generator().manual_seed(0), 0
    while done < steps:
        for batch in task.train_batches(128, gen):
            opt.zero_grad()
            task.loss(model, batch).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return task, model, opt


def test_a_run_that_learned_and_fell_back_is_not_taken_for_a_plateau(registry):
    """The CPU suite's MNIST-1D MLP held at its probed 0.5 (the control, seed 0): on the machine
    this was found on, its loss at the recheck (step 112) had risen back to the untrained one,
    but smaller LRs improved it at once (31% in the recheck's few steps); moved up to 1.0 by the
    first plateau rule, the run ended at chance (0.10; kept, 0.71). How far a run falls back
    by then differs with the CPU's kernels, so the "no progress since the untrained model" half
    of the rule is given here (``untrained=0``: no loss lies below it) and the other half is
    tested: a look whose smaller LRs improve the loss is no plateau, so never up. Since a run
    that its LR holds at no progress moves down (the next test), it moves down, to the largest
    smaller LR that beats 0.5 and makes progress (0.16 here; where the look's best is 0.05,
    that is more than the look supports). At a tiny LR, where no point of the look moves the
    loss, the same weights are moved up."""
    task, model, opt = _mlp_at_half(registry, 112)
    kwargs = dict(steps=probe_steps(1120, 28), batch_size=128, meta_batch_size=128, seed=0,
                  untrained=0.0)
    fell_back = recheck_lr(task, model, opt, 0.5, ceiling=1.0, **kwargs)
    assert min(fell_back.losses.values()) < (1 - 2 * SIGNAL_FLOOR) * fell_back.initial_loss
    assert fell_back.signal and fell_back.lr < 0.5  # down, never up
    beats = [lr for lr, v in fell_back.losses.items()
             if lr < 0.5 and v < fell_back.losses[0.5] - 0.01 * fell_back.losses[0.5]]
    # the largest, not the best (0.05 where this was found; with other CPU kernels 0.16 is both)
    assert fell_back.lr == max(beats) and fell_back.lr >= fell_back.best
    kept = recheck_lr(task, model, opt, 0.5, ceiling=1.0, **{**kwargs, "untrained": 2 * 2.33})
    assert kept.lr == 0.5 and not kept.signal  # the same look, a run that made progress: kept
    flat = recheck_lr(task, model, opt, 1e-7, ceiling=1e-6, **kwargs)
    assert max(flat.losses.values()) < (1 + 0.01) * flat.initial_loss  # nothing moves it
    assert flat.signal and flat.lr == pytest.approx(1e-6)  # off the "plateau", to the ceiling
    # a run whose training loss had fallen before (``learned``) is never taken for a plateau:
    # never moved up; back at its untrained loss with a flat look, it is a killed net, restarted
    # a half-decade lower (the next tests)
    fallen = recheck_lr(task, model, opt, 1e-7, ceiling=1e-6, learned=True, **kwargs)
    assert fallen.losses == flat.losses and not flat.restart
    assert fallen.restart and fallen.lr == pytest.approx(1e-7 / math.sqrt(10))


def test_a_fall_back_is_told_from_a_plateau_by_the_runs_own_training_loss():
    """``learned_before``: 10-step means of the training loss, against the first 10 steps'. A
    plateau's batches wobble (single steps 3% below the start here) without a learned run's
    fall; a run that fell 20% and came back had learned."""
    from metalr.engine.recheck import learned_before

    wobble = [1.40, 1.36, 1.42, 1.39, 1.41, 1.38, 1.40, 1.37, 1.43, 1.39] * 6
    assert min(wobble) < 0.975 * wobble[0] and not learned_before(wobble)
    fell_back = [3.0] * 10 + [2.4] * 10 + [3.0] * 20
    assert learned_before(fell_back)
    assert not learned_before(fell_back[:19])  # too few steps for two windows
    assert not learned_before([3.0] * 10 + [2.9] * 30)  # 3.3% below: within the floor


def test_a_run_its_lr_holds_at_no_progress_is_moved_down(load_bench):
    """Default MLR-SNet with SGD momentum on ``clusters`` of bench/unseen.py, a task kept outside
    the suites (eight classes of scikit-learn's ``make_classification``; 30 epochs, about 2 s a
    run), where a 26-step probe's start (0.28-0.5) is 3-5x what whole runs prefer (WSD at 0.1:
    52%; at 0.3: 36%; at 1: chance). The probe starts seeds 1 and 2 at 0.5, and at 10% of the
    run the loss is no better than the untrained model's while LRs a half-decade or more below
    make progress from there. The recheck moves down (to ~0.15) and the run trains (0.46 and
    0.49 on seeds 1 and 2, measured; seed 2 here); without the recheck it ends at 0.29 and 0.25
    (chance: 0.125). Before this rule the recheck kept MLR-SNet's LR, and kept the control's
    (seed 2) or took it for a plateau and moved it up to 1 (seed 1): chance, both."""
    seed = 2

    def run(**options):
        history = load_bench("unseen").build("clusters", "sgdm", "mlrsnet", seed,
                                             **options).fit()
        return history, history.epochs[-1]["test_accuracy"]

    moved, moved_acc = run()
    _, held_acc = run(recheck=0)
    at = moved.recheck_step
    assert moved.probe.lr == pytest.approx(0.5)
    assert moved.recheck.signal and moved.lrs[at] < moved.lrs[at - 1] / 2
    assert moved.recheck.initial_loss > (1 - SIGNAL_FLOOR) * moved.probe.initial_loss  # idle
    assert moved_acc > 0.4 and moved_acc > held_acc + 0.1


def test_a_run_that_fell_back_to_its_untrained_loss_is_moved_down(load_bench):
    """MLR-SNet with SGD momentum on ``clusters20`` of bench/unseen.py (twenty classes), seed 1:
    28% after its first epoch at the probe's 0.28, back within 5% of its untrained loss by the
    recheck (its training loss had fallen: ``learned``), where 26 steps at its LR raise the loss
    7% and every smaller LR holds it. Moved down (to 0.029), it ended at 0.41; kept, at 0.17
    (chance: 0.05). With a look that flat after a fall, the net is taken for killed and the run
    restarts from its first weights at a half-decade below the probe's start: 0.59 (measured)."""
    from metalr.engine.recheck import learned_before

    def run(**options):
        history = load_bench("unseen").build("clusters20", "sgdm", "mlrsnet", 1,
                                             **options).fit()
        return history, history.epochs[-1]["test_accuracy"]

    moved, moved_acc = run()
    _, held_acc = run(recheck=0)
    at = moved.recheck_step
    assert learned_before(moved.losses[:at])
    assert moved.recheck.initial_loss > (1 - SIGNAL_FLOOR) * moved.probe.initial_loss  # back
    assert moved.recheck.signal and moved.lrs[at] < moved.lrs[at - 1] / 2
    assert moved.recheck.restart
    assert moved_acc > held_acc + 0.1


def test_fell_back_counts_the_share_of_the_gain_given_back():
    """``fell_back``: the last 10-step mean above the lowest by more than half of the first's
    distance to the lowest (closed forms: 3.0 -> 2.0 and back up to 2.6 gave back 60%)."""
    from metalr.engine.recheck import fell_back

    assert fell_back([3.0] * 10 + [2.0] * 10 + [2.6] * 10)  # 60% given back
    assert not fell_back([3.0] * 10 + [2.0] * 10 + [2.4] * 10)  # 40%
    assert not fell_back([3.0] * 10 + [2.0] * 20)  # kept every gain
    assert not fell_back([3.0] * 10 + [2.9] * 10 + [3.0] * 10)  # never learned (3.3%)
    # a last window straddling two levels is their mean: 5 steps at 2.0, 5 at 3.0 -> 2.5, half
    assert not fell_back([3.0] * 10 + [2.0] * 15 + [3.0] * 5)
    assert fell_back([3.0] * 10 + [2.0] * 14 + [3.0] * 6)


def test_a_run_that_gave_back_most_of_its_gain_is_moved_down(load_bench):
    """The control (``probed-wsd``) with SGD momentum on ``clusters20`` of bench/unseen.py, seed
    0: its training loss falls from 3.0 to about 2.2 in the first epoch at the probe's 0.28 and
    climbs back to 2.8 by the recheck, 7% below the untrained loss: not held there by the
    no-progress rule. The look's 0.089 beats 0.28 by 0.14 and lowers the loss from where the
    run stands, yet raises it by far less than the harm rule's 50%. Moved down it ends at 0.49
    (measured); kept by the recheck before this rule, at 0.23 (chance: 0.05); the test holds
    it against the same run without a recheck."""
    from metalr.engine.probe import has_signal
    from metalr.engine.recheck import fell_back

    def run(**options):
        history = load_bench("unseen").build("clusters20", "sgdm", "probed-wsd", 0,
                                             **options).fit()
        return history, history.epochs[-1]["test_accuracy"]

    moved, moved_acc = run()
    _, held_acc = run(recheck=0)
    at, look = moved.recheck_step, moved.recheck
    assert fell_back(moved.losses[:at])
    assert has_signal(moved.probe.initial_loss, look.initial_loss, 0.0)  # not "held"
    assert moved.lrs[at] < moved.lrs[at - 1] / 2 and look.signal
    assert moved_acc > 0.4 and moved_acc > held_acc + 0.1


def test_blew_up_is_far_past_a_jump():
    """``blew_up``: a rise to 1.5x the first loss at least, or past twice the noise's jump."""
    from metalr.engine.recheck import blew_up

    assert blew_up([2.3, 2.9, 1.0, 3.5])  # 1.52x
    assert not blew_up([2.3, 2.9, 1.0, 3.4])  # 1.48x
    assert not blew_up([2.3, 3.4], jump=0.3)  # noise that reaches 30% asks for 1.6x
    assert blew_up([2.3, 3.7], jump=0.3)
    assert not blew_up([])


DIGITS_SGDM = ("digits", {}, "cnn-digits", {}, "sgd", {"momentum": 0.9, "weight_decay": 5e-4}, 30)


def test_a_start_that_killed_the_net_restarts_from_the_first_weights(registry):
    """SGD momentum at 10x its probed LR kills the digits CNN on seeds 1 and 2 (measured): the
    loss rises to 1.9-14x its first value within the first epoch, and by the recheck it is back
    at its untrained value, where no LR of the look moves it (a dead net). Nothing done to those
    weights helps (the brake and the recheck's moves leave both at chance, 7-10%), so the
    recheck restarts the run from its first weights, optimizer state cleared, a half-decade
    below the probe's own start: 0.983 and 0.987 (measured; the default start: 0.980 and
    0.993). Seed 2 here."""
    seed = 2
    killed, killed_acc, _ = _run(registry, *DIGITS_SGDM, seed=seed, start_factor=10)
    _, none_acc, _ = _run(registry, *DIGITS_SGDM, seed=seed, start_factor=10, recheck=0)
    # dead by the end of its second epoch: restarted there, a half-decade below the LR that
    # killed it (the recheck would have, at step 33; ``test_a_dead_net_restarts_...`` below)
    assert killed.restarts == [22]
    assert killed.lrs[22] == pytest.approx(killed.lrs[21] / math.sqrt(10), rel=0.01)
    assert none_acc < 0.15 and killed_acc > 0.95


def test_a_resume_before_the_restart_restarts_the_same(registry, tmp_path):
    """The first weights travel in the checkpoint while a restart may need them: a run stopped
    in its first epoch and resumed ends bit for bit as the one that never stopped (without
    them it would not restart)."""
    from metalr.engine import checkpoint
    from metalr.engine.algorithm import RunInterrupted

    def engine():
        task = registry.get("task", "digits").build()
        task.setup(2, torch.device("cpu"))
        torch.manual_seed(2)
        model = registry.get("model", "cnn-digits").build(task.spec)
        opt = registry.get("optimizer", "sgd").build(model.parameters(), momentum=0.9,
                                                     weight_decay=5e-4)
        policy = registry.get("lr_policy", "mlrsnet").build(start_factor=10)
        return Engine(task, model, opt, policy, EngineConfig(epochs=30, seed=2))

    reference = engine().fit()
    assert reference.restarts
    saved, steps = [], iter(range(10**6))
    with pytest.raises(RunInterrupted):
        engine().fit(checkpoint=lambda s: saved.append(checkpoint.save(tmp_path / "c.pt", s)),
                     stop=lambda: next(steps) == 5)
    state, _ = checkpoint.load(saved[-1])
    assert state["first_weights"] is not None
    resumed = engine().fit(resume=state)
    assert resumed.lrs == reference.lrs and resumed.losses == reference.losses
    assert resumed.epochs[-1]["test_accuracy"] == reference.epochs[-1]["test_accuracy"]
