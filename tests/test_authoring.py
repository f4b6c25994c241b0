"""What a plugin author and a recipe writer need (issue 12): separate split and batch-order seeds,
per-seed results in results.csv and MLflow, `-q` that keeps result lines, `--only`/`--skip`,
the cosine stepped per epoch, and `metalr new-plugin` producing a package whose test passes."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from metalr_schedules import CosineLR

from metalr.cli import main
from metalr.contracts.protocols import RunInfo, StepContext
from metalr.engine.algorithm import Engine, EngineConfig
from metalr.recipes.loader import RecipeError, load_recipe
from metalr.running.runner import Runner
from metalr.testing import Blobs, _Fixed, _mlp

REPO = Path(__file__).resolve().parents[1]

RECIPE = {
    "name": "authoring",
    "task": {"name": "digits", "options": {"meta_size": 100}},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 2, "seeds": [0, 1], "batch_size": 128, "device": "cpu", "threads": 1},
    "methods": {
        "fixed": {"optimizer": "sgd", "lr_policy": {"name": "fixed", "options": {"lr": 0.05}}},
        "cos": {"optimizer": "sgd",
                "lr_policy": {"name": "cosine", "options": {"lr": 0.1, "per": "epoch"}}},
        "exp": {"optimizer": "sgd", "lr_policy": {"name": "exponential"}},
    },
    "tracking": "none",
}


def write(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(tmp_path / "out"), **changes},
                                   sort_keys=False))
    return path


# -- seeds -------------------------------------------------------------------------------------

def fit(seed: int, order_seed: int | None, init: int = 0):
    task = Blobs()
    task.setup(0, torch.device("cpu"))
    torch.manual_seed(init)
    model = _mlp(task.spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return Engine(task, model, opt, _Fixed(), EngineConfig(
        epochs=1, batch_size=32, seed=seed, order_seed=order_seed)).fit().losses


def test_order_seed_decides_the_batch_order_apart_from_the_run_seed():
    assert fit(0, 5) == fit(1, 5)  # same order seed, same weights: the run seed no longer matters
    assert fit(0, None) != fit(1, None)  # default: the run seed orders the batches
    assert fit(3, None) == fit(0, 3)  # ... exactly as an order seed of that value
    assert fit(0, 5, init=0) != fit(0, 5, init=1)  # the initial weights still vary


def test_split_seed_fixes_one_split_shared_by_every_seed(registry, tmp_path):
    fixed = Runner(load_recipe(write(tmp_path, train={**RECIPE["train"], "split_seed": 7})))
    assert fixed.task(0) is fixed.task(1)  # one task object: same split for every run seed
    own = registry.get("task", "digits").build(meta_size=100)
    own.setup(7, torch.device("cpu"))
    assert torch.equal(fixed.task(0).indices["meta"], own.indices["meta"])
    default = Runner(load_recipe(write(tmp_path)))
    assert not torch.equal(default.task(0).indices["meta"], default.task(1).indices["meta"])


# -- the cosine per epoch ---------------------------------------------------------------------

def test_cosine_per_epoch_is_torch_stepped_once_an_epoch():
    epochs, steps, lr, eta_min = 4, 3, 0.2, 0.01
    policy = CosineLR(lr=lr, eta_min=eta_min, per="epoch")
    policy.start(RunInfo(epochs, steps, None, torch.device("cpu"), 0, None))
    lrs = []
    for epoch in range(epochs):
        lrs.append([policy.lr(StepContext(epoch * steps + i, epoch, *[None] * 6))
                    for i in range(steps)])
        policy.end_epoch(epoch, {})
    expected = [eta_min + (lr - eta_min) * (1 + math.cos(math.pi * e / epochs)) / 2
                for e in range(epochs)]
    assert lrs == [pytest.approx([v] * steps, rel=1e-9) for v in expected]
    default = CosineLR(lr=lr, eta_min=eta_min)
    default.start(RunInfo(epochs, steps, None, torch.device("cpu"), 0, None))
    assert default.lr(StepContext(1, 0, *[None] * 6)) < lr  # per iteration unless asked


# -- a run: -q lines, --skip, per-seed results in the CSV and in MLflow --------------------------

def test_run_writes_per_seed_values_and_q_keeps_the_result_lines(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, tracking="mlflow")
    assert main(["run", str(path), "-q", "--skip", "exp"]) == 0
    out = capsys.readouterr().out
    for label in ("fixed/seed0", "fixed/seed1", "cos/seed0", "cos/seed1"):
        assert f"{label}: test accuracy" in out  # -q hides the bar, not the results
    assert "exp/seed" not in out
    (folder,) = (tmp_path / "out").iterdir()
    assert "exp" not in yaml.safe_load((folder / "recipe.yaml").read_text())["methods"]
    rows = {r["method"]: r for r in csv.DictReader((folder / "results.csv").open())}
    assert set(rows) == {"fixed", "cos"}
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("authoring").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    for method, row in rows.items():
        per_seed = [float(row[f"final test accuracy seed{s}"]) for s in (0, 1)]
        child = [children[f"{method}/seed{s}"].data.metrics["test_accuracy"] for s in (0, 1)]
        assert per_seed == pytest.approx(child, abs=5e-5)
        logged = parent.data.metrics[f"final_test_accuracy/{method}"]
        assert logged == pytest.approx(statistics.fmean(child), rel=1e-9)
        mean, std = (float(x) for x in row["final test accuracy"].split(" ± "))
        assert mean == pytest.approx(statistics.fmean(child), abs=5e-5)
        assert std == pytest.approx(statistics.stdev(child), abs=5e-5)  # sample std, ddof=1
    assert "### Final test accuracy per seed" in (folder / "results.md").read_text()


# -- --only / --skip -----------------------------------------------------------------------------

def test_only_and_skip_select_methods_and_name_the_recipes_methods(tmp_path, capsys):
    path = write(tmp_path)
    assert list(load_recipe(path, only=["cos", "exp"], skip=["exp"]).methods) == ["cos"]
    with pytest.raises(RecipeError) as err:
        load_recipe(path, only=["coss"])
    assert str(err.value).splitlines()[1].strip() == (
        "methods: --only 'coss' is not a method of this recipe; did you mean 'cos'? its methods: "
        "fixed, cos, exp")
    with pytest.raises(RecipeError, match="leave no method to run"):
        load_recipe(path, skip=["fixed", "cos", "exp"])
    assert main(["validate", str(path), "--only", "fixed,cos"]) == 0
    assert "methods fixed, cos," in capsys.readouterr().out
    assert main(["validate", str(path), "--skip", "nope"]) == 2
    assert f"{path}: 1 problem" in capsys.readouterr().err
    sweep = write(tmp_path, sweep={"grid": {"train.epochs": [1]}})
    assert main(["sweep", str(sweep), "--list", "--only", "fixed"]) == 0
    assert main(["sweep", str(sweep), "--list", "--only", "nope"]) == 2
    assert "its methods: fixed, cos, exp" in capsys.readouterr().err


# -- metalr new-plugin ---------------------------------------------------------------------------

@pytest.mark.slow  # pip-installs a generated plugin and runs its test (about 6 s); tox -e slow
def test_new_plugin_installs_registers_and_passes_its_own_test(tmp_path):
    assert main(["new-plugin", "metalr-acme", "--out", str(tmp_path)]) == 0
    package, site = tmp_path / "metalr-acme", tmp_path / "site"
    assert main(["new-plugin", "metalr-acme", "--out", str(tmp_path)]) == 2  # never overwrites
    assert main(["new-plugin", "1-acme", "--out", str(tmp_path)]) == 2  # not a module name
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-compile", "--target", str(site), str(package)],
                   check=True, cwd=tmp_path, capture_output=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO),
                                                        str(REPO / "plugins")]),
           "METALR_STRICT_PLUGINS": "1"}
    # one interpreter for both (torch loads once): `metalr plugins --json`, then the package's test
    script = ("import sys, pytest; from metalr.cli import main; main(['plugins', '--json']); "
              "print('=== pytest'); sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', "
              f"{str(package / 'tests')!r}]))")
    done = subprocess.run([sys.executable, "-c", script], check=False, env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    listed, _, test = done.stdout.partition("=== pytest")
    assert done.returncode == 0, test[-3000:] + done.stderr[-2000:]
    assert "4 passed" in test
    ours = {(c["kind"], c["name"]) for c in json.loads(listed)["components"]
            if c["source"] == "metalr-acme:acme"}
    assert ours == {("task", "acme-blobs"), ("model", "acme-mlp"), ("lr_policy", "acme-warmup")}
