"""Sweep workers die with their parent: after ``kill -9`` of ``metalr sweep`` (or of any process
driving the ``local`` executor) no worker trains on as an orphan, holding memory and the
caller's stdout. On Linux through the kernel's parent-death signal, and without it through the
workers' polling of ``getppid``; a parent-death signal sent because the *thread* that spawned
the workers ended (the process living on) is not taken for the parent's death."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.faults,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="reads /proc; kills process groups")]

PARENT = '''
import os, sys, threading, time
from pathlib import Path

from metalr_executors.local import LocalExecutor


def point(seconds):
    Path(f"ready-{os.getpid()}").touch()
    time.sleep(seconds)
    return os.getpid()


if __name__ == "__main__":
    results = LocalExecutor(workers=2).run(point, [float(s) for s in sys.argv[2:]], Path("."))
    if sys.argv[1] == "thread":  # the workers are spawned by a thread that then ends
        first = []
        spawner = threading.Thread(target=lambda: first.append(next(results)))
        spawner.start()
        spawner.join()
        results = [*first, *results]
    print(len(list(results)), "points", flush=True)
'''


def alive(group: int) -> list[int]:
    """The processes of ``group`` that have not exited. A zombie counts as gone: an orphan is
    reaped by whichever process adopted it, which in a container may never do so."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            state, _, pgrp = stat.read_text().rpartition(")")[2].split()[:3]
            if int(pgrp) == group and state not in ("Z", "X"):
                found.append(int(stat.parent.name))
    return found


def gone_within(group: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := alive(group)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def wait_for(condition, seconds: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{what} did not happen: {proc.communicate(timeout=30)}")
        time.sleep(0.1)


@contextlib.contextmanager
def session(args: list[str], cwd: Path, env: dict[str, str] | None = None):
    """A process in its own session (so its group can be searched and, whatever the test
    found, killed at the end), stdout and stderr piped like a caller's."""
    proc = subprocess.Popen(args, cwd=cwd, env={**os.environ, **(env or {})}, text=True,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
            proc.communicate(timeout=30)


@pytest.mark.parametrize("notice", [  # polling is what other systems have; Linux needs none
    "pdeathsig", pytest.param("polling", marks=pytest.mark.slow)])
def test_pool_workers_die_with_their_parent(tmp_path, notice):
    """Two workers sleeping in their points; kill -9 of the pool's process: both end within
    seconds, and the caller's pipes reach end of file (no orphan holds them)."""
    (tmp_path / "parent.py").write_text(PARENT)
    env = {"METALR_FAULT_NO_PDEATHSIG": "1" if notice == "polling" else "0"}
    with session([sys.executable, "parent.py", "kill", "600", "600"], tmp_path, env) as proc:
        wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 2, 60, proc, "two points")
        workers = {int(p.name.removeprefix("ready-")) for p in tmp_path.glob("ready-*")}
        assert workers <= set(alive(proc.pid))
        proc.kill()
        began = time.monotonic()
        out, err = proc.communicate(timeout=10)  # end of file: nobody holds stdout/stderr
        assert gone_within(proc.pid, 5) == []
        assert time.monotonic() - began < 10
        assert "Traceback" not in err


def test_workers_spawned_by_a_thread_that_ended_live_on(tmp_path):
    """Linux sends the parent-death signal when the spawning thread ends; the process is alive,
    so the worker still sleeping in its point must finish it and hand back its result."""
    (tmp_path / "parent.py").write_text(PARENT)
    with session([sys.executable, "parent.py", "thread", "0", "3"], tmp_path) as proc:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == "2 points"


@pytest.mark.slow  # a real sweep, two spawned workers training: about a minute on 2 cores
def test_kill_9_of_metalr_sweep_leaves_no_worker_behind(tmp_path):
    """The real CLI with two workers, both points training; kill -9 of `metalr sweep`: every
    process it started is gone within seconds, and each point stopped as on SIGTERM: its
    record KILLED and its MLflow run KILLED (only the sweep's own run, whose process was
    killed outright, is left RUNNING, for `metalr runs --clean`)."""
    from mlflow.tracking import MlflowClient

    lr = "methods.fixed.lr_policy.options.lr"
    recipe = {
        "name": "swp",
        "task": {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "train": {"epochs": 5000, "batch_size": 64, "device": "cpu", "threads": 1},
        "methods": {"fixed": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                              "lr_policy": {"name": "fixed", "options": {"lr": 0.05}}}},
        "sweep": {"grid": {lr: [0.01, 0.1]}, "seeds": [0],
                  "executor": {"name": "local", "options": {"workers": 2}}},
        "output_dir": "out",
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    store = f"sqlite:///{tmp_path / 'store.db'}"
    folder = tmp_path / "out/swp-sweep"
    with session([sys.executable, "-m", "metalr.cli", "sweep", "sweep.yaml", "-q"], tmp_path,
                 {"MLFLOW_TRACKING_URI": store}) as proc:
        wait_for(lambda: len(list(folder.glob("p00*/*/fixed-seed0/checkpoint.pt"))) == 2, 180,
                 proc, "both points training")
        assert len(alive(proc.pid)) >= 3  # the CLI and its two workers (and a resource tracker)
        proc.kill()
        began = time.monotonic()
        out, err = proc.communicate(timeout=30)
        assert gone_within(proc.pid, 5) == [], err
        assert time.monotonic() - began < 30
    records = [json.loads(p.read_text()) for p in folder.glob("p00*/point.json")]
    assert [r["status"] for r in records] == ["KILLED", "KILLED"], err
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("swp").experiment_id])
    running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert running == ["swp-sweep"], {r.info.run_name: r.info.status for r in runs}
