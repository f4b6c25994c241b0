"""Plug-and-play learned schedules: LearnedLR in a plain loop, mlrsnet-transfer in the engine.

Both run the same frozen nets through one implementation (metalr.scheduler.learned.PhasedNets);
these tests hold them to the same LRs, to exact resumption, and to never unpickling a file.
"""

from __future__ import annotations

import itertools
import json
import pickle
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from metalr import LearnedLR
from metalr.cli import main
from metalr.engine.algorithm import Engine, EngineConfig, is_meta_learned
from metalr.engine.order import DataOrder
from metalr.engine.weights import WeightsError, read_meta_learner, save_meta_learner
from metalr.scheduler.learned import (
    ceiling_epochs,
    load_nets,
    phase_of,
    pick_nets,
    shipped_nets,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "scheduler.md"
TASK = {"num_samples": 600, "meta_size": 100}  # 380 training samples: 6 steps of 64 per epoch


def _task(registry, seed):
    task = registry.get("task", "mnist1d").build(**TASK)
    task.setup(seed, torch.device("cpu"))
    return task


def _model(registry, task, seed):
    torch.manual_seed(seed)  # the engine's runner does the same before building the model
    return registry.get("model", "mlp").build(task.spec, hidden=[32])


def _hand_loop(task, model, scheduler, optimizer, batch_size, seed, epochs, stop=None,
               start=0):
    """A plain PyTorch loop over the engine's data order, from batch ``start`` (a resumed
    loop skips those it had trained on) to ``stop``; returns the LRs applied."""
    lrs = []
    for step, (_, batch) in enumerate(DataOrder(seed).batches(task, batch_size, epochs)):
        if stop is not None and step >= stop:
            return lrs
        if step < start:
            continue
        optimizer.zero_grad()
        loss = task.loss(model, batch)
        loss.backward()
        scheduler.step(loss)
        optimizer.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_scheduler_gives_the_engines_meta_test_lrs(registry):
    seed, epochs, batch_size = 3, 3, 64
    task = _task(registry, seed)
    model = _model(registry, task, seed)
    optimizer = registry.get("optimizer", "sgd").build(model.parameters(), momentum=0.9,
                                                       weight_decay=5e-4)
    # scale "saved": the nets' own absolute scale, as LearnedLR without lr= uses it
    policy = registry.get("lr_policy", "mlrsnet-transfer").build(nets=["mnist1d-mlp"],
                                                                 scale="saved")
    assert not is_meta_learned(policy)  # the engine must never meta-train a transferred net
    theta = [p.clone() for net in policy.phases.nets for p in net.state_dict().values()]
    config = EngineConfig(epochs=epochs, batch_size=batch_size, seed=seed, meta_train=False,
                          eval_splits=("test",))
    history = Engine(task, model, optimizer, policy, config).fit()
    after = [p for net in policy.phases.nets for p in net.state_dict().values()]
    assert all(torch.equal(a, b) for a, b in zip(after, theta, strict=True))

    task = _task(registry, seed)
    model = _model(registry, task, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    total = epochs * task.num_train_batches(batch_size)
    scheduler = LearnedLR.from_pretrained(optimizer, "mnist1d-mlp", total_steps=total)
    lrs = _hand_loop(task, model, scheduler, optimizer, batch_size, seed, epochs)

    assert len(lrs) == total == 18
    assert lrs == history.lrs  # bit for bit: same losses, same nets, same phases
    assert {policy.phases.phase, scheduler.phases.phase} == {2}
    assert len(set(lrs)) > 3


def test_transfer_rescales_to_the_probe_of_the_new_run(registry):
    """scale auto: the nets start from the new run's probed LR; their weights stay as saved."""
    seed, epochs, batch_size = 3, 2, 64
    task = _task(registry, seed)
    model = _model(registry, task, seed)
    optimizer = registry.get("optimizer", "adam").build(model.parameters())
    policy = registry.get("lr_policy", "mlrsnet-transfer").build(nets=["mnist1d-mlp"])
    saved = LearnedLR.from_pretrained(torch.optim.SGD(model.parameters()), "mnist1d-mlp",
                                      total_steps=1)
    weights = [{k: v.clone() for k, v in net.state_dict().items()
                if k not in ("log_gamma", "ref_lr")} for net in policy.phases.nets]
    config = EngineConfig(epochs=epochs, batch_size=batch_size, seed=seed, meta_train=False,
                          eval_splits=("test",))
    history = Engine(task, model, optimizer, policy, config).fit()
    probe = history.probe
    assert probe is not None and probe.lr <= 0.1  # Adam's scale, not SGD's
    for net, old, before in zip(policy.phases.nets, saved.phases.nets, weights):
        assert float(net.ref_lr) == pytest.approx(probe.lr, rel=1e-5)
        factor = probe.lr / float(old.ref_lr)  # every net moves by the same factor
        assert float(net.gamma) == pytest.approx(float(old.gamma) * factor, rel=1e-5)
        after = {k: v for k, v in net.state_dict().items() if k not in ("log_gamma", "ref_lr")}
        assert all(torch.equal(after[k], before[k]) for k in before)
    # The LRs applied are the saved nets' own outputs on this run's losses, each multiplied by
    # probe / ref_lr: replayed by hand from the files (no PhasedNets, no rescale), the phases
    # switched and the LSTM state carried as the reference code's meta_test.py does.
    nets, files = load_nets("mnist1d-mlp"), shipped_nets()["mnist1d-mlp"]
    total, k, state, replayed = len(history.lrs), len(files), None, []
    assert total == epochs * task.num_train_batches(batch_size) == len(history.losses)
    for t, loss in enumerate(history.losses):  # loss_scale 1: the net reads the batch loss
        net = nets[min(k - 1, t * k // total)]
        with torch.no_grad():
            out, state = net(torch.tensor(loss), state)
        replayed.append(float(out) * probe.lr / float(net.ref_lr) * net.envelope(t, total))
    assert history.lrs == pytest.approx(replayed, rel=1e-5)
    assert min(replayed) > 0 and len(set(history.lrs)) > 3  # a schedule, not a constant


def test_phases_switch_nets_and_carry_the_lstm_state():
    files = shipped_nets()["mnist1d-mlp"]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    scheduler = LearnedLR.from_pretrained(optimizer, files, total_steps=9)
    losses = [2.3, 2.0, 1.7, 1.5, 1.2, 1.0, 0.8, 0.7, 0.6, 0.5]  # one step past total_steps
    lrs = []
    for loss in losses:
        scheduler.step(torch.tensor(loss))
        lrs.append(scheduler.get_last_lr()[0])

    def replay(switch: bool, carry: bool) -> list[float]:
        nets, state, out = load_nets(files), None, []
        for t, loss in enumerate(losses):
            phase = min(2, t * 3 // 9) if switch else 0
            if not carry and t in (3, 6):
                state = None
            with torch.no_grad():
                lr, state = nets[phase](torch.tensor(loss), state)
            out.append(float(lr) * nets[phase].envelope(t, 9))  # the cool-down of the run's end
        return out

    assert lrs == replay(switch=True, carry=True)
    assert lrs != replay(switch=False, carry=True)  # the switch changes the LRs
    assert lrs != replay(switch=True, carry=False)  # so does carrying the state
    assert [phase_of(t, 10, 3) for t in (0, 3, 4, 6, 7, 9, 15)] == [0, 0, 1, 1, 2, 2, 2]


def test_ceiling_rule_and_picking_nets_from_a_run(tmp_path):
    assert ceiling_epochs(200, 3) == [1, 100, 200]  # the paper's choice
    assert ceiling_epochs(60, 3) == [1, 30, 60]
    assert ceiling_epochs(10, 4) == [1, 4, 7, 10]
    assert ceiling_epochs(1, 3) == [1, 1, 1]
    with pytest.raises(ValueError, match="k >= 2"):
        ceiling_epochs(60, 1)
    run = tmp_path / "quickstart-1" / "mlrsnet-seed0"
    run.mkdir(parents=True)
    (run.parent / "recipe.yaml").write_text("train: {epochs: 60}\n")
    net = shipped_nets()["mnist1d-mlp"][0]
    for name in ("theta-epoch0001", "theta-epoch0030", "theta-epoch0045", "theta-final"):
        shutil.copyfile(net, run / f"{name}.safetensors")
    assert [p.name for p in pick_nets(run, 3)] == [
        "theta-epoch0001.safetensors", "theta-epoch0030.safetensors", "theta-final.safetensors"]
    with pytest.raises(FileNotFoundError, match=re.escape("save_epochs=[1, 20, 40, 60]")):
        pick_nets(run, 4)


# phases are steps 0-5, 6-11 and 12-17: resume at a switch, and mid-phase before one
@pytest.mark.parametrize("stop", [6, 4])
def test_state_dict_round_trip_continues_the_same_lrs(registry, tmp_path, stop):
    seed, epochs, batch_size = 5, 3, 64
    task = _task(registry, seed)
    total = epochs * task.num_train_batches(batch_size)

    def fresh():
        model = _model(registry, task, seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
        return model, opt, LearnedLR.from_pretrained(opt, "mnist1d-mlp", total_steps=total)

    model, opt, sched = fresh()
    reference = _hand_loop(task, model, sched, opt, batch_size, seed, epochs)

    model, opt, sched = fresh()
    first = _hand_loop(task, model, sched, opt, batch_size, seed, epochs, stop=stop)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict()}, path)
    checkpoint = torch.load(path, weights_only=True)
    model, opt, sched = fresh()
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["opt"])
    assert sched.phases.step == 0
    sched.load_state_dict(checkpoint["sched"])
    assert sched.last_step == stop and sched.get_last_lr() == [reference[stop - 1]]

    # continue on the batches the interrupted loop had not reached
    rest = _hand_loop(task, model, sched, opt, batch_size, seed, epochs, start=stop)
    assert first + rest == reference

    # without the scheduler's state (LSTM state, step count) the LRs would not continue
    model, opt, sched = fresh()
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["opt"])
    _, batch = next(itertools.islice(DataOrder(seed).batches(task, batch_size, epochs), stop,
                                     None))
    loss = task.loss(model, batch)
    sched.step(loss)
    assert sched.get_last_lr()[0] != reference[stop]


class _Payload:
    """Unpickling this runs open(marker, "w"): the file appears if anything unpickles it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["theta-final.safetensors", "net.pt"])
def test_a_pickle_posing_as_a_net_is_refused(registry, tmp_path, name):
    marker = tmp_path / "pwned"
    evil = tmp_path / name
    evil.write_bytes(pickle.dumps({"gamma": _Payload(marker)}))
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    with pytest.raises(WeightsError, match="(?s)not a safetensors file.*never from pickle"):
        LearnedLR.from_pretrained(opt, str(evil), total_steps=10)
    with pytest.raises(WeightsError, match="never from pickle"):
        registry.get("lr_policy", "mlrsnet-transfer").build(nets=[str(evil)])
    assert not marker.exists()
    pickle.loads(evil.read_bytes())  # the payload is live: unpickling does create the marker
    assert marker.exists()


def test_every_shipped_net_loads_and_is_listed(capsys):
    shipped = shipped_nets()
    assert "mnist1d-mlp" in shipped
    for name, files in shipped.items():
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
        sched = LearnedLR.from_pretrained(opt, name, total_steps=6)
        gammas = [float(n.gamma) for n in sched.phases.nets]
        assert sched.phases.k == len(files) >= 1
        sched.step(torch.tensor(2.3))
        assert 0 < sched.get_last_lr()[0] <= max(gammas)
        card = (files[0].parent / "card.md").read_text()
        assert "Cite" in card and "test accuracy" in card
    assert main(["nets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in shipped)
    assert main(["nets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {n["name"]: len(n["files"]) for n in listed} == {k: len(v) for k, v in shipped.items()}


def test_gamma_is_the_saved_buffer_unless_overridden(registry):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    saved = LearnedLR.from_pretrained(opt, "mnist1d-mlp", total_steps=6)
    scaled = LearnedLR.from_pretrained(opt, "mnist1d-mlp", total_steps=6, gamma=0.25)
    policy = registry.get("lr_policy", "mlrsnet-transfer").build(gamma=0.25)
    files = shipped_nets()["mnist1d-mlp"]
    in_files = [float(read_meta_learner(f)[2]["log_gamma"].exp()) for f in files]
    assert [float(n.gamma) for n in saved.phases.nets] == pytest.approx(in_files)
    policy.phases.start(6)
    for loss in (2.3, 1.9, 1.4, 1.1, 0.9, 0.7):
        phase = saved.phases.phase
        saved.step(loss)
        scaled.step(loss)
        factor = 0.25 / float(saved.phases.nets[phase].gamma)
        assert scaled.get_last_lr()[0] == pytest.approx(factor * saved.get_last_lr()[0])
        assert policy.phases.lr(torch.tensor(loss)) == scaled.get_last_lr()[0]


def test_optimizer_step_before_scheduler_step_warns():
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=0.0)
    sched = LearnedLR.from_pretrained(opt, "mnist1d-mlp", total_steps=4)
    param.grad = torch.ones(1)
    sched.step(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # the documented order: no warning
    with pytest.warns(UserWarning, match=r"call scheduler.step\(loss\) after loss.backward"):
        opt.step()


def test_the_documented_example_runs(tmp_path, monkeypatch, capsys):
    code = "\n".join(re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL))
    monkeypatch.chdir(tmp_path)  # the example writes checkpoint.pt into its working directory
    namespace: dict = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    scheduler = namespace["scheduler"]
    assert scheduler.last_step == scheduler.total_steps == 32
    assert namespace["resumed"].state_dict()["step"] == 32
    assert "epoch 4: loss" in capsys.readouterr().out
    assert (tmp_path / "checkpoint.pt").is_file()


def test_lr_rescales_the_schedule_relative_to_its_start():
    """lr= maps each net's calibration LR (ref_lr) to lr: every LR scales by lr / ref_lr."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    saved = LearnedLR.from_pretrained(opt, "mnist1d-mlp", total_steps=6)
    scaled = LearnedLR.from_pretrained(opt, "mnist1d-mlp", total_steps=6, lr=0.002)
    factor = 0.002 / float(saved.phases.nets[0].ref_lr)
    assert [float(n.ref_lr) for n in scaled.phases.nets] == pytest.approx([0.002] * 3)
    for loss in (2.3, 1.9, 1.4, 1.1, 0.9, 0.7):
        saved.step(loss)
        scaled.step(loss)
        assert scaled.get_last_lr()[0] == pytest.approx(factor * saved.get_last_lr()[0], rel=1e-5)
    with pytest.raises(ValueError, match="not both"):
        LearnedLR.from_pretrained(opt, "mnist1d-mlp", total_steps=6, lr=0.1, gamma=0.2)


def test_transfer_takes_k_of_the_saved_nets_by_the_ceiling_rule(registry, tmp_path):
    """``k`` picks the paper's k nets from a meta-train's saved ones; the epochs come from the
    file names (the last one is the meta-train's length); k = 1 is the last net alone."""
    build = registry.get("lr_policy", "mlrsnet-transfer").build
    for epoch in (1, 15, 20, 30, 40, 45, 60):  # what fig13-meta-train.yaml saves
        net = registry.get("lr_policy", "mlrsnet").build(gamma=epoch / 100, hidden=4)
        save_meta_learner(tmp_path / f"theta-epoch{epoch:04d}.safetensors", "mlrsnet", net)
    gammas = {k: [round(float(n.log_gamma.exp()), 6) for n in
                  build(nets=[str(tmp_path)], k=k, scale="saved").phases.nets]
              for k in (1, 2, 3, 4, 5)}
    assert gammas == {1: [0.6], 2: [0.01, 0.6], 3: [0.01, 0.3, 0.6],
                      4: [0.01, 0.2, 0.4, 0.6], 5: [0.01, 0.15, 0.3, 0.45, 0.6]}
    assert len(build(nets=[str(tmp_path)], scale="saved").phases.nets) == 7  # unset: all
    (tmp_path / "theta-epoch0020.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no nets for epochs \[20, 40\]|no nets for epochs \[20\]"):
        build(nets=[str(tmp_path)], k=4)


# -- the LRScheduler interface --------------------------------------------------------------------

def _regression(seed: int = 0):
    """A two-parameter model on 64 points: enough for losses that change from step to step."""
    torch.manual_seed(seed)
    x = torch.randn(64, 1)
    y = 3 * x + 0.5 + 0.1 * torch.randn(64, 1)
    model = torch.nn.Linear(1, 1)
    return model, x, y


def _record_applied(optimizer) -> list[float]:
    """The LR each optimizer.step() actually runs with, read when it starts."""
    applied: list[float] = []
    optimizer.register_step_pre_hook(lambda opt, a, k: applied.append(opt.param_groups[0]["lr"]))
    return applied


def test_is_a_torch_scheduler_and_observe_then_step_equals_step_with_the_loss(replay_learned):
    model, x, y = _regression()
    opt = torch.optim.SGD(model.parameters(), lr=0.7)
    sched = LearnedLR(opt, load_nets("mnist1d-mlp"), total_steps=12, lr=0.05)
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    assert opt.param_groups[0]["lr"] == 0.7 and sched.get_last_lr() == [0.7]  # left alone
    applied, losses = _record_applied(opt), []
    for t in range(12):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        if t % 2:
            sched.step(loss)
        else:
            sched.observe(loss)  # what a framework that steps with no argument does
            sched.step()
        opt.step()
    assert applied == replay_learned(losses, 12, lr=0.05)
    assert sched.last_epoch == sched.last_step == 12 and sched.state_dict()["phase"] == 2
    with pytest.raises(RuntimeError, match=r"no loss for this step: call step\(loss\) or observe"):
        sched.step()  # the observed loss is used once, never again for a later step


def _train_sequential(model, x, y, opt, learned, sched, total: int) -> list[float]:
    """``total`` steps of a loop that hands the loss to the learned schedule by ``observe`` and
    steps a SequentialLR holding it with no argument; returns the losses."""
    losses = []
    for _ in range(total):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        learned.observe(loss)
        sched.step()
        opt.step()
    return losses


def test_a_linear_warm_up_then_the_learned_schedule_in_sequential_lr(replay_learned):
    """Everything is stepped before optimizer.step(): step t runs the warm-up's epoch t + 1, so
    W warm-up steps ending at the base LR are total_iters=W, milestones=[W + 1]."""
    warm, total = 4, 14
    model, x, y = _regression(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warm)
    learned = LearnedLR(opt, load_nets("mnist1d-mlp"), total_steps=total - warm, lr=0.1)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, learned], milestones=[warm + 1])
    applied = _record_applied(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the learned schedule does not warn before its turn
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        losses = _train_sequential(model, x, y, opt, learned, sched, total)
    assert applied[:warm] == pytest.approx([0.1 * (0.1 + 0.9 * (t + 1) / warm)
                                            for t in range(warm)])
    assert applied[warm:] == replay_learned(losses[warm:], total - warm, lr=0.1)
    assert learned.last_step == total - warm and sched.get_last_lr() == [applied[-1]]
    state = sched.state_dict()  # SequentialLR nests the learned schedule's state
    assert state["_schedulers"][1]["step"] == total - warm


def test_the_learned_schedule_first_in_sequential_lr_then_a_constant(replay_learned):
    """SequentialLR starts its first schedule with torch's own initial step (no loss yet: the
    optimizer's LR is left alone) and hands over at the milestone; the learned LRs before it are
    the nets' own, the constant's after it."""
    learned_steps, total = 5, 8
    model, x, y = _regression(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    learned = LearnedLR(opt, load_nets("mnist1d-mlp"), total_steps=learned_steps, lr=0.1)
    constant = torch.optim.lr_scheduler.ConstantLR(opt, factor=0.5, total_iters=10**6)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [learned, constant],
                                                  milestones=[learned_steps + 1])
    assert opt.param_groups[0]["lr"] == 0.1 and learned.last_step == 0
    applied = _record_applied(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's and ours on the stepping order
        losses = _train_sequential(model, x, y, opt, learned, sched, total)
    assert applied[:learned_steps] == replay_learned(losses[:learned_steps], learned_steps,
                                                     lr=0.1)
    assert applied[learned_steps:] == [0.05] * (total - learned_steps)
    assert learned.last_step == learned_steps


def test_the_state_dict_is_plain_and_loads_with_weights_only(tmp_path):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    sched = LearnedLR.from_pretrained(opt, "mnist1d-mlp", total_steps=6)
    for loss in (2.3, 1.9, 1.5):
        sched.step(loss)
    torch.save(sched.state_dict(), tmp_path / "sched.pt")
    state = torch.load(tmp_path / "sched.pt", weights_only=True)
    assert {"step", "phase", "state", "gamma", "ref_lr", "last_epoch", "loss_scale"} <= set(state)
    assert state["step"] == 3 and state["phase"] == 1
    twin = LearnedLR.from_pretrained(opt, "mnist1d-mlp", total_steps=6)
    twin.load_state_dict(state)
    assert twin.step(1.2) == sched.step(1.2)


def test_the_optimizer_comes_first():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    with pytest.raises(TypeError, match=r"from_pretrained\(optimizer, nets.*got str"):
        LearnedLR.from_pretrained("mnist1d-mlp", opt, total_steps=6)


def test_the_step_pre_hook_goes_with_the_scheduler():
    import gc
    import weakref

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    nets = load_nets("mnist1d-mlp")
    before = len(opt._optimizer_step_pre_hooks)
    first = LearnedLR(opt, nets, total_steps=6)
    assert len(opt._optimizer_step_pre_hooks) == before + 1
    second = LearnedLR(opt, nets, total_steps=6)  # replaces the first as the optimizer's watcher
    assert len(opt._optimizer_step_pre_hooks) == before + 1
    gone = weakref.ref(second)
    del first, second
    gc.collect()
    assert gone() is None  # the optimizer keeps no scheduler alive
    assert len(opt._optimizer_step_pre_hooks) == before
    third = LearnedLR(opt, nets, total_steps=6)
    third.close()
    third.close()
    assert len(opt._optimizer_step_pre_hooks) == before
    for _ in range(20):  # a loop that rebuilds its scheduler leaks nothing
        LearnedLR(opt, nets, total_steps=6).step(1.0)
    gc.collect()
    assert len(opt._optimizer_step_pre_hooks) == before


def test_warm_up_scales_the_learned_lr_and_resumes_mid_ramp(replay_learned, tmp_path):
    losses = [2.3, 2.0, 1.8, 1.5, 1.4, 1.2, 1.1, 1.0]
    want = replay_learned(losses, 8, lr=0.05)  # the learned LRs without a warm-up

    def fresh(**warmup):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
        return LearnedLR.from_pretrained(opt, "mnist1d-mlp", total_steps=8, lr=0.05, **warmup)

    plain = fresh()
    assert [plain.step(loss) for loss in losses] == want  # warmup_steps=0 changes nothing
    sched = fresh(warmup_steps=4, warmup_start=0.2)
    ramp = [0.2 + 0.8 * (t + 1) / 4 for t in range(4)] + [1.0] * 4  # the closed form
    got = [sched.step(loss) for loss in losses]
    assert got == pytest.approx([f * lr for f, lr in zip(ramp, want)], rel=1e-12)
    assert got[4:] == want[4:]  # the nets read every loss: after the ramp, the plain LRs
    assert [fresh(warmup_steps=2).step(losses[0])] == pytest.approx([want[0] / 2], rel=1e-12)

    # a run stopped inside the ramp, resumed by a scheduler built without it: the saved
    # ramp wins, so the resumed LRs are the uninterrupted ones
    first = fresh(warmup_steps=4, warmup_start=0.2)
    head = [first.step(loss) for loss in losses[:2]]
    torch.save(first.state_dict(), tmp_path / "sched.pt")
    resumed = fresh()
    resumed.load_state_dict(torch.load(tmp_path / "sched.pt", weights_only=True))
    assert resumed.warmup_steps == 4 and "warmup_steps=4" in repr(resumed)
    assert head + [resumed.step(loss) for loss in losses[2:]] == got

    with pytest.raises(ValueError, match="warmup_steps must be a whole number"):
        fresh(warmup_steps=2.5)
    with pytest.raises(ValueError, match="warmup_start must be in"):
        fresh(warmup_steps=2, warmup_start=1.5)
