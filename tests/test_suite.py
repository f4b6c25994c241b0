"""A small suite: several methods and seeds, tuning on the meta split, a diverging method."""

from __future__ import annotations

import csv

import pytest
from mlflow.tracking import MlflowClient

from metalr.recipes.schema import Recipe
from metalr.running.runner import Runner

SUITE = {
    "name": "suite",
    "task": {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}},
    "model": {"name": "mlp", "options": {"hidden": [32]}},
    "train": {"epochs": 2, "seeds": [0, 1], "batch_size": 64, "device": "cpu"},
    "tuning": {"grid": [0.001, 0.1], "epochs": 4},  # 0.001 learns nothing in 4 epochs: rejected
    "methods": {
        "sgd-tuned": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                      "lr_policy": {"name": "fixed", "options": {"lr": 0.05}}, "tune": "lr"},
        "exploding": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                      "lr_policy": {"name": "fixed", "options": {"lr": 500.0}}},
        "mlrsnet": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                    "lr_policy": {"name": "mlrsnet", "options": {"gamma": 0.5}}},
    },
}


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    uri = f"sqlite:///{tmp / 'store.db'}"
    recipe = Recipe.model_validate({**SUITE, "output_dir": str(tmp / "out"),
                                    "tracking": {"name": "mlflow", "options": {"tracking_uri": uri}}})
    return Runner(recipe, progress=False).run(), MlflowClient(uri)


def test_tuning_chooses_on_the_meta_split(summary):
    result, _ = summary
    # every grid value ran with both tuning seeds (the first two of train.seeds)
    assert sorted((r.tuned[1], r.seed) for r in result.tuning) == [
        (0.001, 0), (0.001, 1), (0.1, 0), (0.1, 1)]
    mean = {v: sum(r.final("meta_accuracy") for r in result.tuning if r.tuned[1] == v) / 2
            for v in (0.001, 0.1)}
    best = max(mean, key=mean.get)
    tuned_runs = [r for r in result.results if r.method == "sgd-tuned"]
    assert [r.seed for r in tuned_runs] == [0, 1]
    assert all(r.tuned == ("lr", best) for r in tuned_runs)
    assert all(set(r.history.lrs) == {best} for r in tuned_runs)


def test_diverging_method_fails_and_the_rest_goes_on(summary):
    result, client = summary
    exploding = [r for r in result.results if r.method == "exploding"]
    assert [r.status for r in exploding] == ["FAILED", "FAILED"]
    assert "exploding, seed 1" in exploding[1].error and "step" in exploding[1].error
    assert all(r.status == "FINISHED" for r in result.results if r.method != "exploding")
    assert not result.ok
    exp = client.get_experiment_by_name("suite")
    runs = {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}
    assert runs["exploding/seed0"] == "FAILED" and runs["mlrsnet/seed1"] == "FINISHED"
    assert runs["sgd-tuned/tune lr=0.1/seed1"] == "FINISHED" and runs["suite"] == "FINISHED"


def test_tables_and_figures(summary):
    result, _ = summary
    out = result.output_dir
    for name in ["results.md", "results.csv", "lr.png", "curves.png", "recipe.yaml"]:
        assert (out / name).is_file(), name
    rows = {r["method"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"sgd-tuned", "exploding", "mlrsnet"}
    assert rows["exploding"]["runs"].startswith("0/2 finished (FAILED")
    assert rows["sgd-tuned"]["tuned"] == "lr=0.1 (1 of 2 rejected)"
    text = (out / "results.md").read_text()
    assert "### Tuning on the meta split (seeds 0, 1)" in text
    assert "| sgd-tuned | lr=0.1 |" in text and (out / "tuning.csv").is_file()
    mean, std = rows["mlrsnet"]["final test accuracy"].split(" ± ")
    accs = [r.final("test_accuracy") for r in result.results if r.method == "mlrsnet"]
    assert float(mean) == pytest.approx(sum(accs) / 2, abs=1e-4)
    assert "| exploding |" in (out / "results.md").read_text()


class _Raising:
    """A policy that fails at its third step, the way a numerical rule or a bug would."""

    def __init__(self, error: str):
        self.error, self.steps = error, 0

    def start(self, run):
        pass

    def lr(self, ctx):
        self.steps += 1
        if self.steps == 3:
            raise FloatingPointError("rule: nan") if self.error == "nan" else KeyError("bug")
        return 0.05

    def end_epoch(self, epoch, metrics):
        pass


def test_a_failing_rule_or_a_bug_fails_one_run_only(tmp_path):
    import types

    from metalr import hookimpl
    from metalr.contracts.registry import Registry

    @hookimpl
    def register_lr_policies(register):
        register("raising", _Raising)

    registry = Registry(strict=False).load_entry_points()
    registry.add_plugin(types.SimpleNamespace(register_lr_policies=register_lr_policies), "tests")
    sgd = {"name": "sgd", "options": {"momentum": 0.9}}
    recipe = Recipe.model_validate({
        **SUITE, "train": {**SUITE["train"], "seeds": [0]}, "tracking": "none",
        "output_dir": str(tmp_path), "methods": {
            "nan": {"optimizer": sgd, "lr_policy": {"name": "raising", "options": {"error": "nan"}}},
            "bug": {"optimizer": sgd, "lr_policy": {"name": "raising", "options": {"error": "bug"}}},
            "fine": {"optimizer": sgd, "lr_policy": {"name": "fixed", "options": {"lr": 0.05}}},
        }})
    result = Runner(recipe, registry=registry, progress=False).run()
    status = {r.method: (r.status, r.error) for r in result.results}
    assert status["fine"] == ("FINISHED", None)
    assert status["nan"][0] == "FAILED" and "nan, seed 0: rule: nan (step 2)" in status["nan"][1]
    assert status["bug"][0] == "FAILED" and "KeyError" in status["bug"][1]
    assert "| nan |" in (result.output_dir / "results.md").read_text()
