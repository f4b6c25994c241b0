"""The MLflow store under faults: a full disk under the store, a run folder resumed from another
folder, damaged and foreign store files, hostile names in the report, diverged runs, and
metrics sent twice by a resume.

Real stores in tmp_path. A full disk is simulated where SQLite meets the disk: a launcher makes
the store's writes fail with SQLite's own "database or disk is full" (and copies into the store's
folder with ENOSPC) from one insert of metrics on, then runs the real CLI (a size-limited file
system needs root to mount).
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_faults import Exploding, NaNAt  # a NaN model, an exploding LR: third-party style

from metalr import hookimpl
from metalr.cli import main
from metalr.contracts.registry import Registry
from metalr.recipes.schema import Recipe
from metalr.running.runner import Runner

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("restore_threads")]

SGD = {"name": "sgd", "options": {"momentum": 0.9}}
FIXED = {"optimizer": SGD, "lr_policy": {"name": "fixed", "options": {"lr": 0.05}}}
RECIPE = {
    "name": "store",
    "task": {"name": "digits"},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 3, "batch_size": 64, "device": "cpu", "threads": 1, "seeds": [0]},
    "methods": {
        "multistep": {"optimizer": SGD, "lr_policy": {"name": "multistep",
                                                      "options": {"lr": 0.05}}},
        "mlrsnet": {"optimizer": SGD, "lr_policy": {"name": "mlrsnet"}},  # probed: step-0 metrics
    },
}

FULL_DISK = r'''
"""The metalr CLI with the disk under its MLflow store filling up (tests/test_faults_store.py).

STORE_FULL="N:K": from the (N+1)-th insert of metrics on, the next K writes of SQLite fail as
SQLite fails on a full disk (K < 0: all of them, and copies into the store's folder fail with
ENOSPC too).
"""
import errno
import os
import shutil
import sqlite3
import sys

after, count = (int(x) for x in os.environ["STORE_FULL"].split(":"))
folder = os.path.dirname(os.environ["MLFLOW_TRACKING_URI"][len("sqlite:///"):])
state = {"metrics": 0, "failed": 0}


def full() -> bool:
    return state["metrics"] > after and (count < 0 or state["failed"] < count)


def check(sql: str) -> None:
    text = sql.lstrip().upper()
    if not text.startswith(("INSERT", "UPDATE", "DELETE", "REPLACE")):
        return
    if text.startswith("INSERT INTO METRICS"):
        state["metrics"] += 1
    if full():
        state["failed"] += 1
        raise sqlite3.OperationalError("database or disk is full")


class Checked:
    """Every statement through check() first, on a cursor or on the connection itself."""

    def execute(self, sql, *args):
        check(sql)
        return super().execute(sql, *args)

    def executemany(self, sql, *args):
        check(sql)
        return super().executemany(sql, *args)


class Cursor(Checked, sqlite3.Cursor):
    pass


class Connection(Checked, sqlite3.Connection):
    def cursor(self, factory=Cursor):
        return super().cursor(factory)


real_connect, real_copy = sqlite3.dbapi2.connect, shutil.copyfileobj


def connect(*args, **kwargs):
    return real_connect(*args, **{**kwargs, "factory": Connection})


def copyfileobj(source, target, *args, **kwargs):
    name = str(getattr(target, "name", ""))
    if count < 0 and state["metrics"] > after and name.startswith(folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
    return real_copy(source, target, *args, **kwargs)


sqlite3.dbapi2.connect = sqlite3.connect = connect
shutil.copyfileobj = copyfileobj

from metalr.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
'''


def write_recipe(folder: Path, **changes) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(folder / "out"), **changes},
                                   sort_keys=False))
    return path


def cli(cwd: Path, *args: str, store: Path | None = None,
        launcher: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess; ``store``: its MLFLOW_TRACKING_URI (else none set)."""
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if store is not None:
        environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    command = [str(launcher)] if launcher else ["-m", "metalr.cli"]
    return subprocess.run([sys.executable, *command, *args], cwd=cwd, text=True,
                          capture_output=True, timeout=300, env={**environ, **env})


