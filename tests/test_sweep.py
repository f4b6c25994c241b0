"""`metalr sweep`: points validated before any starts, nested MLflow runs tagged with their
values, tables and figures, finished points skipped, the index mode and the local executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from metalr.cli import main

LR = "methods.fixed.lr_policy.options.lr"
RECIPE = {
    "name": "swp",
    "task": {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "threads": 1},
    "methods": {"fixed": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                          "lr_policy": {"name": "fixed", "options": {"lr": 0.05}}}},
    "sweep": {"grid": {LR: [0.01, 0.1]}, "seeds": [0],
              "executor": {"name": "local", "options": {"workers": 2}}},
    "output_dir": "out",
}


def write(tmp_path: Path, **changes) -> Path:
    recipe = {**RECIPE, **changes}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def sweep_runs(client: MlflowClient, name: str = "swp"):
    client = client() if callable(client) else client
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    points = [r for r in runs if "metalr.sweep.index" in r.data.tags
              and r.data.tags.get("mlflow.parentRunId") in {p.info.run_id for p in parents}]
    return parents, points


def test_every_point_is_validated_before_any_starts(where, capsys):
    tmp, _ = where
    path = write(tmp, sweep={"grid": {"train.epochs": [1, 0], "train.batch_sise": [8]}})
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    # the bad value of point 1 (and only it), named with its point; the typo with did-you-mean
    assert "train.epochs: 0: Input should be greater than 0 [sweep point 1: train.epochs=0" in err
    assert "[sweep point 0" not in err.split("train.epochs:")[1].split("\n")[0]
    assert "did you mean 'batch_size'" in err
    assert not (tmp / "out").exists() and not (tmp / "store.db").exists()  # nothing started


def test_sweep_block_is_checked(where, capsys):
    tmp, _ = where
    assert main(["sweep", str(write(tmp, sweep={"grid": {"output_dir": ["a", "b"]}}))]) == 2
    assert "sweep.grid: " in capsys.readouterr().err
    bad = write(tmp, sweep={"grid": {LR: [0.1]}, "executor": {"name": "locl"}})
    assert main(["sweep", str(bad)]) == 2
    assert "did you mean 'local'" in capsys.readouterr().err
    plain = {k: v for k, v in RECIPE.items() if k != "sweep"}
    (tmp / "plain.yaml").write_text(yaml.safe_dump(plain))
    assert main(["sweep", str(tmp / "plain.yaml")]) == 2
    assert "no sweep: block" in capsys.readouterr().err


def test_index_mode_two_indices_one_parent_then_resume_skips(where, capsys):
    tmp, client = where
    path = write(tmp, sweep={"grid": {LR: [0.01, 0.1]}, "seeds": [0, 1]})
    assert main(["sweep", str(path), "--list"]) == 0
    listed = capsys.readouterr().out.strip().splitlines()
    assert listed == [f"{i}\t{LR}={lr},seed={s}"
                      for i, (lr, s) in enumerate([(0.01, 0), (0.01, 1), (0.1, 0), (0.1, 1)])]
    assert main(["sweep", str(path), "--index", "1", "-q"]) == 0
    assert main(["sweep", str(path), "--index", "2", "-q"]) == 0
    parents, points = sweep_runs(client)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # never left RUNNING
    assert sorted(p.data.tags["metalr.sweep.index"] for p in points) == ["1", "2"]
    by_index = {p.data.tags["metalr.sweep.index"]: p for p in points}
    assert by_index["1"].data.tags[f"metalr.sweep.{LR}"] == "0.01"
    assert by_index["2"].data.tags["metalr.sweep.seed"] == "0"
    assert all(p.info.status == "FINISHED" for p in points)
    # each point's own method run is nested under the point's run
    store = client()
    exp = store.get_experiment_by_name("swp").experiment_id
    children = [r for r in store.search_runs([exp])
                if r.data.tags.get("mlflow.parentRunId") == by_index["1"].info.run_id]
    assert [c.info.run_name for c in children] == ["fixed/seed1"]
    table = (tmp / "out/swp-sweep/results.md").read_text()
    assert (f"| {LR} | fixed: final test accuracy | fixed: seed 0 | fixed: seed 1 | "
            "points finished |") in table
    ran = json.loads((tmp / "out/swp-sweep/p001/point.json").read_text())["finals"]["fixed"][0]
    assert f"| 0.01 | {ran:.4f} | - | {ran:.4f} | 1/2 |" in table  # point 1: lr 0.01, seed 1
    assert "| 0.1 | " in table and table.rstrip().endswith("| 1/2 |")
    assert (tmp / f"out/swp-sweep/sweep-{LR}.png").stat().st_size > 1000
    # again: point 1 is skipped, no new run
    capsys.readouterr()
    assert main(["sweep", str(path), "--index", "1"]) == 0
    assert "point 1 (" in capsys.readouterr().out
    assert len(sweep_runs(client)[1]) == 2


def test_a_changed_grid_is_refused_in_the_same_folder(where, capsys):
    tmp, _ = where
    path = write(tmp, sweep={"grid": {LR: [0.01, 0.1]}}, tracking="none")
    folder = tmp / "out/swp-sweep"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"parent_run_id": None, "points": ["other"]}))
    assert main(["sweep", str(path), "--index", "0"]) == 1
    assert "holds a sweep with other points" in capsys.readouterr().err


@pytest.mark.slow  # spawned workers train the points (about 9 s); tox -e slow
def test_local_executor_runs_points_in_parallel_workers(where, capsys):
    """Two points, two spawned workers: both nested runs FINISHED, tagged; mean ± std; and a
    second invocation skips them all (no worker started, no new run)."""
    tmp, client = where
    path = write(tmp)
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count(": FINISHED") == 2
    parents, points = sweep_runs(client)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(p.data.tags[f"metalr.sweep.{LR}"] for p in points) == ["0.01", "0.1"]
    assert {p.info.status for p in points} == {"FINISHED"}
    records = [json.loads((tmp / f"out/swp-sweep/p00{i}/point.json").read_text()) for i in (0, 1)]
    assert [len(r["finals"]["fixed"]) for r in records] == [1, 1]
    # the workers ran single-threaded, as the recipe and the executor ask
    provenance = [json.loads(next(Path(r["run_dir"]).glob("provenance.json")).read_text())
                  for r in records]
    assert {p["metalr.torch_threads"] for p in provenance} == {"1"}
    assert main(["sweep", str(path)]) == 0
    assert capsys.readouterr().out.count("FINISHED before, skipped") == 2
    assert len(sweep_runs(client)[1]) == 2


@pytest.mark.slow  # two spawned workers that must get going first: about a minute on 2 cores
def test_ctrl_c_stops_every_worker_and_marks_runs_killed(tmp_path):
    """SIGINT to the process group, as a terminal's Ctrl-C: exit 130, no run left RUNNING,
    and running the sweep again continues the killed points."""
    path = write(tmp_path, train={**RECIPE["train"], "epochs": 400})
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'store.db'}"}
    proc = subprocess.Popen([sys.executable, "-m", "metalr.cli", "sweep", str(path), "-q"],
                            cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    folder = tmp_path / "out/swp-sweep"
    while time.monotonic() < deadline:  # both points training: a checkpoint in each
        if len(list(folder.glob("p00*/*/fixed-seed0/checkpoint.pt"))) == 2:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"the points did not start: {proc.communicate()[0]}")
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("swp")
    statuses = {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}
    assert "RUNNING" not in statuses.values() and "KILLED" in statuses.values(), statuses
    assert statuses["swp-sweep"] == "KILLED"
    records = [json.loads(p.read_text()) for p in folder.glob("p00*/point.json")]
    assert {r["status"] for r in records} == {"KILLED"}


def test_executors_are_plugins_and_conform(registry):
    from metalr.testing import check_component

    local = registry.get("executor", "local")
    assert local.source == "metalr:executors" or local.source.endswith(":executors")
    check_component(local, {"workers": 2})

    class Lossy:  # drops the last point's result: the check must see it
        def run(self, call, items, folder):
            for item in items[:-1]:
                yield call(item)

    broken = type(local)("executor", "lossy", lambda: Lossy(), None, "tests")
    with pytest.raises(AssertionError, match="gave back"):
        check_component(broken, {})


def test_an_executor_that_fails_ends_in_one_line(where, registry, capsys):
    import types

    from metalr import hookimpl

    class Dies:  # as a pool whose worker was killed
        def run(self, call, items, folder):
            raise RuntimeError("A process in the process pool was terminated abruptly")
            yield

    @hookimpl
    def register_executors(register):
        register("dies", Dies)

    if "dies" not in registry.names("executor"):
        registry.add_plugin(types.SimpleNamespace(register_executors=register_executors),
                            "tests:dies")
    tmp, _ = where
    path = write(tmp, sweep={"grid": {LR: [0.1]}, "executor": "dies"}, tracking="none")
    assert main(["sweep", str(path)]) == 1
    err = capsys.readouterr().err
    assert "the executor failed (RuntimeError: A process" in err and "Traceback" not in err
    assert (tmp / "out/swp-sweep/results.md").exists()  # the tables of what ran, all the same
