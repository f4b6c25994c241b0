"""`metalr run` into a real, temporary MLflow store: runs, metrics, artifacts, saved nets."""

from __future__ import annotations

import json
import types
from pathlib import Path

import higher
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from metalr import hookimpl
from metalr.cli import main
from metalr.contracts.protocols import RunInfo, StepContext
from metalr.engine.weights import load_meta_learner

RECIPE = {
    "name": "e2e",
    "task": {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}},
    "model": {"name": "mlp", "options": {"hidden": [32]}},
    "train": {"epochs": 2, "seed": 0, "batch_size": 64, "device": "cpu"},
    "methods": {
        "mlrsnet": {"optimizer": {"name": "recording-sgd", "options": {"momentum": 0.9}},
                    "lr_policy": {"name": "mlrsnet", "options": {"gamma": 0.5}},
                    "meta": {"t_val": 3, "save_epochs": [1]}},
        "fixed": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                  "lr_policy": {"name": "fixed", "options": {"lr": 0.05}}},
    },
}


class RecordingSGD(torch.optim.SGD):
    """torch's SGD that remembers the LR each real step was taken with."""

    applied: list[float] = []

    def step(self, closure=None):
        RecordingSGD.applied.append(self.param_groups[0]["lr"])
        return super().step(closure)


@hookimpl
def register_optimizers(register):
    register("recording-sgd", lambda params, momentum: RecordingSGD(params, lr=0.0, momentum=momentum))


@pytest.fixture(scope="module")
def recorder(registry):
    higher.optim.register_optim(RecordingSGD, higher.optim.DifferentiableSGD)
    if "recording-sgd" not in registry.names("optimizer"):
        registry.add_plugin(types.SimpleNamespace(register_optimizers=register_optimizers),
                            "tests:recorder")
    return RecordingSGD


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tmp_path, MlflowClient(uri)


def runs_of(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    return parent, children


def test_run_tracks_everything_and_saved_theta_reproduces_lrs(run_dir, recorder, capsys):
    tmp, client = run_dir
    recipe = tmp / "e2e.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    recorder.applied.clear()
    assert main(["run", str(recipe), "-q"]) == 0
    out = capsys.readouterr().out
    assert "| mlrsnet |" in out and "| fixed |" in out and "mlflow ui" in out

    parent, children = runs_of(client, "e2e")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert set(children) == {"mlrsnet/seed0", "fixed/seed0"}
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert parent[0].data.params["train.epochs"] == "2"
    parent_files = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {"recipe.yaml", "lr.png", "curves.png", "results.md", "results.csv"} <= parent_files

    run = children["mlrsnet/seed0"]
    run_id = run.info.run_id
    for key in ["train_batch_loss", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                "meta_loss", "virtual_meta_loss", "lr"]:
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [1, 2], key
    step_lr = sorted(client.get_metric_history(run_id, "step_lr"), key=lambda m: m.step)
    steps = len(step_lr)
    assert steps == 2 * 6  # 600 samples: 480 train - 100 meta = 380, batch 64: 6 steps an epoch
    # the LR applied at each step is exactly the LR logged for it
    assert [m.value for m in step_lr] == recorder.applied
    assert len(client.get_metric_history(run_id, "step_train_loss")) == steps
    files = {a.path for a in client.list_artifacts(run_id)}
    assert {"lr.png", "curves.png"} <= files
    theta_files = {a.path for a in client.list_artifacts(run_id, "theta")}
    assert theta_files == {"theta/theta-epoch0001.safetensors", "theta/theta-final.safetensors"}

    # theta from the tracked safetensors, meta-tested on the same run: a frozen net must give
    # the LRs that the saved net gives for the same sequence of losses
    local = Path(client.download_artifacts(run_id, "theta/theta-final.safetensors", str(tmp)))
    net = load_meta_learner(local)
    assert float(net.gamma) == pytest.approx(0.5)
    from metalr.scheduler.learned import resolve_nets  # an MLflow run as the source of a transfer

    (via_run,) = resolve_nets(f"runs:/{run_id}/theta/theta-final.safetensors")
    assert via_run.read_bytes() == local.read_bytes()
    test_recipe = dict(RECIPE, name="e2e-test", methods={"frozen": {
        "optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
        "lr_policy": {"name": "mlrsnet", "options": {"gamma": 0.5}},
        "meta": {"mode": "meta-test", "weights": str(local)}}})
    recipe.write_text(yaml.safe_dump(test_recipe))
    assert main(["run", str(recipe), "-q"]) == 0
    _, frozen_children = runs_of(client, "e2e-test")
    frozen_id = frozen_children["frozen/seed0"].info.run_id
    logged = sorted(client.get_metric_history(frozen_id, "step_lr"), key=lambda m: m.step)
    losses = sorted(client.get_metric_history(frozen_id, "step_train_loss"), key=lambda m: m.step)
    net.start(RunInfo(2, 6, None, torch.device("cpu"), 0, types.SimpleNamespace(default_gamma=1.0)))
    replay = []
    for m in losses:
        loss = torch.tensor(m.value, dtype=torch.float32)
        replay.append(net.lr(StepContext(m.step, 0, loss, loss, [], [], None, None)))
    assert [m.value for m in logged] == pytest.approx(replay, rel=1e-6)
    assert len(set(replay)) > 1  # the net's LR really moves with the loss


def test_interrupted_run_is_marked_killed(run_dir, monkeypatch):
    tmp, client = run_dir
    recipe = tmp / "e2e.yaml"
    recipe.write_text(yaml.safe_dump(dict(RECIPE, methods={"fixed": RECIPE["methods"]["fixed"]})))
    from metalr.engine import algorithm as engine

    def interrupt(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.Engine, "evaluate", interrupt)  # a Ctrl-C at the first evaluation
    assert main(["run", str(recipe), "-q"]) == 130
    parent, children = runs_of(client, "e2e")
    assert parent[0].info.status == "KILLED" and children["fixed/seed0"].info.status == "KILLED"


def test_untracked_run_writes_only_its_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "e2e.yaml"
    data = dict(RECIPE, tracking="none", output_dir=str(tmp_path / "out"),
                methods={"fixed": RECIPE["methods"]["fixed"]})
    recipe.write_text(yaml.safe_dump(data))
    assert main(["run", str(recipe), "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e2e.yaml", "out"]
    (folder,) = (tmp_path / "out").iterdir()
    history = json.loads((folder / "fixed-seed0" / "history.json").read_text())
    assert len(history["lrs"]) == 12 and set(history["lrs"]) == {0.05}