def run_folder(root: Path) -> Path:
    (folder,) = (root / "out").glob("store-*")
    return folder


def runs_of(uri: str, experiment: str = "store") -> dict[str, tuple[str, str]]:
    """``run name -> (run id, status)``."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: (r.info.run_id, r.info.status)
            for r in client.search_runs([exp.experiment_id])}


def assert_each_metric_once(uri: str, experiment: str = "store") -> int:
    """Every (key, step) of every run of ``experiment`` is in the store once; the count."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    seen, twice = 0, []
    for run in client.search_runs([exp.experiment_id]):
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            again = sorted({s for s in steps if steps.count(s) > 1})
            if again:
                twice.append(f"{run.info.run_name}: {key} at {again[:3]}")
            seen += len(steps)
    assert not twice, f"sent more than once: {twice}"
    return seen


def new_store(path: Path) -> str:
    uri = f"sqlite:///{path}"
    MlflowClient(uri).search_experiments()  # created and migrated, as a first run would
    return uri


# -- 1. a full disk under the tracking store --------------------------------------------------

@pytest.fixture
def full_disk(tmp_path) -> tuple[Path, Path, Path]:
    """(the launcher, the recipe, the store's path) in tmp_path: two short runs, the second
    never started (the disk fills during the first)."""
    launcher = tmp_path / "full_disk.py"
    launcher.write_text(FULL_DISK)
    (tmp_path / "store").mkdir()
    recipe = write_recipe(tmp_path, tracking="mlflow", train={**RECIPE["train"], "epochs": 2},
                          methods={"multistep": RECIPE["methods"]["multistep"], "fixed": FIXED})
    return launcher, recipe, tmp_path / "store" / "mlflow.db"


