"""Exact resume, in-process, for every built-in policy and a few optimizers.

Train 2 epochs uninterrupted; train again and stop between two steps of the second epoch (as
Ctrl-C does), which yields two checkpoints: the end of the first epoch and the stop. Resume a
fresh engine from each, through a real file, and demand the same LRs, losses and metrics.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metalr.engine import checkpoint
from metalr.engine.algorithm import Engine, EngineConfig, RunInterrupted

slow = pytest.mark.slow
CASES = [  # the default suite keeps one of each kind of state; -m slow runs them all
    pytest.param("cosine", {}, "sgd", id="cosine"),  # a torch scheduler stepped per iteration
    pytest.param("plateau", {}, "sgd", id="plateau"),  # ... fed metrics at epoch ends
    pytest.param("hd", {}, "sgd", id="hd"),  # carried LR and last direction
    pytest.param("mlrsnet", {}, "sgd", id="mlrsnet"),  # theta, Adam, LSTM state, probe
    # the recheck at step 21, the first of epoch 2: one checkpoint before it, one after
    pytest.param("mlrsnet", {"recheck": 0.5}, "sgd", id="mlrsnet-recheck-between"),
    pytest.param("fixed", {"lr": 0.01}, "adamw-schedulefree", id="schedulefree"),
    pytest.param("fixed", {}, "sgd", id="fixed", marks=slow),
    pytest.param("sgdr", {"T_0": 1}, "sgd", id="sgdr", marks=slow),
    pytest.param("exponential", {}, "sgd", id="exponential", marks=slow),
    pytest.param("multistep", {}, "sgd", id="multistep", marks=slow),
    pytest.param("l4", {}, "sgd", id="l4", marks=slow),
    pytest.param("rtho", {}, "sgd", id="rtho", marks=slow),
    pytest.param("mlrsnet", {"learn_scale": True}, "sgd", id="mlrsnet-scale", marks=slow),
    pytest.param("mlrsnet", {}, "adam", id="mlrsnet-adam", marks=slow),
    pytest.param("mlp-lr", {}, "sgd", id="mlp-lr", marks=slow),
    pytest.param("mlrsnet-transfer", {}, "sgd", id="transfer", marks=slow),
    pytest.param("fixed", {"lr": 1.0}, "prodigy", id="prodigy", marks=slow),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Bit-exactness holds at a fixed thread count; one is also fastest for this tiny MLP."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def task(registry):
    task = registry.get("task", "digits").build(meta_size=200)
    task.setup(0, torch.device("cpu"))
    return task


def engine(registry, task, policy, options, optimizer) -> Engine:
    torch.manual_seed(0)
    model = registry.get("model", "mlp").build(task.spec, hidden=[16])
    opts = {"momentum": 0.9} if optimizer == "sgd" else {}
    opt = registry.get("optimizer", optimizer).build(model.parameters(), **opts)
    lr_policy = registry.get("lr_policy", policy).build(**options)
    return Engine(task, model, opt, lr_policy, EngineConfig(epochs=2, batch_size=64, seed=0))


def comparable(history):
    """Everything but the clock (wall times, the probe's seconds)."""
    probe = None if history.probe is None else dataclasses.replace(history.probe, seconds=0.0)
    recheck = (None if history.recheck is None
               else dataclasses.replace(history.recheck, seconds=0.0))
    return (history.lrs, history.losses, probe, recheck, history.recheck_step,
            [{k: v for k, v in e.items() if k != "wall_time"} for e in history.epochs])


@pytest.mark.parametrize(("policy", "options", "optimizer"), CASES)
def test_resume_from_any_checkpoint_is_bit_exact(registry, task, tmp_path, policy, options,
                                                 optimizer):
    reference = engine(registry, task, policy, options, optimizer).fit()
    saved, steps = [], iter(range(10**6))

    def save(state):
        saved.append(checkpoint.save(tmp_path / f"ckpt{len(saved)}.pt", state))

    with pytest.raises(RunInterrupted) as stopped:  # stop after step 27: epoch 2, batch 6
        engine(registry, task, policy, options, optimizer).fit(
            checkpoint=save, stop=lambda: next(steps) == 27)
    assert len(stopped.value.history.lrs) == 28
    assert len(saved) == 2
    for path in saved:
        state, _ = checkpoint.load(path)
        resumed = engine(registry, task, policy, options, optimizer).fit(resume=state)
        assert comparable(resumed) == comparable(reference), path.name


def test_a_state_that_does_not_fit_the_policy_is_a_clear_error(registry, task, tmp_path):
    state = {}
    engine(registry, task, "fixed", {}, "sgd").fit(checkpoint=state.update)
    fresh = engine(registry, task, "cosine", {}, "sgd")
    with pytest.raises(checkpoint.CheckpointError, match="FixedLR policy, not of this run's "
                       ".*CosineLR"):
        fresh.fit(resume=state)


class NoisyLR:
    """A third-party-style policy whose state is NumPy's and Python's: arrays, a NumPy
    generator, a ``random.Random``, a set, and the global generators of both. None of it may
    be lost by a checkpoint: it declares all of it (the global generators are the engine's)."""

    def __init__(self, lr: float = 0.05):
        import random

        import numpy as np

        self.lr0, self.np_rng, self.py_rng = lr, np.random.default_rng(1), random.Random(2)
        self.trace, self.seen = np.zeros(4), set()

    def start(self, run):
        pass

    def lr(self, ctx):
        self.trace = self.trace * 0.9 + self.np_rng.normal(size=4)
        self.seen.add(ctx.step % 7)
        import random

        import numpy as np

        jitter = self.py_rng.uniform(0.9, 1.1) * random.uniform(0.9, 1.1) * np.random.uniform(
            0.9, 1.1)
        return self.lr0 * (1 + 0.1 * float(self.trace.mean())) * jitter

    def end_epoch(self, epoch, metrics):
        pass

    def run_state(self):
        return {"trace": torch.from_numpy(self.trace.copy()), "seen": sorted(self.seen),
                "np_rng": self.np_rng.bit_generator.state, "py_rng": self.py_rng.getstate()}

    def load_run_state(self, state):
        self.trace = state["trace"].numpy().copy()
        self.seen = set(state["seen"])
        self.np_rng.bit_generator.state = state["np_rng"]
        version, internal, gauss = state["py_rng"]
        self.py_rng.setstate((version, tuple(internal), gauss))


def test_numpy_python_and_global_state_resumes_exactly(task, tmp_path):
    """The policy above, and a model with dropout (torch's global generator)."""
    from torch import nn

    def build():
        import random

        import numpy as np

        torch.manual_seed(0)
        random.seed(0)  # metalr seeds only torch; a rule that draws from these seeds them
        np.random.seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.3),
                              nn.Linear(16, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return Engine(task, model, opt, NoisyLR(), EngineConfig(epochs=2, batch_size=64))

    reference = build().fit()
    saved, steps = [], iter(range(10**6))
    with pytest.raises(RunInterrupted):
        build().fit(checkpoint=lambda s: saved.append(checkpoint.save(tmp_path / "c.pt", s)),
                    stop=lambda: next(steps) == 30)
    resumed = build().fit(resume=checkpoint.load(saved[-1])[0])
    assert comparable(resumed) == comparable(reference)


class Forgetful(NoisyLR):
    """The same policy without a declared run state: what a checkpoint could not keep."""

    run_state = load_run_state = None


def test_a_policy_without_a_run_state_runs_but_is_refused_on_resume(task, tmp_path):
    """No field is skipped in silence: the run goes on (its checkpoints hold everything but the
    policy), and its resume refuses in one line naming the policy and the fix."""

    def build(policy):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return Engine(task, model, opt, policy, EngineConfig(epochs=2, batch_size=64),
                      names={"lr_policy": "forgetful"})

    saved, steps = [], iter(range(10**6))
    with pytest.raises(RunInterrupted):
        build(Forgetful()).fit(
            checkpoint=lambda s: saved.append(checkpoint.save(tmp_path / "c.pt", s)),
            stop=lambda: next(steps) == 20)
    state, _ = checkpoint.load(saved[-1])
    with pytest.raises(checkpoint.CheckpointError) as refused:
        build(Forgetful()).fit(resume=state)
    message = str(refused.value)
    assert "\n" not in message
    where = f"{Forgetful.__module__}.Forgetful"
    assert message == (f"cannot resume: the lr policy 'forgetful' ({where}) declares no run "
                       "state; implement run_state() / load_run_state() "
                       "(metalr.contracts.protocols.Resumable) in it, or delete the run's checkpoint "
                       "files to start it over")


class KeepsAnArray(NoisyLR):
    """Declares its state, but as a NumPy array, which the restricted loader refuses."""

    def run_state(self):
        return {**super().run_state(), "trace": self.trace.copy()}


def test_a_run_state_a_checkpoint_cannot_hold_is_refused_by_name_not_the_file(task, tmp_path):
    """The file stays readable (the refused value is left out), and the resume says where."""

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return Engine(task, model, opt, KeepsAnArray(), EngineConfig(epochs=1, batch_size=64),
                      names={"lr_policy": "array"})

    state = {}
    build().fit(checkpoint=state.update)
    state, _ = checkpoint.load(checkpoint.save(tmp_path / "c.pt", state))
    with pytest.raises(checkpoint.CheckpointError, match=(
            r"^cannot resume: the lr policy 'array' \(.*KeepsAnArray\) gave a run state with a "
            r"numpy.ndarray at run_state\(\)\['trace'\], which a checkpoint cannot hold")):
        build().fit(resume=state)
