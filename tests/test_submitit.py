"""The ``submitit`` executor, through submitit's real local cluster (no SLURM here): one job
array for the sweep, its logs inside the sweep's folder, a failed point or a lost job costing
that point only, and a clear error without the extra."""

from __future__ import annotations

import json
import math
import os
import sys
import types

import pytest
from test_sweep import LR, sweep_runs, write

from metalr import hookimpl
from metalr.cli import main
from metalr.contracts.protocols import ItemFailed

pytest.importorskip("submitit")  # the `submitit` extra (quickstart.sh and tox install it)

LOCAL = {"name": "submitit", "options": {"cluster": "local", "folder": "jobs"}}


@pytest.mark.slow  # submitit's local executor runs a real job array (about 9 s); tox -e slow
def test_a_sweep_as_a_local_job_array(where, tmp_path, monkeypatch, capsys):
    """Two points, each a job of submitit's local cluster: the good one FINISHED, the one whose
    LR explodes at run time (it passes validation) FAILED with its error, and the sweep goes on;
    both nested under one parent; the job files in the sweep's folder and none in the cwd."""
    tmp, client = where
    out = tmp / "results"
    path = write(tmp, sweep={"grid": {LR: [0.05, 1e48]}, "executor": LOCAL}, output_dir=str(out))
    cwd = tmp / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["sweep", str(path)]) == 1  # a point failed
    printed = capsys.readouterr().out
    assert f"point 0 ({LR}=0.05): FINISHED" in printed
    assert f"point 1 ({LR}=1e+48): FAILED (fixed, seed 0: the policy gave LR 1e+48" in printed
    parents, points = sweep_runs(client)
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert sorted(p.data.tags[f"metalr.sweep.{LR}"] for p in points) == ["0.05", "1e+48"]
    store = client()  # each point's method run, nested under the point's run
    runs = store.search_runs([store.get_experiment_by_name("swp").experiment_id])
    method = {p.data.tags[f"metalr.sweep.{LR}"]: [r.info.status for r in runs if r.data.tags.get(
        "mlflow.parentRunId") == p.info.run_id] for p in points}
    assert method == {"0.05": ["FINISHED"], "1e+48": ["FAILED"]}
    folder = out / "swp-sweep"
    table = (folder / "results.md").read_text()
    assert "| 0.05 | " in table and "| 1/1 |\n| 1e+48 | - | 0/1 |" in table  # the diverged point
    records = [json.loads((folder / f"p00{i}/point.json").read_text()) for i in (0, 1)]
    assert [r["status"] for r in records] == ["FINISHED", "FAILED"]
    # one job per point, run by submitit, its files kept where the sweep keeps its own
    assert len(list((folder / "jobs").glob("*_0_result.pkl"))) == 2
    assert len(list((folder / "jobs").glob("*_0_log.err"))) == 2
    assert list(cwd.iterdir()) == []


def test_a_job_that_fails_outside_the_point_is_one_line(tmp_path):
    """A job whose function raises (here a stdlib function, as submitit runs it) is given back
    as ItemFailed with the error's last line and the path of its log, not raised."""
    from metalr.contracts.registry import get_registry

    executor = get_registry().get("executor", "submitit").build(cluster="local")
    got = list(executor.run(math.sqrt, [4.0, -1.0], tmp_path))
    assert 2.0 in got
    (failed,) = [g for g in got if isinstance(g, ItemFailed)]
    assert failed.item == -1.0 and "\n" not in failed.error
    assert failed.error.startswith("job ")
    assert "ValueError: math domain error (log: " in failed.error
    log = failed.error.rsplit("(log: ", 1)[1].rstrip(")")
    assert log.startswith(str(tmp_path / "submitit")) and os.path.exists(log)


@pytest.mark.slow  # submitit waits 15 s for a result file that a killed job never writes
def test_a_killed_job_is_one_line_with_its_state(tmp_path):
    executor = __import__("metalr_executors").SubmititExecutor(cluster="local")
    (failed,) = executor.run(os._exit, [3], tmp_path)
    assert isinstance(failed, ItemFailed) and "ended without a result (state" in failed.error


