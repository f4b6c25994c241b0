"""What the LR probe chose is shown wherever a run's result is: the console line, results.csv
and results.md, the MLflow params; the run's wall time includes the probe's."""

from __future__ import annotations

import csv
import json

from mlflow.tracking import MlflowClient

from metalr.recipes.schema import Recipe
from metalr.running.runner import Runner


def test_probe_start_is_on_the_console_in_the_tables_and_in_mlflow(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    recipe = Recipe.model_validate({
        "name": "probed",
        "task": {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "train": {"epochs": 2, "seeds": [0, 1], "batch_size": 64, "device": "cpu"},
        "methods": {"mlrsnet": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                                "lr_policy": {"name": "mlrsnet"}}},
        "output_dir": str(tmp_path / "out"),
        "tracking": {"name": "mlflow", "options": {"tracking_uri": uri}}})
    summary = Runner(recipe, progress=False).run()
    out = capsys.readouterr().out
    runs = sorted(summary.results, key=lambda r: r.seed)
    probes = [r.history.probe for r in runs]
    assert all(p is not None and p.steps > 0 and p.seconds > 0 for p in probes)
    # a balanced classifier's constant output is its untrained loss: no mark to show
    assert not any(p.constant_mark for p in probes) and "constant output" not in out
    for run, probe in zip(runs, probes):
        assert f"{run.label}: test accuracy" in out
        assert f"probe start LR {probe.lr:.3g} ({probe.steps} steps, {probe.seconds:.1f} s)" in out
        # the wall time counts the probe: it ran before the first step
        assert run.history.wall_time > probe.seconds
        assert run.history.epochs[-1]["wall_time"] > probe.seconds
        saved = json.loads((summary.output_dir / run.label.replace("/", "-") / "history.json").read_text())
        assert saved["probe"]["steps"] == probe.steps
    row = next(csv.DictReader((summary.output_dir / "results.csv").open()))
    assert row["probe start LR (per seed)"] == " / ".join(f"{p.lr:.3g}" for p in probes)
    mean_seconds = sum(p.seconds for p in probes) / 2
    assert float(row["probe (s)"]) == round(mean_seconds, 1)
    assert "probe start LR (per seed)" in (summary.output_dir / "results.md").read_text()
    client = MlflowClient(uri)
    for run, probe in zip(runs, probes):
        params = client.get_run(run.run_id).data.params
        assert float(params["probe_lr"]) == float(f"{probe.lr:.6g}")
        assert int(params["probe_steps"]) == probe.steps


def test_a_run_that_ended_at_chance_says_so_on_its_line(tmp_path, capsys):
    """A final run at chance (test accuracy at most 1/classes + 0.05) says so and where to look;
    a run that learned does not. The LR of 1e-9 leaves the untrained net where it started."""
    sgdm = {"name": "sgd", "options": {"momentum": 0.9}}
    recipe = Recipe.model_validate({
        "name": "chance",
        "task": {"name": "digits", "options": {"meta_size": 200}},
        "model": {"name": "cnn-digits"},
        "train": {"epochs": 2, "seeds": [0], "batch_size": 128, "device": "cpu"},
        "methods": {
            "still": {"optimizer": sgdm, "lr_policy": {"name": "fixed", "options": {"lr": 1e-9}}},
            "learns": {"optimizer": sgdm, "lr_policy": {"name": "fixed", "options": {"lr": 0.1}}}},
        "output_dir": str(tmp_path / "out"), "tracking": None})
    summary = Runner(recipe, progress=False).run()
    lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines()
             if ": test accuracy" in line}
    final = {r.method: r.history.epochs[-1]["test_accuracy"] for r in summary.results}
    assert final["still"] <= 0.15 < final["learns"]
    assert lines["still/seed0"].endswith(
        '; ended at chance (<= 0.15): what to try is in docs/hard-tasks.md, "On your own task"')
    assert "ended at chance" not in lines["learns/seed0"]
