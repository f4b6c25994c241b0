"""A run that blows up after its first weights are let go rolls back to its last good epoch.

The case is real: bench/unseen.py's ``cancer`` (scikit-learn's breast cancer data, an MLP) with
SGD momentum, seed 1, started at 3x the probe's LR (``start_factor: 3``). It trains for two
epochs, turns unstable and passes ``explode_factor`` at step 62 (epoch 11 of 30), far past the
recheck and its first weights. That ended the run as diverged; it now goes back to the state of
its last epoch whose training loss was within 50% of its best (epoch 2), a half-decade lower.
"""

from __future__ import annotations

import math

import pytest
import torch

from metalr.engine import recovery
from metalr.engine.algorithm import TrainingDiverged
from metalr.engine.recovery import good_epoch


def _cancer(load_bench, **options):
    unseen = load_bench("unseen")
    torch.set_num_threads(1)
    return unseen.build("cancer", "sgdm", "probed-wsd", 1, start_factor=3.0, **options)


def test_good_epoch_is_within_half_of_the_best_mean_so_far():
    def epochs(*means):
        return [{"train_batch_loss": m} for m in means]

    assert good_epoch(epochs(0.4))
    assert good_epoch(epochs(0.4, 0.1, 0.15))  # 0.15 <= 1.5 * 0.1
    assert not good_epoch(epochs(0.4, 0.1, 0.151))
    assert not good_epoch(epochs(0.4, math.nan))
    assert not good_epoch(epochs(math.inf))
    assert not good_epoch([])


def test_a_run_that_blew_up_late_rolls_back_and_finishes(load_bench, monkeypatch):
    history = _cancer(load_bench).fit()
    assert history.rollbacks and not history.restarts
    at = history.rollbacks[0]
    assert at > history.recheck_step  # past the recheck: no restart from the first weights
    assert max(history.losses[at - 6:at]) > 1e3 * history.losses[0]  # it did blow up
    # back to epoch 2's state (loss 0.09 then) at a half-decade below the LR that blew up
    assert history.lrs[at] == pytest.approx(history.lrs[at - 1] / math.sqrt(10), rel=0.01)
    assert sum(history.losses[at:at + 6]) / 6 < 0.5
    assert len(history.epochs) == 30 and history.epochs[-1]["test_accuracy"] > 0.95

    monkeypatch.setattr(recovery, "ROLLBACKS", 0)  # the same run without the roll back
    with pytest.raises(TrainingDiverged, match="at step 62"):
        _cancer(load_bench).fit()


def test_a_resume_between_the_good_epoch_and_the_blow_up_rolls_back_the_same(
        load_bench, tmp_path):
    """What a roll back goes back to travels in the checkpoint: stopped after it was kept and
    resumed, the run ends bit for bit as the one that never stopped."""
    from metalr.engine import checkpoint
    from metalr.engine.algorithm import RunInterrupted

    reference = _cancer(load_bench).fit()
    saved, steps = [], iter(range(10**6))
    with pytest.raises(RunInterrupted):
        _cancer(load_bench).fit(
            checkpoint=lambda s: saved.append(checkpoint.save(tmp_path / "c.pt", s)),
            stop=lambda: next(steps) == 40)
    state, _ = checkpoint.load(saved[-1])
    assert state["last_good"] is not None and state["first_weights"] is None
    resumed = _cancer(load_bench).fit(resume=state)
    assert resumed.rollbacks == reference.rollbacks
    assert resumed.lrs == reference.lrs and resumed.losses == reference.losses
    assert resumed.epochs[-1]["test_accuracy"] == reference.epochs[-1]["test_accuracy"]


def test_a_roll_back_is_on_the_console_line_and_in_mlflow(load_bench, run_tracked, capsys):
    """The same run through ``metalr run``'s runner (the task registered by a test plugin, as a
    third party's would be): its line says where it blew up and the LR it rolled back to; the
    steps are an MLflow param and in history.json."""
    import types

    from metalr import hookimpl
    from metalr.contracts.registry import Registry

    unseen = load_bench("unseen")

    class Cancer(unseen.Unseen):
        def __init__(self):
            super().__init__("cancer")

    @hookimpl
    def register_tasks(register):
        register("cancer", Cancer)

    registry = Registry(strict=False).load_entry_points()
    assert registry.add_plugin(types.SimpleNamespace(register_tasks=register_tasks),
                               "tests:cancer")
    run, params, saved = run_tracked({
        "name": "late-blow-up",
        "task": {"name": "cancer"},
        "model": {"name": "mlp", "options": {"hidden": [128, 128]}},
        "train": {"epochs": 30, "seeds": [1], "batch_size": 64, "device": "cpu", "threads": 1},
        "methods": {"control": {"optimizer": {"name": "sgd", "options": {
            "momentum": 0.9, "weight_decay": 5e-4}},
            "lr_policy": {"name": "probed-wsd", "options": {"start_factor": 3.0}}}}},
        registry=registry)
    assert run.status == "FINISHED"
    history = run.history
    assert history.rollbacks and not history.restarts
    out = capsys.readouterr().out
    for at in history.rollbacks:
        assert (f"blew up at step {at}: rolled back to its last good epoch at LR "
                f"{history.lrs[at]:.3g}") in out
    assert params["rollbacks"] == " ".join(map(str, history.rollbacks))
    assert f'"rollbacks": {history.rollbacks}' in saved
