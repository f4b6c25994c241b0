"""The store laid out the MLflow way, from a real `metalr run` into a temporary SQLite store:
MLflow's own INFO lines only with -v, the standard tags that fill the UI's User and Source
columns, each child run's task and model, each method's mean on the parent, and a meta-learned
net as a logged model that LearnedLR loads back."""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient

from metalr.cli import main

RECIPE = {
    "name": "habits",
    "task": {"name": "digits"},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 1, "seeds": [0], "batch_size": 64, "threads": 1},
    "methods": {"fixed": {"optimizer": {"name": "sgd"},
                          "lr_policy": {"name": "fixed", "options": {"lr": 0.1}}}},
}
LEARNED = {"learned": {"optimizer": {"name": "sgd"},
                       "lr_policy": {"name": "mlrsnet", "options": {"gamma": 0.2}},
                       "meta": {"t_val": 5}}}


def run(tmp_path, monkeypatch, capfd, *flags: str, recipe=RECIPE) -> tuple[str, str]:
    """``metalr run`` into a new store; (its stderr, the store's URI)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**recipe, "output_dir": str(tmp_path / "out")}))
    capfd.readouterr()
    assert main(["run", str(path), "-q", *flags]) == 0
    return capfd.readouterr().err, uri


def test_mlflow_info_lines_only_with_verbose(tmp_path, monkeypatch, capfd):
    err, _ = run(tmp_path / "quiet", monkeypatch, capfd)
    assert "INFO mlflow" not in err, err
    err, _ = run(tmp_path / "verbose", monkeypatch, capfd, "-v")
    assert "INFO mlflow.store.db.utils: Creating initial MLflow database tables" in err


def test_runs_carry_mlflow_tags_task_model_and_a_logged_model(tmp_path, monkeypatch, capfd):
    import torch

    from metalr import LearnedLR

    recipe = {**RECIPE, "methods": {**RECIPE["methods"], **LEARNED}}
    _, uri = run(tmp_path, monkeypatch, capfd, recipe=recipe)
    client = MlflowClient(uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "habits"]
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3
    for r in runs:
        tags = r.data.tags
        # the command line when `metalr` ran it; from Python (here) there is none
        assert tags["mlflow.source.name"] == tags.get("metalr.command", "metalr")
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
        if tags.get("metalr.git_commit"):
            assert tags["mlflow.source.git.commit"] == tags["metalr.git_commit"]
    children = {r.data.params["method"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    for method, child in children.items():
        assert child.data.params["task.name"] == "digits"
        assert child.data.params["model.name"] == "mlp"
        assert child.data.params["model.options.hidden"] == "[16]"
        # one seed: the parent's mean is that seed's final test accuracy
        assert parent.data.metrics[f"final_test_accuracy/{method}"] == pytest.approx(
            child.data.metrics["test_accuracy"])
    assert not any("/seed" in key for key in parent.data.metrics)
    (model,) = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert model.source_run_id == children["learned"].info.run_id
    assert model.name == "habits-learned-seed0" and model.params["lr_policy"] == "mlrsnet"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    from_model = LearnedLR.from_pretrained(opt, f"models:/{model.model_id}", total_steps=4)
    from_run = LearnedLR.from_pretrained(
        opt, f"runs:/{children['learned'].info.run_id}/theta/theta-final.safetensors",
        total_steps=4)
    assert from_model.step(1.0) == from_run.step(1.0) > 0


def test_a_store_without_logged_models_keeps_the_run_going(tmp_path):
    """MLflow 2, or a store that refuses logged models: log_model warns once and returns None
    (the run's theta/ artifact holds the net), never failing the run that trained it."""
    from metalr_mlflow.tracker import MLflowTracker

    tracker = MLflowTracker(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    try:
        run_id = tracker.start_run("refusing", "learned/seed0", {})
        net = tmp_path / "theta-final.safetensors"
        net.write_bytes(b"not read here")

        def refuse(*args, **kwargs):
            raise RuntimeError("logged models are not supported by this store")

        tracker.client.create_logged_model = refuse
        with pytest.warns(UserWarning, match="not logged as a model"):
            assert tracker.log_model(run_id, str(net), "refusing-learned-seed0", {}, "# card") \
                is None
        tracker.end_run(run_id, "FINISHED")
    finally:
        tracker.close()
    assert MlflowClient(f"sqlite:///{tmp_path / 'm.db'}").get_run(run_id).info.status == \
        "FINISHED"
