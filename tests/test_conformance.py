"""The built-in components pass the same conformance checks offered to plugin authors."""

from __future__ import annotations

import pytest
import torch

from metalr.contracts.registry import get_registry
from metalr.testing import check_component

# mlflow: against a temporary store below; lstm-lm: trained on pydoc-lm in test_tasks_extra.py
SKIP = {("tracker", "mlflow"), ("model", "lstm-lm")}
MODEL_TASKS = {"cnn1d": ("mnist1d", {"num_samples": 600, "meta_size": 100}),
               "cnn-digits": ("digits", {})}
EXTRA_OPTIONS = {("lr_policy", "rtho"): {"hyper_lr": 1e-4}, ("lr_policy", "fixed"): {"lr": 0.07},
                 # in this process, never a real cluster's queue (test_submitit.py: local jobs)
                 ("executor", "submitit"): {"cluster": "debug"}}
EXTRA_CHECKS = {("lr_policy", "fixed"): {"expected_lr": 0.07}}


# The paper-scale components read the user's data files, and their image nets are too slow for
# this check's three CPU epochs: test_paper_data.py checks them on tiny files in the real formats.
PAPER_SCALE = {("task", "ptb")}
PAPER_SCALE_SOURCE = "metalr:vision"


def components():
    return [c for c in get_registry().all()
            if (c.kind, c.name) not in SKIP | PAPER_SCALE and c.source.startswith("metalr:")
            and c.source != PAPER_SCALE_SOURCE]


@pytest.mark.parametrize("component", components(), ids=lambda c: f"{c.kind}:{c.name}")
def test_builtin_component_conforms(component):
    kwargs = dict(EXTRA_CHECKS.get((component.kind, component.name), {}))
    if component.kind == "model" and component.name in MODEL_TASKS:
        name, options = MODEL_TASKS[component.name]
        kwargs["task"] = get_registry().get("task", name).build(**options)
        kwargs["task"].setup(0, torch.device("cpu"))
    check_component(component, EXTRA_OPTIONS.get((component.kind, component.name), {}), **kwargs)


def test_mlflow_tracker_conforms(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'c.db'}")
    check_component(get_registry().get("tracker", "mlflow"))


def test_a_broken_policy_fails_the_check(registry):
    from metalr.contracts.registry import Component

    class Negative:
        def start(self, run): pass
        def lr(self, ctx): return -1.0
        def end_epoch(self, epoch, metrics): pass

    with pytest.raises(Exception, match="LR"):
        check_component(Component("lr_policy", "negative", Negative, None, "tests"))


# -- every check fails on the fault it is named for: deliberately broken components ---------------


def policy(cls, name="broken"):
    from metalr.contracts.registry import Component

    return Component("lr_policy", name, cls, None, "tests")


class Zero:
    """Returns 0 forever: a policy that never trains anything."""

    def start(self, run): pass
    def lr(self, ctx): return 0.0
    def end_epoch(self, epoch, metrics): pass


class Tiny(Zero):
    """Positive, finite, and useless: the model cannot learn at this LR."""

    def lr(self, ctx): return 1e-9


class IgnoresItsLR(Zero):
    """A 'fixed' schedule that ignores the LR it is configured with."""

    def __init__(self, lr=0.1):
        pass

    def lr(self, ctx): return 0.05


def test_a_policy_that_returns_zero_forever_fails():
    with pytest.raises(AssertionError, match="LR was 0 at every one"):
        check_component(policy(Zero))


def test_a_policy_under_which_nothing_learns_fails():
    with pytest.raises(AssertionError, match="did not learn"):
        check_component(policy(Tiny))


def test_a_fixed_policy_must_give_its_configured_lr():
    with pytest.raises(AssertionError, match="configured 0.2"):
        check_component(policy(IgnoresItsLR), {"lr": 0.2}, expected_lr=0.2)
    check_component(get_registry().get("lr_policy", "fixed"), {"lr": 0.2}, expected_lr=0.2)


def test_a_meta_learner_that_ignores_the_loss_fails():
    from metalr_mlrsnet.mlp import MLPNet

    class Deaf(MLPNet):
        """Theta trains (the output bias still moves), but the loss never reaches the net."""

        def raw(self, x, state):
            return super().raw(torch.zeros_like(x), state)

    with pytest.raises(AssertionError, match="ignores its input"):
        check_component(policy(Deaf), {"gamma": 0.1})
    check_component(policy(MLPNet), {"gamma": 0.1})  # the same net, hearing the loss, passes


class Undeclared(Zero):
    """A sound schedule whose state a checkpoint cannot keep: no run_state()."""

    def lr(self, ctx): return 0.05


class ForgetsItsStep(Zero):
    """Decays step by step, and declares a run state that leaves the step out: a resumed run
    would start the decay over."""

    def __init__(self):
        self.t = 0

    def start(self, run): self.t = 0

    def lr(self, ctx):
        self.t += 1
        return 0.1 * 0.98**self.t

    def run_state(self): return {}
    def load_run_state(self, state): pass


class KeepsItsStep(ForgetsItsStep):
    def run_state(self): return {"t": self.t}
    def load_run_state(self, state): self.t = state["t"]