def one_error_line(done: subprocess.CompletedProcess) -> str:
    said = done.stdout + done.stderr
    assert "Traceback" not in said and "sqlalchemy" not in said.lower(), said
    lines = [line for line in done.stderr.splitlines() if line.startswith("metalr:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def fill_then_free(tmp_path: Path, full_disk) -> tuple[Path, str, dict[str, tuple[str, str]]]:
    """A run whose store's disk fills at the first metrics of its first run and has room
    again after that write (another process freed some): (its folder, the store, its runs)."""
    launcher, recipe, store = full_disk
    done = cli(tmp_path, "run", str(recipe), "-q", store=store, launcher=launcher,
               STORE_FULL="0:1")
    assert done.returncode == 1, done.stderr
    line = one_error_line(done)
    folder = run_folder(tmp_path)
    assert line.startswith(f"metalr: MLflow store {store}: database or disk is full")
    assert f"`metalr resume {folder}`" in line and "RUNNING" not in line
    return folder, f"sqlite:///{store}", runs_of(f"sqlite:///{store}")


@pytest.mark.slow  # a real suite into a filling disk (about 9 s); tox -e faults runs it
def test_a_store_whose_disk_fills_stops_in_one_line_and_ends_every_run(tmp_path, full_disk):
    folder, uri, runs = fill_then_free(tmp_path, full_disk)
    error = (folder / "error.txt").read_text()
    assert "Traceback" in error and "database or disk is full" in error
    assert runs == {"store": (runs["store"][0], "FAILED"),  # ended, none left RUNNING
                    "multistep/seed0": (runs["multistep/seed0"][0], "FAILED")}
    result = json.loads((folder / "multistep-seed0" / "result.json").read_text())
    assert result["status"] == "KILLED"  # resumable: the run is not at fault
    assert not (folder / "fixed-seed0").exists()  # the command stopped there


@pytest.mark.slow
def test_a_run_stopped_by_a_full_store_resumes_into_the_same_runs(tmp_path, full_disk):
    folder, uri, before = fill_then_free(tmp_path, full_disk)
    done = cli(tmp_path, "resume", str(folder), "-q")  # the folder knows its store
    assert done.returncode == 0, done.stderr
    after = runs_of(uri)
    assert {name: rid for name, (rid, _) in after.items() if name in before} == {
        name: rid for name, (rid, _) in before.items()}
    assert {status for _, status in after.values()} == {"FINISHED"} and len(after) == 3
    assert assert_each_metric_once(uri) > 0
    client = MlflowClient(uri)
    steps = [m.step for m in client.get_metric_history(after["multistep/seed0"][0], "step_lr")]
    history = json.loads((folder / "multistep-seed0" / "result.json").read_text())["history"]
    assert sorted(steps) == list(range(len(history["lrs"])))  # every step, once


@pytest.mark.slow  # a real suite into a disk that stays full (about 10 s); tox -e faults runs it
def test_a_store_that_stays_full_says_runs_may_remain_running_and_how_to_clean(
        tmp_path, full_disk, capsys):
    launcher, recipe, store = full_disk
    started = time.monotonic()
    done = cli(tmp_path, "run", str(recipe), "-q", store=store, launcher=launcher,
               STORE_FULL="0:-1")
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 120
    line = one_error_line(done)
    uri = f"sqlite:///{store}"
    assert line.startswith(f"metalr: MLflow store {store}: database or disk is full")
    assert f"2 MLflow runs may remain RUNNING: `metalr runs --clean --tracking-uri {uri}`" in line
    assert {status for _, status in runs_of(uri).values()} == {"RUNNING"}  # the store refused
    assert (run_folder(tmp_path) / "error.txt").is_file()

    capsys.readouterr()
    assert main(["runs", "--clean", "--tracking-uri", uri]) == 0  # what the line says to do
    assert "marked 2 runs KILLED" in capsys.readouterr().out
    assert {status for _, status in runs_of(uri).values()} == {"KILLED"}


# -- 2. resume from another folder --------------------------------------------------------------

@pytest.mark.slow  # the default suite's 10 minutes; tox -e faults runs it
def test_resume_from_another_folder_continues_in_the_store_the_run_recorded(tmp_path):
    here, elsewhere = tmp_path / "a", tmp_path / "b"
    here.mkdir()
    elsewhere.mkdir()
    recipe = write_recipe(here, tracking="mlflow", train={**RECIPE["train"], "epochs": 2},
                          methods={"multistep": RECIPE["methods"]["multistep"], "fixed": FIXED})
    # (no tracking_uri: the default store, sqlite:///mlflow.db, relative to the folder)
    done = cli(here, "run", str(recipe), "-q")
    assert done.returncode == 0, done.stderr
    folder, uri = run_folder(here), f"sqlite:///{here / 'mlflow.db'}"
    before = runs_of(uri)
    job = folder / "fixed-seed0"  # as if killed after its last checkpoint
    (job / "result.json").unlink()
    (job / "history.json").unlink()

    done = cli(elsewhere, "resume", str(folder), "-q")
    assert done.returncode == 0, done.stderr
    assert list(elsewhere.iterdir()) == []  # no stray mlflow.db (nor mlruns/) here
    assert runs_of(uri) == before  # the same runs, all FINISHED again
    assert {status for _, status in before.values()} == {"FINISHED"}
    assert (job / "result.json").is_file()
    assert json.loads((folder / "suite.json").read_text())["tracking_uri"] == uri  # absolute


def test_resume_with_a_tracking_uri_follows_a_store_that_moved(tmp_path, capsys, monkeypatch):
    recipe = write_recipe(tmp_path, tracking="mlflow", methods={
        "multistep": RECIPE["methods"]["multistep"]}, train={**RECIPE["train"], "epochs": 1})
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", str(recipe), "-q"]) == 0
    folder = run_folder(tmp_path)
    (tmp_path / "moved").mkdir()
    moved = tmp_path / "moved" / "store.db"
    (tmp_path / "mlflow.db").rename(moved)
    before = runs_of(f"sqlite:///{moved}")
    (folder / "multistep-seed0" / "result.json").unlink()
    assert main(["resume", str(folder), "-q", "--tracking-uri", f"sqlite:///{moved}"]) == 0
    assert runs_of(f"sqlite:///{moved}") == before
    assert json.loads((folder / "suite.json").read_text())["tracking_uri"] == (
        f"sqlite:///{moved}")  # recorded for the next resume
    assert not (tmp_path / "mlflow.db").exists()


# -- 3. damaged, foreign and missing store files ------------------------------------------------

@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> Path:
    """An MLflow store with one experiment and a run in it (made with MLflow itself)."""
    path = tmp_path_factory.mktemp("real") / "mlflow.db"
    client = MlflowClient(new_store(path))
    exp = client.create_experiment("x")
    run = client.create_run(exp, run_name="r").info.run_id
    for step in range(50):
        client.log_metric(run, "loss", 1.0 / (step + 1), step=step)
    client.set_terminated(run)
    return path


def _damaged(real: Path, path: Path, table: str) -> None:
    """A real store with the first page of ``table`` overwritten: the schema is intact (the
    file opens as an MLflow store), and reading that table fails."""
    data = bytearray(real.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    with sqlite3.connect(real) as con:
        (number,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                                (table,)).fetchone()
    con.close()
    start = (number - 1) * page
    data[start:start + page] = b"\xa5" * page
    path.write_bytes(bytes(data))


def _foreign(path: Path) -> None:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE people (name TEXT)")
        con.execute("INSERT INTO people VALUES ('ada')")
    con.close()


STORES = {
    "garbage": lambda real, p: p.write_bytes(b"this is no database\n" * 200),
    "truncated": lambda real, p: p.write_bytes(real.read_bytes()[:5000]),
    "damaged runs table": lambda real, p: _damaged(real, p, "runs"),
    "empty file": lambda real, p: p.write_bytes(b""),
    "foreign SQLite": lambda real, p: _foreign(p),
    "missing": lambda real, p: None,
}


@pytest.mark.parametrize("case", list(STORES))
def test_report_and_runs_refuse_a_store_that_is_not_one_in_one_line_and_touch_nothing(
        tmp_path, real_store, capsys, monkeypatch, case):
    where, cwd = tmp_path / "store", tmp_path / "cwd"
    where.mkdir()
    cwd.mkdir()
    path = where / "mlflow.db"
    STORES[case](real_store, path)
    before = path.read_bytes() if path.exists() else None
    monkeypatch.chdir(cwd)
    uri = f"sqlite:///{path}"
    for args in (["report", "--out", str(tmp_path / "site"), "--tracking-uri", uri],
                 ["runs", "--tracking-uri", uri], ["runs", "--clean", "--tracking-uri", uri]):
        capsys.readouterr()
        assert main(args) == 2, args
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and str(path) in err, (args, err)
        assert err.startswith("metalr: ") and "Traceback" not in err
        assert (path.read_bytes() if path.exists() else None) == before  # not a byte changed
        assert sorted(p.name for p in where.iterdir()) == (["mlflow.db"] if before is not None
                                                           else [])
        assert list(cwd.iterdir()) == [] and not (tmp_path / "site").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the default store, the same way
    assert main(["runs"]) == 2 and str(path) in capsys.readouterr().err
    assert list(cwd.iterdir()) == []


def test_report_and_runs_read_a_good_store_without_writing_to_it(tmp_path, real_store, capsys,
                                                                 monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    copy = tmp_path / "store" / "mlflow.db"
    copy.parent.mkdir()
    copy.write_bytes(real_store.read_bytes())
    monkeypatch.chdir(cwd)
    uri = f"sqlite:///{copy}"
    assert main(["runs", "--tracking-uri", uri]) == 0
    assert main(["report", "--out", str(tmp_path / "site"), "--tracking-uri", uri]) == 2
    assert "no metalr runs in the MLflow store" in capsys.readouterr().err
    assert copy.read_bytes() == real_store.read_bytes()
    assert [p.name for p in copy.parent.iterdir()] == ["mlflow.db"]  # no lock file either
    assert list(cwd.iterdir()) == []


# -- 4. the report page ---------------------------------------------------------------------------

HOSTILE = "<!--<script>alert(1)</script>&amp;"


@pytest.fixture
def hostile_store(tmp_path) -> str:
    """A suite whose method is named to break out of the page's script, and a run whose seed
    param is no number, written with MLflow itself (as another tool could)."""
    uri = new_store(tmp_path / "hostile.db")
    client = MlflowClient(uri)
    exp = client.create_experiment("hostile")
    suite = client.create_run(exp, run_name=f"suite {HOSTILE}").info.run_id
    for key, value in {"name": "hostile", "task.name": "digits", "model.name": "mlp"}.items():
        client.log_param(suite, key, value)
    for method, seed in [(HOSTILE, "0"), ("plain", "0"), ("plain", "one")]:
        run = client.create_run(exp, run_name=f"{method}/{seed}",
                                tags={"mlflow.parentRunId": suite}).info.run_id
        for key, value in {"method": method, "seed": seed, "tuning": "False",
                           "probe_lr": "fast"}.items():
            client.log_param(run, key, value)
        for step in range(4):
            client.log_metric(run, "step_lr", 0.1 / (step + 1), step=step)
        for epoch in (1, 2):
            client.log_metric(run, "test_accuracy", 0.5 + 0.1 * epoch, step=epoch)
            client.log_metric(run, "test_loss", 1.0 / epoch, step=epoch)
        client.set_terminated(run)
    client.set_terminated(suite)
    return uri


def test_hostile_names_stay_inside_the_pages_data_and_a_bad_seed_is_a_warning(
        tmp_path, hostile_store, capsys):
    out = tmp_path / "site"
    assert main(["report", "--out", str(out), "--tracking-uri", hostile_store, "-q"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (warning,) = [line for line in err.splitlines() if line.startswith("metalr:")]
    assert warning.startswith("metalr: warning: ") and "seed param 'one' is not an integer" in (
        warning)
    page = (out / "index.html").read_text()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, flags=re.DOTALL)
    assert len(scripts) == 3  # the data and two files: no block opened or closed by a name
    (data,) = [body for attrs, body in scripts if 'id="report-data"' in attrs]
    for body in (body for _, body in scripts):
        assert "<!--" not in body and "<script" not in body.lower() and "</" not in body
    charts = json.loads(data)  # the block parses, and gives the names back as they were
    labels = {s["label"] for spec in charts.values() for s in spec["series"]}
    assert f"{HOSTILE}/seed0" in labels and "plain/seed0" in labels
    assert HOSTILE not in page.replace(data, "")  # elsewhere: escaped as HTML text
    assert "&lt;!--&lt;script&gt;" in page


# -- 5. diverged runs keep their curves in MLflow, 6. every metric once after a resume ----------

@pytest.fixture
def faulty_registry():
    @hookimpl
    def register_models(register):
        register("nan-at", NaNAt)

    @hookimpl
    def register_lr_policies(register):
        register("exploding", Exploding)

    reg = Registry(strict=False).load_entry_points()
    assert reg.add_plugin(types.SimpleNamespace(register_models=register_models,
                                                register_lr_policies=register_lr_policies),
                          "tests:faults_store")
    return reg


def suite(folder: Path, registry, methods, epochs: int = 2, **changes) -> Runner:
    data = {**RECIPE, "output_dir": str(folder), "tracking": {"name": "mlflow", "options": {
        "tracking_uri": f"sqlite:///{folder / 'store.db'}", "system_metrics": False}},
        "train": {**RECIPE["train"], "epochs": epochs}, "methods": methods, **changes}
    return Runner(Recipe.model_validate(data), registry=registry, progress=False)



def test_a_diverged_run_has_its_curves_up_to_the_divergence_in_mlflow(tmp_path,
                                                                        faulty_registry):
    nan = suite(tmp_path / "nan", faulty_registry, {"fine": FIXED},
                model={"name": "nan-at", "options": {"at": 5}}).run()
    (result,) = nan.results
    assert result.status == "FAILED" and "training loss nan at step 5" in result.error
    client = MlflowClient(f"sqlite:///{tmp_path / 'nan' / 'store.db'}")
    losses = client.get_metric_history(result.run_id, "step_train_loss")
    assert sorted(m.step for m in losses) == list(range(6))  # up to the NaN, not past it
    assert math.isnan(max(losses, key=lambda m: m.step).value)
    assert [m.value for m in sorted(losses, key=lambda m: m.step)][:5] == (
        result.history.losses[:5])
    lrs = client.get_metric_history(result.run_id, "step_lr")
    assert sorted(m.step for m in lrs) == list(range(6))
    assert client.get_run(result.run_id).info.status == "FAILED"

    # diverged in the second epoch: the first epoch's metrics are there as well
    late = suite(tmp_path / "late", faulty_registry, {"fine": FIXED},
                 model={"name": "nan-at", "options": {"at": 25}}).run()
    (result,) = late.results
    assert "at step 25 (epoch 2)" in result.error
    client = MlflowClient(f"sqlite:///{tmp_path / 'late' / 'store.db'}")
    assert sorted(m.step for m in client.get_metric_history(result.run_id, "step_lr")) == (
        list(range(26)))
    assert [m.step for m in client.get_metric_history(result.run_id, "test_accuracy")] == [1]

    # an LR that explodes: the LRs of the steps that ran (the epoch's losses never formed)
    boom = suite(tmp_path / "boom", faulty_registry, {
        "boom": {"optimizer": SGD, "lr_policy": {"name": "exploding"}}}).run()
    (result,) = boom.results
    assert result.status == "FAILED" and "at step 5" in result.error
    client = MlflowClient(f"sqlite:///{tmp_path / 'boom' / 'store.db'}")
    lrs = sorted(client.get_metric_history(result.run_id, "step_lr"), key=lambda m: m.step)
    assert [m.step for m in lrs] == list(range(5)) and lrs[-1].value == pytest.approx(1e38)


def test_every_metric_lands_once_when_a_killed_suite_resumes(tmp_path, faulty_registry):
    """The state ``kill -9`` leaves when it strikes after a run's last metrics landed but before
    its result.json (and the suite's) was written, with a step whose LR landed and whose loss
    did not (a kill between two batches of one flush): the resumed suite sends what is
    missing, and nothing twice, the step-0 metrics included (the probe's, the per-seed values
    on the suite's run)."""
    methods = {"multistep": RECIPE["methods"]["multistep"], "mlrsnet": RECIPE["methods"]["mlrsnet"]}
    first = suite(tmp_path, faulty_registry, methods).run()
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    counted = assert_each_metric_once(uri)
    mlrsnet = next(r for r in first.results if r.method == "mlrsnet")
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(mlrsnet.run_id, "probe_lr")] == [0]
    for r in first.results:
        (first.output_dir / f"{r.method}-seed0" / "result.json").unlink()
    with sqlite3.connect(tmp_path / "store.db") as con:  # the losses of steps 30 on, lost
        con.execute("DELETE FROM metrics WHERE run_uuid = ? AND key = 'step_train_loss' AND "
                    "step >= 30", (mlrsnet.run_id,))
    con.close()

    resumed = Runner.resumable(first.output_dir, registry=faulty_registry, progress=False).run()
    assert [r.status for r in resumed.results] == ["FINISHED", "FINISHED"]
    assert resumed.run_id == first.run_id
    assert assert_each_metric_once(uri) == counted  # all there, once
    losses = client.get_metric_history(mlrsnet.run_id, "step_train_loss")
    assert sorted(m.step for m in losses) == list(range(len(mlrsnet.history.losses)))


@pytest.mark.slow
def test_every_metric_lands_once_after_ctrl_c_and_resume(tmp_path):
    """Ctrl-C in the second run (the tables and the per-seed values of the first are sent to
    the suite's run as it stops), then `metalr resume`: nothing in the store twice."""
    from metalr.engine import checkpoint

    store = tmp_path / "store.db"
    recipe = write_recipe(tmp_path, tracking="mlflow")
    proc = subprocess.Popen(
        [sys.executable, "-m", "metalr.cli", "run", str(recipe), "-q"], cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}",
             checkpoint.SLEEP_ENV: "0.3"})
    end = time.monotonic() + 240
    while not list((tmp_path / "out").glob("store-*/mlrsnet-seed0/checkpoint.pt")):
        assert proc.poll() is None and time.monotonic() < end, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(2)  # SIGINT
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    done = cli(tmp_path, "resume", str(run_folder(tmp_path)), "-q", store=store)
    assert done.returncode == 0, done.stderr
    uri = f"sqlite:///{store}"
    assert {status for _, status in runs_of(uri).values()} == {"FINISHED"}
    assert assert_each_metric_once(uri) > 0


def _half_made_store(path: Path) -> None:
    """What a process killed while MLflow created its store leaves (the kill -9 test at a
    random moment found it): some of MLflow's tables, no migration stamp, no run. Made at
    another path and copied: a store this process's MLflow has opened stays open in it."""
    made = path.with_name("made-elsewhere.db")
    MlflowClient(tracking_uri=f"sqlite:///{made}").search_experiments(max_results=1)
    path.write_bytes(made.read_bytes())
    made.unlink()
    con = sqlite3.connect(path)
    with con:
        con.execute("DROP TABLE alembic_version")
        con.execute("DROP TABLE latest_metrics")
    con.close()


def test_a_store_whose_creation_was_killed_is_made_again(tmp_path):
    """MLflow creates a new SQLite store in place, table by table; a kill in between left a file
    on which every later `metalr run` or `resume` failed ("table ... already exists"). A new
    store is now made beside its path and moved into place whole, and a half-made one that
    holds no run is made again."""
    from metalr_mlflow.store import existing_store
    from metalr_mlflow.tracker import MLflowTracker

    db = tmp_path / "store.db"
    _half_made_store(db)
    tracker = MLflowTracker(tracking_uri=f"sqlite:///{db}")
    run = tracker.start_run("exp", "a run", {"lr": 0.1})
    tracker.end_run(run, "FINISHED")
    tracker.close()
    assert existing_store(f"sqlite:///{db}") == db.resolve()  # complete: every table, default
    assert [r.info.run_name for r in MlflowClient(tracking_uri=f"sqlite:///{db}").search_runs(
        [MlflowClient(tracking_uri=f"sqlite:///{db}").get_experiment_by_name("exp")
         .experiment_id])] == ["a run"]
    assert not (tmp_path / "store.db.creating").exists()  # moved into place, nothing left


def test_a_half_made_store_that_holds_runs_is_not_replaced(tmp_path):
    """A store that holds a run is never made again, however incomplete: MLflow opens it (and
    migrates it, or fails in one line naming it), and the run is still there."""
    from metalr_mlflow.store import unfinished_store
    from metalr_mlflow.tracker import MLflowTracker

    db = tmp_path / "store.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").create_run("0", run_name="kept")
    con = sqlite3.connect(db)
    with con:
        con.execute("DROP TABLE latest_metrics")
    con.close()
    assert not unfinished_store(db)
    try:
        MLflowTracker(tracking_uri=f"sqlite:///{db}").close()
    except Exception as exc:  # noqa: BLE001 - MLflow's verdict on the store, either way
        assert "store.db" in str(exc)
    con = sqlite3.connect(db)
    assert con.execute("SELECT name FROM runs").fetchall() == [("kept",)]
    con.close()


def test_only_a_store_without_runs_and_unfinished_counts_as_half_made(tmp_path):
    from metalr_mlflow.store import unfinished_store

    db = tmp_path / "store.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments(max_results=1)
    assert not unfinished_store(db)  # complete
    con = sqlite3.connect(db)
    with con:
        con.execute("DELETE FROM experiments")  # killed before the default experiment
    con.close()
    assert unfinished_store(db)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    with con:
        con.execute("CREATE TABLE runs (x)")
        con.execute("CREATE TABLE notes (y)")  # not MLflow's
    con.close()
    assert not unfinished_store(other)
    named = tmp_path / "named.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{named}")
    client.create_experiment("someone's")  # an experiment, no run yet
    con = sqlite3.connect(named)
    with con:
        con.execute("DROP TABLE latest_metrics")
    con.close()
    assert not unfinished_store(named)
