"""`metalr search` and `metalr.run`: the search: block validated at its keys; real Optuna trials
(in this process) whose objectives are the mean final metric of their runs in a real MLflow
store; a second invocation adds trials without rerunning any; the median pruner stops a trial
(PRUNED in Optuna, KILLED in MLflow); the Python API's summary matches the store."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

import metalr
from metalr.cli import main
from metalr.recipes.loader import RecipeError, load_recipe

optuna = pytest.importorskip("optuna")  # the `search` extra (quickstart.sh and tox install it)

pytestmark = pytest.mark.usefixtures("restore_threads")

LR = "methods.fixed.lr_policy.options.lr"
RECIPE = {
    "name": "srch",
    "task": {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "threads": 1},
    "methods": {"fixed": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                          "lr_policy": {"name": "fixed", "options": {"lr": 0.05}}}},
    "search": {"space": {LR: {"low": 1e-3, "high": 0.3, "log": True}}, "trials": 3,
               "seeds": [0, 1], "sampler": {"name": "tpe", "seed": 7},
               "executor": {"name": "local", "options": {"workers": 1}}},
    "output_dir": "out",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the module (a new store takes seconds); each test its own names."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def place(tmp_path, monkeypatch, store) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    return tmp_path


def write(folder: Path, name: str = "srch", **changes) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "name": name, **changes}, sort_keys=False))
    return path


def runs(store: str, name: str):
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def study(folder: Path, name: str):
    return optuna.load_study(study_name=name,
                             storage=f"sqlite:///{folder / 'out' / f'{name}-search' / 'optuna.db'}")


def test_the_block_is_checked_at_its_keys(tmp_path, capsys):
    bad = {"space": {LR: {"low": 0.0, "high": 1, "log": True},
                     "train.batch_size": {"low": 8, "hihg": 16}},
           "trials": 0, "sampler": {"name": "grid"}, "pruner": "medain", "methd": "fixed"}
    with pytest.raises(RecipeError) as caught:
        load_recipe(write(tmp_path, search=bad))
    said = {p.path: p.message for p in caught.value.problems}
    assert "log: true needs low > 0" in said[f"search.space.{LR}"]
    assert "did you mean 'high'" in said["search.space.train.batch_size.hihg"]
    assert "greater than 0" in said["search.trials"]
    assert "'tpe' or 'random'" in said["search.sampler.name"]
    assert "'median' or 'none'" in said["search.pruner.name"]
    assert "did you mean 'method'" in said["search.methd"]
    with pytest.raises(RecipeError, match=r"search.space: .*'output_dir': a search cannot vary"):
        load_recipe(write(tmp_path, search={**RECIPE["search"],
                                            "space": {"output_dir": {"choices": ["a", "b"]}}}))
    # the objective's method must be one of the recipe's
    with pytest.raises(RecipeError, match=r"search.method: 'fixd' is not a method.*'fixed'"):
        load_recipe(write(tmp_path, search={**RECIPE["search"], "method": "fixd"}))
    # a good block, shorthands included: ints stay ints, a float range a float range
    recipe = load_recipe(write(tmp_path, search={**RECIPE["search"], "sampler": "random",
                                                 "pruner": "none",
                                                 "space": {"train.batch_size": {"low": 8,
                                                                                "high": 64}}}))
    space = recipe.search.space["train.batch_size"]
    assert space.integer and recipe.search.sampler.name == "random"
    assert recipe.search.pruner.name == "none"
    assert "search" not in load_recipe(write(tmp_path, search=None)).resolved()
    # a bound the recipe cannot take is refused before any trial, naming the bound
    path = write(tmp_path, search={**RECIPE["search"],
                                   "space": {"train.epochs": {"low": 0, "high": 2}}})
    assert main(["search", str(path)]) == 2
    assert "train.epochs: 0: Input should be greater than 0 [search bounds: train.epochs=0]" \
        in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_missing_optuna_is_one_line(place, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    assert main(["search", str(write(place))]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("metalr: the search needs Optuna, the `search` extra: "
                           "pip install 'metalr[search]'")


def test_search_objectives_match_the_store_and_a_second_run_adds_one(place, store, capsys):
    """Three trials of two seeds each: every objective is the mean final test accuracy of its
    trial's runs in MLflow, the best is the max; then trials=4 adds exactly one trial."""
    path = write(place)
    assert main(["search", str(path), "-q"]) == 0
    out = capsys.readouterr().out
    trials = study(place, "srch").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    found = runs(store, "srch")
    parents = [r for r in found if r.info.run_name == "srch-search"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    suites = {r.data.tags["metalr.search.trial"]: r for r in found
              if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert sorted(suites) == ["0", "1", "2"]
    for t in trials:
        suite = suites[str(t.number)]
        assert json.loads(suite.data.tags[f"metalr.search.{LR}"]) == t.params[LR]
        seeds = [r for r in found
                 if r.data.tags.get("mlflow.parentRunId") == suite.info.run_id]
        assert sorted(r.info.run_name for r in seeds) == ["fixed/seed0", "fixed/seed1"]
        assert all(r.data.tags["metalr.search.trial"] == str(t.number) for r in seeds)
        assert t.value == pytest.approx(
            statistics.fmean(r.data.metrics["meta_accuracy"] for r in seeds), abs=1e-12)
        assert f"| {t.number} | {t.params[LR]:.4g} | {t.value:.4f} |" in out
    best = max(trials, key=lambda t: t.value)
    assert f"best: trial {best.number} (" in out and f"{best.value:.4f}" in out
    folder = place / "out/srch-search"
    assert (folder / "results.md").read_text().count(" COMPLETE ") == 3
    assert len((folder / "results.csv").read_text().splitlines()) == 4
    assert {json.loads((folder / f"t00{i}/trial.json").read_text())["status"]
            for i in range(3)} == {"FINISHED"}

    # again with one trial more: the three are kept (same values, not rerun), one is added
    assert main(["search", str(path), "search.trials=4", "-q"]) == 0
    assert "3 trials done before: kept" in capsys.readouterr().out
    again = study(place, "srch").get_trials()
    assert [t.state.name for t in again] == ["COMPLETE"] * 4
    assert [(t.params, t.value, t.datetime_complete) for t in again[:3]] == \
        [(t.params, t.value, t.datetime_complete) for t in trials]
    found = runs(store, "srch")
    assert [r.info.run_id for r in found if r.info.run_name == "srch-search"] == \
        [parents[0].info.run_id]
    numbers = [r.data.tags["metalr.search.trial"] for r in found
               if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(numbers) == ["0", "1", "2", "3"]
    assert sum(r.info.run_name.startswith("fixed/seed") for r in found) == 8


def test_the_median_pruner_stops_a_worse_trial(place, store, capsys):
    """A study that already holds a trial at accuracy 1.0 after the first epoch: the next
    trial is below its median there, so it is pruned before its second epoch."""
    path = write(place, "prn", train={**RECIPE["train"], "epochs": 2},
                 search={**RECIPE["search"], "trials": 2, "seeds": [0],
                         "pruner": {"name": "median", "startup_trials": 1}})
    folder = place / "out/prn-search"
    folder.mkdir(parents=True)
    seeded = optuna.create_study(study_name="prn", direction="maximize",
                                 storage=f"sqlite:///{folder / 'optuna.db'}")
    dist = optuna.distributions.FloatDistribution(1e-3, 0.3, log=True)
    seeded.add_trial(optuna.trial.create_trial(params={LR: 0.01}, distributions={LR: dist},
                                               value=1.0, intermediate_values={0: 1.0, 1: 1.0}))
    assert main(["search", str(path), "-q"]) == 0
    assert "PRUNED (pruned at step 0 (fixed/seed0, epoch 1" in capsys.readouterr().out
    trial = study(place, "prn").get_trials()[1]
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [0]
    found = {r.info.run_name.split(" ")[0]: r for r in runs(store, "prn")}
    assert found["t001"].info.status == "KILLED"
    seed = found["fixed/seed0"]
    assert seed.info.status == "KILLED"
    history = MlflowClient(store).get_metric_history(seed.info.run_id, "meta_accuracy")
    assert [m.step for m in history] == [1]  # stopped before its second epoch


def test_the_python_api_returns_what_the_store_holds(place, store):
    path = write(place, "api", search=None)
    summary = metalr.run(path, ["train.seeds=[3]"])
    assert summary.ok and summary.metric == "accuracy" and summary.higher_is_better
    [result] = summary.results
    client = MlflowClient(store)
    stored = client.get_run(result.run_id)
    assert stored.info.status == "FINISHED" and stored.info.run_name == "fixed/seed3"
    assert stored.data.tags["mlflow.parentRunId"] == summary.run_id
    assert stored.data.metrics["test_accuracy"] == result.final("test_accuracy")
    assert summary.output_dir.resolve().parent == place / "out"
    # a stop asked by on_epoch: the run is KILLED and RunStopped says where
    from metalr.running.api import RunStopped

    seen = []
    with pytest.raises(RunStopped) as stopped:
        metalr.run(load_recipe(path), ["train.epochs=3"], on_epoch=lambda r: seen.append(r)
                   or True)
    assert [(r.method, r.seed, r.epoch, r.step) for r in seen] == [("fixed", 0, 1, 0)]
    suite = json.loads((stopped.value.output_dir / "suite.json").read_text())
    assert client.get_run(suite["parent_run_id"]).info.status == "KILLED"
    with pytest.raises(RecipeError, match="train.epochs"):
        metalr.run(load_recipe(path), ["train.epochs=0"])


def test_on_epoch_sees_untracked_runs_too(place):
    """The reports come from the runner, not from what a tracker is sent: a recipe with
    ``tracking: none`` is watched (and stopped) as well, and its second epoch never runs."""
    from metalr.running.api import RunStopped

    path = write(place, "untracked", search=None)
    recipe = load_recipe(path)
    untracked = recipe.model_copy(update={"tracking": None})
    seen = []
    with pytest.raises(RunStopped) as stopped:
        metalr.run(untracked, ["train.epochs=2"], on_epoch=lambda r: seen.append(r) or True)
    assert [(r.method, r.seed, r.epoch) for r in seen] == [("fixed", 0, 1)]
    assert "test_accuracy" in seen[0].metrics
    result = json.loads((stopped.value.output_dir / "fixed-seed0" / "result.json").read_text())
    assert result["status"] == "KILLED"