def test_a_policy_without_a_run_state_fails():
    with pytest.raises(AssertionError, match=r"no run_state\(\) / load_run_state\(\)"):
        check_component(policy(Undeclared))


def test_a_policy_whose_run_state_misses_a_counter_fails():
    with pytest.raises(AssertionError, match="resumed after step .* misses part"):
        check_component(policy(ForgetsItsStep))
    check_component(policy(KeepsItsStep))  # the same policy, its step declared, passes


def test_a_meta_objective_without_a_run_state_fails():
    from metalr.contracts.registry import Component
    from metalr.engine.objectives import OneStep

    class Undeclared:
        def meta_loss(self, look, lr): return OneStep().meta_loss(look, lr)

    with pytest.raises(AssertionError, match=r"no run_state\(\)"):
        check_component(Component("meta_objective", "undeclared", Undeclared, None, "tests"))


# -- trackers -------------------------------------------------------------------------------------


class CannotReadBack:
    """Takes every call and keeps nothing, and has no way to say what it kept."""

    def __init__(self):
        self.count = 0

    def start_run(self, experiment, name, params, parent=None, tags=None):
        self.count += 1
        return f"run{self.count}"

    def log_metrics(self, run_id, metrics, step): pass
    def log_artifact(self, run_id, path, artifact_path=None): pass
    def end_run(self, run_id, status): pass
    def close(self): pass


class StoresNothing(CannotReadBack):
    """What it reads back is empty: nothing was stored."""

    def read_run(self, run_id):
        from metalr.contracts.protocols import RecordedRun

        return RecordedRun("", "RUNNING", {}, {}, {}, [])


def tracker(cls):
    from metalr.contracts.registry import Component

    return Component("tracker", "broken", cls, None, "tests")


def test_a_tracker_that_stores_nothing_fails():
    with pytest.raises(AssertionError, match="read back"):
        check_component(tracker(StoresNothing))


def test_a_tracker_that_cannot_read_back_fails():
    with pytest.raises(AssertionError, match="read_run"):
        check_component(tracker(CannotReadBack))


@pytest.mark.parametrize("fault", ["drops_a_step", "never_ends", "loses_tags", "no_artifacts"])
def test_a_real_tracker_with_one_fault_fails(tmp_path, monkeypatch, fault):
    from metalr_mlflow.tracker import MLflowTracker

    class Faulty(MLflowTracker):
        def start_run(self, experiment, name, params, parent=None, tags=None):
            tags = None if fault == "loses_tags" else tags
            return super().start_run(experiment, name, params, parent, tags=tags)

        def log_metrics(self, run_id, metrics, step):
            if not (fault == "drops_a_step" and step > 0):
                super().log_metrics(run_id, metrics, step)

        def log_artifact(self, run_id, path, artifact_path=None):
            if fault != "no_artifacts":
                super().log_artifact(run_id, path, artifact_path)

        def end_run(self, run_id, status):
            if fault != "never_ends":
                super().end_run(run_id, status)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'c.db'}")
    words = {"drops_a_step": "metrics", "never_ends": "status", "loses_tags": "tags",
             "no_artifacts": "artifacts"}
    with pytest.raises(AssertionError, match=words[fault]):
        check_component(tracker(Faulty))


# -- the slow recipe test's bar (check_learned), on real tiny runs --------------------------------


def digits_run(tmp_path, **methods):
    from metalr.recipes.schema import Recipe
    from metalr.running.runner import Runner

    recipe = Recipe.model_validate({
        "name": "bar", "task": {"name": "digits"}, "model": {"name": "mlp",
                                                               "options": {"hidden": [32]}},
        "train": {"epochs": 2, "seeds": [0], "batch_size": 64, "device": "cpu", "threads": 1},
        "methods": {name: {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                           "lr_policy": {"name": "fixed", "options": {"lr": lr}}}
                    for name, lr in methods.items()},
        "tracking": "none", "output_dir": str(tmp_path)})
    return Runner(recipe, progress=False).run()


def test_check_learned_needs_finished_runs_above_chance(tmp_path):
    from metalr.testing import check_learned

    summary = digits_run(tmp_path, good=0.05, diverges=1e4, stuck=1e-9)
    good = [r for r in summary.results if r.method == "good"]
    check_learned(type(summary)(**{**vars(summary), "results": good}))
    diverged = [r for r in summary.results if r.method == "diverges"]
    with pytest.raises(AssertionError, match="diverges/seed0: FAILED"):
        check_learned(type(summary)(**{**vars(summary), "results": good + diverged}))
    stuck = [r for r in summary.results if r.method == "stuck"]
    with pytest.raises(AssertionError, match="stuck/seed0: test_accuracy .* is chance"):
        check_learned(type(summary)(**{**vars(summary), "results": good + stuck}))
    # an ablation's bad setting may sit at chance, but it may not diverge
    check_learned(type(summary)(**{**vars(summary), "results": good + stuck}), {"stuck"})
    with pytest.raises(AssertionError, match="diverges/seed0: FAILED"):
        check_learned(type(summary)(**{**vars(summary), "results": good + diverged}),
                      {"diverges"})