def test_a_lost_point_is_written_failed_and_the_sweep_goes_on(where, registry, capsys):
    """What the sweep does with an executor's ItemFailed (a job killed by the cluster): the
    point's record FAILED with the error, the other points as they ended, exit 1."""
    class LosesTheLast:  # a batch system whose last job was killed before its point wrote
        def run(self, call, items, folder):
            for item in items[:-1]:
                yield call(item)
            yield ItemFailed(items[-1], "job 7_1: ended without a result (state OUT_OF_MEMORY)")

    @hookimpl
    def register_executors(register):
        register("loses-the-last", LosesTheLast)

    if "loses-the-last" not in registry.names("executor"):
        registry.add_plugin(types.SimpleNamespace(register_executors=register_executors),
                            "tests:loses")
    tmp, _ = where
    path = write(tmp, sweep={"grid": {LR: [0.05, 0.1]}, "executor": "loses-the-last"},
                 tracking="none")
    assert main(["sweep", str(path)]) == 1
    printed = capsys.readouterr().out
    assert f"point 0 ({LR}=0.05): FINISHED" in printed
    assert f"point 1 ({LR}=0.1): FAILED (job 7_1: ended without a result (state OUT_OF_MEMORY))"\
        in printed
    record = json.loads((tmp / "out/swp-sweep/p001/point.json").read_text())
    assert record["status"] == "FAILED" and "OUT_OF_MEMORY" in record["error"]
    assert "| 0.1 | - | 0/1 |" in (tmp / "out/swp-sweep/results.md").read_text()


def test_without_the_extra_one_line_names_the_key_and_the_fix(where, monkeypatch, capsys):
    tmp, _ = where
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    path = write(tmp, sweep={"grid": {LR: [0.1]}, "executor": LOCAL})
    assert main(["sweep", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "metalr: sweep.executor: 'submitit': the submitit executor needs the `submitit` extra: "
        "pip install 'metalr[submitit]'")
    assert not (tmp / "out").exists() and not (tmp / "store.db").exists()  # nothing started


def test_its_options_are_checked_before_any_point_starts(where, capsys):
    tmp, _ = where
    bad = {"name": "submitit", "options": {"cluster": "slurmm", "partiton": "gpu"}}
    assert main(["sweep", str(write(tmp, sweep={"grid": {LR: [0.1]}, "executor": bad}))]) == 2
    err = capsys.readouterr().err
    assert "sweep.executor.options.cluster: " in err
    assert "sweep.executor.options.partiton: unknown key; did you mean 'partition'?" in err


@pytest.mark.slow  # two local jobs that must get going first: about a minute on 2 loaded cores
def test_ctrl_c_cancels_the_jobs_and_ends_the_sweep_killed(tmp_path):
    """SIGINT to the process group, as a terminal's Ctrl-C: exit 130, the parent KILLED, no job
    process left. submitit's local runner SIGKILLs a point a second after SIGINT, so a loaded
    machine may leave a point's runs RUNNING: `metalr runs --clean` marks those KILLED."""
    import signal
    import subprocess
    import time

    from mlflow.tracking import MlflowClient
    from test_sweep import RECIPE

    path = write(tmp_path, train={**RECIPE["train"], "epochs": 400},
                 sweep={"grid": {LR: [0.05, 0.1]}, "executor": LOCAL})
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "metalr.cli", "sweep", str(path), "-q"],
                            cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    folder = tmp_path / "out/swp-sweep"
    deadline = time.monotonic() + 120
    while len(list(folder.glob("p00*/*/fixed-seed0/checkpoint.pt"))) < 2:
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the points did not start: {proc.communicate()[0]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    deadline = time.monotonic() + 30  # the jobs' processes end after the sweep's own
    with pytest.raises(ProcessLookupError):  # and nothing of the group is left
        while time.monotonic() < deadline:
            os.killpg(proc.pid, 0)
            time.sleep(0.5)
    assert main(["runs", "--clean", "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("swp")
    statuses = {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}
    assert statuses["swp-sweep"] == "KILLED" and set(statuses.values()) == {"KILLED"}, statuses
