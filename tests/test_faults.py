"""Fault injection: kill -9, Ctrl-C, NaN losses, exploding LRs, a full disk, corrupt checkpoints.

Real runs of a tiny recipe (digits, a small MLP, one thread) in subprocesses of the real CLI,
each with its own MLflow store; a killed run resumed with `metalr resume` must end with the
LR history and final metrics of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("restore_threads")]
import torch
import yaml
from torch import nn

from metalr import hookimpl
from metalr.contracts.registry import Registry
from metalr.engine import checkpoint
from metalr.recipes.schema import Recipe
from metalr.running.runner import Runner

SGD = {"name": "sgd", "options": {"momentum": 0.9}}
RECIPE = {
    "name": "faults",
    "task": {"name": "digits"},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 4, "batch_size": 64, "device": "cpu", "threads": 1, "seeds": [0]},
    "methods": {
        "multistep": {"optimizer": SGD, "lr_policy": {"name": "multistep",
                                                      "options": {"lr": 0.05}}},
        "mlrsnet": {"optimizer": SGD, "lr_policy": {"name": "mlrsnet"}},  # probed scale
    },
}
JOBS = ["multistep-seed0", "mlrsnet-seed0"]


def write_recipe(tmp: Path, **changes) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(tmp / "out"), **changes},
                                   sort_keys=False))
    return path


def metalr(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The real CLI in a subprocess, tracking into ``tmp``'s own store."""
    return subprocess.Popen(
        [sys.executable, "-m", "metalr.cli", *args], cwd=tmp, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'store.db'}",
             **(env or {})})


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run_dir(tmp: Path) -> Path | None:
    found = sorted((tmp / "out").glob("faults-*"))
    return found[0] if found else None


