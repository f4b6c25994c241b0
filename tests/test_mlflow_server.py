"""metalr against a real MLflow tracking server (`mlflow server` over HTTP, its own SQLite store
and artifact folder): a run's params, tags and logged model land there, LearnedLR loads the
model back through the server, and `metalr report` reads it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from metalr.cli import main

RECIPE = {
    "name": "served",
    "task": {"name": "digits"},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 1, "seeds": [0], "batch_size": 64, "threads": 1},
    "methods": {
        "fixed": {"optimizer": {"name": "sgd"},
                  "lr_policy": {"name": "fixed", "options": {"lr": 0.1}}},
        "learned": {"optimizer": {"name": "sgd"},
                    "lr_policy": {"name": "mlrsnet", "options": {"gamma": 0.2}},
                    "meta": {"t_val": 5}},
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` on a free local port; its URI. Stopped after the module."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=(root / "server.log").open("w"))
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mlflow server did not start:\n"
                        + (root / "server.log").read_text()[-2000:])
        time.sleep(0.5)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.slow  # a real MLflow server process, a run and a report through it (about 14 s)
def test_a_run_a_logged_model_and_a_report_through_a_server(server, tmp_path, monkeypatch):
    from metalr import LearnedLR

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        **RECIPE, "tracking": {"name": "mlflow", "options": {"tracking_uri": server}},
        "output_dir": str(tmp_path / "out")}))
    assert main(["run", str(recipe), "-q"]) == 0
    client = MlflowClient(server)
    exp = client.get_experiment_by_name("served")
    runs = client.search_runs([exp.experiment_id])
    children = {r.data.params["method"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {"fixed", "learned"} and len(runs) == 3
    for child in children.values():
        assert child.info.status == "FINISHED" and child.data.params["task.name"] == "digits"
        assert child.data.tags["mlflow.user"] and child.data.tags["mlflow.source.type"] == "LOCAL"
    (model,) = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert model.source_run_id == children["learned"].info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = LearnedLR.from_pretrained(opt, f"models:/{model.model_id}", total_steps=4)
    assert 0 < scheduler.step(1.0) <= 0.2
    site = tmp_path / "site"
    assert main(["report", "served", "--out", str(site), "--tracking-uri", server, "-q"]) == 0
    page = (site / "index.html").read_text()
    assert f"runs:/{children['learned'].info.run_id}/theta/theta-final.safetensors" in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.yaml", "site"]
