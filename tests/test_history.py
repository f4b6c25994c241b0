"""A run's history has one encoding (History.to_dict): in checkpoints, result.json and
history.json alike, and every history.json written before reads back with History.from_dict."""

from __future__ import annotations

import json

import pytest

from metalr.engine.history import History
from metalr.engine.probe import ProbeResult
from metalr.running.outputs import save_history

EPOCHS = [{"epoch": 1, "train_batch_loss": 1.5, "lr": 0.1, "test_accuracy": 0.5}]


def probed(lr: float, **measured: float) -> ProbeResult:
    return ProbeResult(lr, losses={1e-3: 2.0, 0.0316228: 1.25}, steps_per_point=4, at_edge=False,
                       best=0.0316228, edge=0.1, initial_loss=2.3, **measured)


def full_history() -> History:
    return History(lrs=[0.1, 0.1, 0.2], losses=[2.0, 1.8, 1.5], epochs=EPOCHS, wall_time=3.25,
                   probe=probed(0.05, steps=8, seconds=0.5, signal=False, noise=0.01), t_val=2,
                   recheck=probed(0.2, steps=4), recheck_step=2)


def test_history_json_is_to_dict_and_reads_back(tmp_path):
    history = full_history()
    save_history(tmp_path, history, "accuracy", None, None, "fixed-seed0")
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved == json.loads(json.dumps(history.to_dict()))
    assert History.from_dict(saved) == history


OLD_PROBE = {"lr": 0.05, "best": 0.0316228, "edge": 0.1, "initial_loss": 2.3,
             "steps_per_point": 4, "at_edge": False, "losses": {"0.001": 2.0, "0.0316228": 1.25}}
MEASURED = {"steps": 8, "seconds": 0.5, "signal": True, "noise": 0.01}


@pytest.mark.parametrize("saved", [
    # the first runner's: curves and wall time only
    {"lrs": [0.1, 0.2], "losses": [2.0, 1.5], "epochs": EPOCHS, "wall_time": 3.0},
    # the runner's own encoding before History.to_dict: probe losses keyed by "%.6g", the
    # probe's cost and signal added later
    {"lrs": [0.1, 0.2], "losses": [2.0, 1.5], "epochs": EPOCHS, "wall_time": 3.0, "t_val": 2,
     "probe": OLD_PROBE},
    {"lrs": [0.1, 0.2], "losses": [2.0, 1.5], "epochs": EPOCHS, "wall_time": 3.0, "t_val": 2,
     "probe": {**OLD_PROBE, **MEASURED}},
])
def test_history_json_written_before_still_loads(saved):
    history = History.from_dict(json.loads(json.dumps(saved)))
    assert history.lrs == [0.1, 0.2] and history.epochs == EPOCHS and history.wall_time == 3.0
    if "probe" in saved:
        measured = {k: v for k, v in saved["probe"].items() if k in MEASURED}
        assert history.t_val == 2 and history.probe == probed(0.05, **measured)
        assert history.recheck is None and history.recheck_step is None
    else:
        assert history.probe is None and history.t_val is None
    again = History.from_dict(json.loads(json.dumps(history.to_dict())))
    assert again == history
