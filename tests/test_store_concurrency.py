"""Processes started together into one new SQLite MLflow store lose nothing.

MLflow migrates a new store without a lock and two processes creating one experiment meet a
UNIQUE error; the tracker does both under a file lock beside the database. Real processes, a
real store: four trackers released at the same instant; two real `metalr run`s (slow).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.faults

WORKER = """
import sys, time
from pathlib import Path
from metalr_mlflow.tracker import MLflowTracker
uri, tag, gate = sys.argv[1], sys.argv[2], Path(sys.argv[3])
(gate / tag).touch()
while len(list(gate.iterdir())) < 4:  # all four meet the new store at the same instant
    time.sleep(0.001)
tracker = MLflowTracker(tracking_uri=uri)
run = tracker.start_run("race", f"worker-{tag}", {"tag": tag})
tracker.log_metrics(run, {"x": float(tag)}, 0)
tracker.end_run(run, "FINISHED")
tracker.close()
"""

RECIPE = """
name: race
task: {name: mnist1d, options: {meta_size: 100, num_samples: 600}}
model: {name: mlp, options: {hidden: [8]}}
train: {epochs: 1, seeds: [0], batch_size: 128, threads: 1}
methods:
  fixed:
    optimizer: sgd
    lr_policy: {name: fixed, options: {lr: 0.1}}
tracking: mlflow
"""


def _env(uri: str) -> dict[str, str]:
    root = Path(__file__).parents[1]
    return {**os.environ, "MLFLOW_TRACKING_URI": uri,
            "PYTHONPATH": os.pathsep.join([str(root), str(root / "plugins"), *sys.path])}


def _finish(procs: list[subprocess.Popen]) -> None:
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]


def _new_store(tmp_path: Path) -> str:
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    return f"sqlite:///{db}"


@pytest.mark.slow  # four processes into one new store (about 10 s); tox -e slow
def test_four_trackers_released_at_once_into_a_new_store(tmp_path):
    uri, gate = _new_store(tmp_path), tmp_path / "gate"
    gate.mkdir()
    (tmp_path / "worker.py").write_text(WORKER)
    _finish([subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), uri, str(i), str(gate)],
                              env=_env(uri), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(4)])

    client = MlflowClient(tracking_uri=uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "race"]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == [f"worker-{i}" for i in range(4)]
    for i in range(4):
        run = runs[f"worker-{i}"]
        assert run.info.status == "FINISHED" and run.data.metrics == {"x": float(i)}
        assert run.data.params == {"tag": str(i)}


@pytest.mark.slow  # about a minute on a busy machine: two interpreters train and log
def test_two_metalr_runs_at_once_into_a_new_store(tmp_path):
    uri = _new_store(tmp_path)
    (tmp_path / "race.yaml").write_text(textwrap.dedent(RECIPE))
    _finish([subprocess.Popen([sys.executable, "-m", "metalr.cli", "run", "-q",
                               str(tmp_path / "race.yaml"), f"output_dir={tmp_path / f'out{i}'}"],
                              env=_env(uri), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)])

    client = MlflowClient(tracking_uri=uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "race"]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2 and len(children) == 2
    assert all(r.info.status == "FINISHED" for r in parents + children)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {
        r.info.run_id for r in parents}
    assert all("test_accuracy" in r.data.metrics for r in children)
