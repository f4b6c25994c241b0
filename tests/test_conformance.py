"""The built-in components pass the same conformance checks offered to plugin authors."""

from __future__ import annotations

import pytest
import torch

from metalr.plugins import get_registry
from metalr.testing import check_component

# mlflow: against a temporary store below; lstm-lm: trained on pydoc-lm in test_tasks_extra.py
SKIP = {("tracker", "mlflow"), ("model", "lstm-lm")}
MODEL_TASKS = {"cnn1d": ("mnist1d", {"num_samples": 600, "meta_size": 100}),
               "cnn-digits": ("digits", {})}
EXTRA_OPTIONS = {("lr_policy", "rtho"): {"hyper_lr": 1e-4}}


def components():
    return [c for c in get_registry().all()
            if (c.kind, c.name) not in SKIP and c.source.startswith("metalr:")]


@pytest.mark.parametrize("component", components(), ids=lambda c: f"{c.kind}:{c.name}")
def test_builtin_component_conforms(component):
    kwargs = {}
    if component.kind == "model" and component.name in MODEL_TASKS:
        name, options = MODEL_TASKS[component.name]
        kwargs["task"] = get_registry().get("task", name).build(**options)
        kwargs["task"].setup(0, torch.device("cpu"))
    check_component(component, EXTRA_OPTIONS.get((component.kind, component.name), {}), **kwargs)


def test_mlflow_tracker_conforms(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'c.db'}")
    check_component(get_registry().get("tracker", "mlflow"))


def test_a_broken_policy_fails_the_check(registry):
    from metalr.plugins import Component

    class Negative:
        def start(self, run): pass
        def lr(self, ctx): return -1.0
        def end_epoch(self, epoch, metrics): pass

    with pytest.raises(Exception, match="LR"):
        check_component(Component("lr_policy", "negative", Negative, None, "tests"))