def outcome(folder: Path) -> dict[str, object]:
    """Per run: LR and loss of every step, every epoch's metrics but the wall time, the probe
    but its seconds."""
    out = {}
    for job in JOBS:
        h = json.loads((folder / job / "history.json").read_text())
        probe = h["probe"] and {k: v for k, v in h["probe"].items() if k != "seconds"}
        out[job] = {"lrs": h["lrs"], "losses": h["losses"], "probe": probe,
                    "epochs": [{k: v for k, v in e.items() if k != "wall_time"}
                               for e in h["epochs"]]}
    return out


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the fault: {proc.communicate()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the point of the fault")
        time.sleep(0.005)


def mlflow_runs(tmp: Path) -> dict[str, tuple[str, str]]:
    """``run name -> (run id, status)`` of the store's runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'store.db'}")
    exp = client.get_experiment_by_name("faults")
    return {r.info.run_name: (r.info.run_id, r.info.status)
            for r in client.search_runs([exp.experiment_id])}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, object]:
    """The uninterrupted run: same machine, same thread count (untracked: tracking has no
    say in the numbers)."""
    tmp = tmp_path_factory.mktemp("reference")
    code, out, err = finish(metalr(tmp, "run", str(write_recipe(tmp, tracking="none")), "-q"))
    assert code == 0, err
    return outcome(run_dir(tmp))


@pytest.mark.slow  # the default suite's 10 minutes; tox -e faults runs it
def test_kill9_during_a_checkpoint_write_then_resume_is_bit_exact(tmp_path, reference):
    # Checkpoint writes pause half-way; kill -9 the run inside the second write of its second
    # job (the first job finished, the second has one good checkpoint): the probe's result,
    # theta, its Adam state and the LSTM state must all come back. Metrics are held back in
    # the tracker's queue (flush_seconds), so the kill loses them: resume must send them.
    recipe = write_recipe(tmp_path, tracking={"name": "mlflow",
                                              "options": {"flush_seconds": 1000}})
    proc = metalr(tmp_path, "run", str(recipe), "-q", env={checkpoint.SLEEP_ENV: "0.25"})

    def in_second_write():
        folder = run_dir(tmp_path)
        job = folder / JOBS[1] if folder else None
        return job is not None and (job / "checkpoint.pt").exists() and any(
            job.glob(".checkpoint.pt.*.tmp"))

    wait_for(in_second_write, proc)
    proc.kill()
    proc.wait()
    folder = run_dir(tmp_path)
    job = folder / JOBS[1]
    assert any(job.glob(".checkpoint.pt.*.tmp"))  # the write was cut short ...
    state, used = checkpoint.load(job / "checkpoint.pt")  # ... the last good one is whole
    assert used == job / "checkpoint.pt" and state["epoch"] == 1
    before = mlflow_runs(tmp_path)
    assert before["faults"][1] == "RUNNING" and before[JOBS[1].replace("-", "/")][1] == "RUNNING"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'store.db'}")
    assert client.get_metric_history(before["mlrsnet/seed0"][0], "step_lr") == []  # lost

    code, out, err = finish(metalr(tmp_path, "resume", str(folder), "-q"))
    assert code == 0, err
    assert outcome(folder) == reference
    after = mlflow_runs(tmp_path)
    assert set(after) == set(before)  # continued into the same runs, none added
    assert {name: rid for name, (rid, _) in after.items()} == {
        name: rid for name, (rid, _) in before.items()}
    assert {status for _, status in after.values()} == {"FINISHED"}
    for key, count in [("step_lr", len(reference[JOBS[1]]["lrs"])), ("epoch", 4)]:
        steps = [m.step for m in client.get_metric_history(after["mlrsnet/seed0"][0], key)]
        assert sorted(steps) == list(range(key == "epoch", count + (key == "epoch")))  # once


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(4))
def test_kill9_at_a_random_moment_then_resume_is_bit_exact(tmp_path, reference, attempt):
    rng = random.Random(attempt)
    proc = metalr(tmp_path, "run", str(write_recipe(tmp_path)), "-q",
                  env={checkpoint.SLEEP_ENV: str(rng.choice([0, 0.05, 0.2]))})
    wait_for(lambda: run_dir(tmp_path) is not None, proc)
    time.sleep(rng.uniform(0, 4))
    proc.kill()
    proc.wait()
    code, out, err = finish(metalr(tmp_path, "resume", str(run_dir(tmp_path)), "-q"))
    assert code == 0, err
    assert outcome(run_dir(tmp_path)) == reference
    assert {status for _, status in mlflow_runs(tmp_path).values()} == {"FINISHED"}


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "signals"), [(signal.SIGINT, 1), (signal.SIGINT, 3),
                                                 (signal.SIGTERM, 1)])
def test_ctrl_c_writes_what_ran_marks_killed_and_resumes_exactly(tmp_path, reference, signum,
                                                                 signals):
    proc = metalr(tmp_path, "run", str(write_recipe(tmp_path)), "-q",
                  env={checkpoint.SLEEP_ENV: "0.3"})
    wait_for(lambda: run_dir(tmp_path) is not None
             and (run_dir(tmp_path) / JOBS[1] / "checkpoint.pt").exists(), proc)
    for _ in range(signals):  # repeated Ctrl-C, milliseconds apart
        proc.send_signal(signum)
        time.sleep(0.002)
    code, out, err = finish(proc)
    folder = run_dir(tmp_path)
    assert code == 130, err
    assert "Traceback" not in err and "locked" not in err
    assert f"metalr resume {folder}" in err
    table = (folder / "results.md").read_text()
    assert "| multistep |" in table and "KILLED" in table  # the finished one and the partial
    assert (folder / "lr.png").exists()
    partial = json.loads((folder / JOBS[1] / "history.json").read_text())
    assert 0 < len(partial["lrs"]) < len(reference[JOBS[1]]["lrs"])
    statuses = {name: status for name, (_, status) in mlflow_runs(tmp_path).items()}
    assert statuses == {"faults": "KILLED", "multistep/seed0": "FINISHED",
                        "mlrsnet/seed0": "KILLED"}
    code, out, err = finish(metalr(tmp_path, "resume", str(folder), "-q"))
    assert code == 0, err
    assert outcome(folder) == reference
    assert {s for _, s in mlflow_runs(tmp_path).values()} == {"FINISHED"}


def test_runs_clean_marks_runs_of_dead_processes_killed(tmp_path, capsys):
    from metalr.cli import build_parser

    def cli(*args: str) -> str:  # in-process: `metalr runs` needs no fresh interpreter
        parsed = build_parser().parse_args(
            [*args, "--tracking-uri", f"sqlite:///{tmp_path / 'store.db'}"])
        assert parsed.func(parsed) == 0
        return capsys.readouterr().out

    proc = metalr(tmp_path, "run", str(write_recipe(tmp_path)), "-q",
                  env={checkpoint.SLEEP_ENV: "5"})  # slow checkpoints: it is still running
    wait_for(lambda: run_dir(tmp_path) is not None
             and any((run_dir(tmp_path) / JOBS[0]).glob(".checkpoint.pt.*")), proc)
    assert cli("runs").count(" running ") == 2  # alive: its process holds the folder's lock
    assert "marked 0 runs KILLED" in cli("runs", "--clean")
    proc.kill()
    proc.wait()
    assert {s for _, s in mlflow_runs(tmp_path).values()} == {"RUNNING"}
    assert cli("runs").count("stale (process gone)") == 2
    assert "marked 2 runs KILLED" in cli("runs", "--clean")
    assert {s for _, s in mlflow_runs(tmp_path).values()} == {"KILLED"}


# -- in-process faults: a third-party-style model and policy ----------------------------------

class NaNAt(nn.Module):
    """An MLP whose output turns NaN at one training forward pass (as a bad batch would)."""

    def __init__(self, spec, at: int = 5):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        self.at, self.calls = at, 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at + 1:
                out = out * float("nan")
        return out


class Exploding:
    """An LR that grows 1e10-fold every step, past what float32 weights can take."""

    def __init__(self, lr: float = 0.01):
        self.base = lr

    def start(self, run):
        pass

    def lr(self, ctx):
        return self.base * 10.0 ** (10 * ctx.step)

    def end_epoch(self, epoch, metrics):
        pass


class UnreachableData:
    """A task whose data cannot be fetched for seed 1 (say, a download that fails)."""

    def __new__(cls, **options):
        from metalr_digits.task import Digits

        class Task(Digits):
            def setup(self, seed, device):
                if seed == 1:
                    raise ConnectionError("https://data.example/x.npz: connection refused")
                super().setup(seed, device)

        return Task(**options)


class BrokenFactory:
    def __init__(self, **options):
        raise RuntimeError("this policy cannot be built\nsecond line of the message")


@pytest.fixture
def registry():
    @hookimpl
    def register_models(register):
        register("nan-at", NaNAt)

    @hookimpl
    def register_lr_policies(register):
        register("exploding", Exploding)
        register("unbuildable", BrokenFactory)

    @hookimpl
    def register_tasks(register):
        register("unreachable", UnreachableData)

    reg = Registry(strict=False).load_entry_points()
    assert reg.add_plugin(types.SimpleNamespace(register_models=register_models,
                                                register_lr_policies=register_lr_policies,
                                                register_tasks=register_tasks),
                          "tests:faults")
    return reg


def suite(tmp_path, registry, methods, model=None, epochs=2) -> Runner:
    data = {**RECIPE, "output_dir": str(tmp_path), "tracking": {"name": "mlflow", "options": {
        "tracking_uri": f"sqlite:///{tmp_path / 'store.db'}"}},
        "train": {**RECIPE["train"], "epochs": epochs}, "methods": methods}
    if model:
        data["model"] = model
    return Runner(Recipe.model_validate(data), registry=registry, progress=False)


FIXED = {"optimizer": SGD, "lr_policy": {"name": "fixed", "options": {"lr": 0.05}}}


def test_nan_loss_exploding_lr_and_a_broken_factory_fail_their_run_only(
        tmp_path, registry, capsys):
    methods = {"fine": FIXED,
               "exploding": {"optimizer": SGD, "lr_policy": {"name": "exploding"}},
               "broken": {"optimizer": SGD, "lr_policy": {"name": "unbuildable"}}}
    runner = suite(tmp_path, registry, methods)
    summary = runner.run()
    status = {r.method: (r.status, r.error) for r in summary.results}
    assert status["fine"] == ("FINISHED", None)
    assert status["exploding"][0] == "FAILED" and "LR 1e+48 at step 5" in status["exploding"][1]
    assert status["broken"][0] == "FAILED"
    assert "RuntimeError: this policy cannot be built second line" in status["broken"][1]
    assert "\n" not in status["broken"][1]
    folder = summary.output_dir / "broken-seed0"
    assert "Traceback" in (folder / "error.txt").read_text()
    assert "Traceback" not in capsys.readouterr().err
    table = (summary.output_dir / "results.md").read_text()
    assert "| broken |" in table and "cannot be built" in table
    runs = mlflow_runs(tmp_path)
    assert runs["broken/seed0"][1] == "FAILED" and runs["fine/seed0"][1] == "FINISHED"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'store.db'}")
    assert [a.path for a in client.list_artifacts(runs["broken/seed0"][0])] == ["error.txt"]

    # the nan model: the loss of step 5 is NaN; the run fails naming it, the rest goes on
    nan = suite(tmp_path / "nan", registry, {"fine": FIXED},
                model={"name": "nan-at", "options": {"at": 5}}).run()
    (result,) = nan.results
    assert result.status == "FAILED" and "training loss nan at step 5 (epoch 1)" in result.error
    assert len(result.history.lrs) == 21  # the epoch in which it happened, saved
    saved = json.loads((nan.output_dir / "fine-seed0" / "result.json").read_text())
    assert saved["status"] == "FAILED" and len(saved["history"]["lrs"]) == 21


def test_a_task_that_cannot_be_set_up_fails_its_runs_only(tmp_path, registry):
    runner = suite(tmp_path, registry, {"fine": FIXED}, epochs=1)
    runner.recipe.task.name = "unreachable"
    runner.recipe.train.seeds = [1, 0]  # the first seed, which names the metric, is the bad one
    summary = runner.run()
    (bad, good) = summary.results
    assert (bad.seed, bad.status, good.status) == (1, "FAILED", "FINISHED")
    assert "ConnectionError: https://data.example/x.npz: connection refused" in bad.error
    assert summary.metric == "accuracy"
    assert "1/2 finished (FAILED: fine, seed 1: ConnectionError" in (
        summary.output_dir / "results.md").read_text()


def test_a_full_disk_keeps_the_last_good_checkpoint_and_says_so_in_one_line(
        tmp_path, registry, monkeypatch):
    real_write, calls = checkpoint._write, []

    def disk_full_after_the_first(tmp, data):  # the device fills up half-way through
        calls.append(tmp)
        if len(calls) == 1:
            return real_write(tmp, data)
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    monkeypatch.setattr(checkpoint, "_write", disk_full_after_the_first)
    summary = suite(tmp_path, registry, {"fine": FIXED, "second": FIXED}).run()
    first, second = summary.results
    path = summary.output_dir / "fine-seed0" / "checkpoint.pt"
    assert first.status == "FAILED"
    assert f"could not write checkpoint {path}: No space left on device" in first.error
    assert "\n" not in first.error
    state, used = checkpoint.load(path)
    assert used == path and state["epoch"] == 1  # the good one, whole
    assert not list(path.parent.glob(".*.tmp"))  # no half-written file left behind
    assert second.status == "FAILED"  # the disk is still full; the suite still went on
    runs = mlflow_runs(tmp_path)
    assert runs["fine/seed0"][1] == runs["second/seed0"][1] == "FAILED"
    assert runs["faults"][1] == "FINISHED"


def test_a_corrupt_checkpoint_falls_back_to_the_previous_or_fails_clearly(tmp_path, registry):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1, "w": torch.ones(3)})
    checkpoint.save(path, {"epoch": 2, "w": torch.ones(3) * 2})
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # one flipped bit-pattern in the payload
    path.write_bytes(bytes(data))
    with pytest.warns(checkpoint.CheckpointWarning, match="continuing from the previous one"):
        state, used = checkpoint.load(path)
    assert used.name == "checkpoint.pt.prev" and state["epoch"] == 1
    path.write_bytes(path.read_bytes()[:50])  # truncated, and the previous one corrupt too
    checkpoint.previous(path).write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt.*not a metalr checkpoint"):
        checkpoint.load(path)
    pickle = tmp_path / "evil.pt"  # a digest-correct file whose payload is a pickled object
    payload = __import__("pickle").dumps(types.SimpleNamespace(a=1), protocol=2)
    pickle.write_bytes(checkpoint.MAGIC + __import__("hashlib").sha256(payload).hexdigest()
                       .encode() + b"\n" + payload)
    with pytest.raises(checkpoint.CheckpointError, match="cannot be loaded"):
        checkpoint.read(pickle)

    # In a suite: the run with a corrupt checkpoint fails with that one line on resume.
    runner = suite(tmp_path / "suite", registry, {"fine": FIXED})
    summary = runner.run()
    job = summary.output_dir / "fine-seed0"
    (job / "result.json").unlink()  # as if it had been killed after its last checkpoint
    (job / "checkpoint.pt").write_bytes(b"metalr-checkpoint 1 0000\ngarbage")
    resumed = Runner.resumable(summary.output_dir, registry=registry, progress=False).run()
    (result,) = resumed.results
    assert result.status == "FAILED" and "is corrupt (checksum mismatch)" in result.error


def test_an_unusable_output_folder_is_one_line_and_tracks_nothing(tmp_path):
    recipe = write_recipe(tmp_path, output_dir="/proc/metalr-cannot-write-here")
    code, out, err = finish(metalr(tmp_path, "run", str(recipe), "-q"))
    # refused as a recipe error before anything is tracked: /proc stores no files, even for root
    assert code == 2 and "Traceback" not in err
    assert "output_dir" in err and "/proc/metalr-cannot-write-here" in err
    assert not (tmp_path / "store.db").exists()
    code, out, err = finish(metalr(tmp_path, "resume", str(tmp_path / "nowhere")))
    assert code == 1 and "is not a metalr run folder" in err and "Traceback" not in err


def test_two_runs_in_the_same_second_get_their_own_folders(tmp_path):
    from metalr.running.outputs import new_output_dir

    folders = {new_output_dir(tmp_path, "same") for _ in range(5)}
    assert len(folders) == 5 and all(f.is_dir() for f in folders)


def test_a_suite_resumes_only_its_unfinished_children(tmp_path, registry):
    """Tuning and final runs; after a "crash" one tuning run and two final runs are unfinished
    (one with a checkpoint, one without): resume reruns exactly those, and the suite ends with
    the numbers, the tuning choice and the MLflow runs of the uninterrupted one."""
    methods = {"tuned": {**FIXED, "tune": "lr"}, "mlrsnet": RECIPE["methods"]["mlrsnet"]}
    runner = suite(tmp_path, registry, methods)
    runner.recipe.tuning.grid, runner.recipe.tuning.epochs = [0.01, 0.1], 2
    reference = runner.run()
    out = reference.output_dir
    unfinished = {"tuned-tune-lr=0.1-seed1": "checkpoint", "tuned-seed0": "checkpoint",
                  "mlrsnet-seed0": "nothing"}
    kept = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        if folder.name in unfinished:
            (folder / "result.json").unlink()
            (folder / "history.json").unlink()
            if unfinished[folder.name] == "nothing":
                (folder / "checkpoint.pt").unlink()
        else:
            kept[folder.name] = (folder / "result.json").stat().st_mtime_ns
    resumed = Runner.resumable(out, registry=registry, progress=False).run()
    assert len(kept) == 3 and all(
        (out / name / "result.json").stat().st_mtime_ns == t for name, t in kept.items())
    for a, b in zip(reference.tuning + reference.results, resumed.tuning + resumed.results,
                    strict=True):
        assert (a.label, a.status, a.run_id, a.tuned) == (b.label, b.status, b.run_id, b.tuned)
        assert a.history.lrs == b.history.lrs and a.history.losses == b.history.losses
        assert [{k: v for k, v in e.items() if k != "wall_time"} for e in a.history.epochs] == [
            {k: v for k, v in e.items() if k != "wall_time"} for e in b.history.epochs]
    assert resumed.run_id == reference.run_id
    assert {s for _, s in mlflow_runs(tmp_path).values()} == {"FINISHED"}
    assert len(mlflow_runs(tmp_path)) == 1 + 4 + 2
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'store.db'}")
    for r in resumed.results:  # rerun into its old MLflow run: every step logged once
        steps = [m.step for m in client.get_metric_history(r.run_id, "step_lr")]
        assert sorted(steps) == list(range(len(r.history.lrs)))
