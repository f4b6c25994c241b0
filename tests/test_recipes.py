"""Bad recipes and overrides: exit code 2, every problem named by its path, nothing created."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metalr.cli import main
from metalr.recipes.loader import load_recipe

BASE = {
    "name": "tiny",
    "task": {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 2, "seed": 0, "batch_size": 64, "device": "cpu"},
    "methods": {
        "m": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
              "lr_policy": {"name": "mlrsnet", "options": {"gamma": 0.5}},
              "meta": {"save_epochs": [1]}},
        "f": {"optimizer": "sgd", "lr_policy": {"name": "fixed", "options": {"lr": 0.1}}},
    },
    "tracking": "mlflow",
}


def edit(path: str, value, base=BASE):
    data = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()

# (recipe data or None for BASE, overrides, text that must appear in the message)
CASES = [
    (edit("trian", {"epochs": 1}), [], "trian: unknown key; did you mean 'train'?"),
    (edit("methods.m.lr_policy.name", "mlrsnt"), [], "methods.m.lr_policy.name: 'mlrsnt'"),
    (edit("methods.m.lr_policy.name", "mlrsnt"), [], "did you mean 'mlrsnet'"),
    (edit("train.epochs", "ten"), [], "train.epochs: 'ten'"),
    (edit("methods.f.lr_policy.options.lr", -0.1), [], "methods.f.lr_policy.options.lr: -0.1"),
    (edit("methods.m.meta.t_val", 0), [], "methods.m.meta.t_val: 0"),
    (None, ["train.epoch=5"], "train.epoch: unknown key; did you mean 'epochs'?"),
    (None, ["train.seed=abc"], "train.seed: 'abc'"),
    (None, ["train.epochs"], "train.epochs: an override is written key.path=value"),
    (edit("task", DELETE), [], "task: required key is missing"),
    (edit("model.options", {"hiden": [3]}), [], "model.options.hiden: unknown key; did you mean 'hidden'?"),
    (edit("task.name", "mnist"), [], "task.name: 'mnist'"),
    (edit("tracking", "mlfow"), [], "tracking.name: 'mlfow'"),
    (edit("methods.m.meta.save_epochs", [0, 9]), [], "methods.m.meta.save_epochs: [0, 9] outside"),
    (edit("train.device", "tpu"), [], "train.device: 'tpu'"),
    (edit("methods", {}), [], "methods: {}"),
    (edit("methods.m.meta.weights", "/nonexistent/theta.safetensors"), [],
     "methods.m.meta.weights: '/nonexistent/theta.safetensors': no such file"),
    (edit("methods.m.optimizer.options.momentum", 1.5), [], "methods.m.optimizer.options.momentum: 1.5"),
    (edit("methods.m.optimizer.options", {"nesterov": True}), [],  # the option the check names
     "methods.m.optimizer.options.nesterov: True: nesterov needs momentum"),
    (edit("name", "has spaces"), [], "name: 'has spaces'"),
    (None, ["task.name.x=1"], "task.name: is 'mnist1d', not a mapping"),
    (None, ["methods.m.lr_policy.options.gamma=-1"], "methods.m.lr_policy.options.gamma: -1"),
    (None, ["methods.m.meta.lr=fast"], "methods.m.meta.lr: 'fast'"),
    (None, ["methods.f.tune=lrr"], "methods.f.tune: 'lrr' is not an option of 'fixed'; did you mean 'lr'?"),
    (None, ["tuning.grid=[]"], "tuning.grid: []"),
    (None, ["train.seeds=zero"], "train.seeds: 'zero'"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    return tmp_path


@pytest.mark.parametrize("data,overrides,expected", CASES)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_recipe_exits_2_naming_the_path(workdir, capsys, data, overrides, expected, command):
    recipe = workdir / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data if data is not None else BASE))
    before = set(os.listdir(workdir))
    assert main([command, str(recipe), *overrides]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert str(recipe) in err  # the file is named
    assert set(os.listdir(workdir)) == before  # no store, no output folder: nothing created


def test_all_problems_are_reported_at_once(workdir):
    data = edit("train.epochs", -1, edit("task.name", "mnist", edit("trian", {})))
    recipe = workdir / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError) as info:
        load_recipe(recipe, ["methods.f.lr_policy.options.lr=0"])
    paths = {p.path for p in info.value.problems}
    assert paths == {"trian", "train.epochs", "task.name", "methods.f.lr_policy.options.lr"}
    assert "4 problems" in str(info.value)


def test_unknown_component_reported_with_structure_errors_elsewhere(workdir):
    recipe = workdir / "r.yaml"
    recipe.write_text(yaml.safe_dump(edit("task.name", "mnist")))
    with pytest.raises(ValueError) as info:
        load_recipe(recipe, ["methods.m.optimizer.name=sgdd"])
    assert {p.path for p in info.value.problems} == {"task.name", "methods.m.optimizer.name"}


def test_yaml_syntax_error_and_missing_file(workdir, capsys):
    bad = workdir / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main(["validate", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["validate", str(workdir / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_valid_recipe_and_typed_overrides(workdir):
    recipe = workdir / "r.yaml"
    recipe.write_text(yaml.safe_dump(BASE))
    r = load_recipe(recipe, ["train.epochs=7", "train.seed=3", "methods.m.meta.t_val=4",
                             "tracking=none", "methods.m.lr_policy.options.hidden=8"])
    assert (r.train.epochs, r.train.seed, r.methods["m"].meta.t_val) == (7, 3, 4)
    assert r.tracking is None and r.methods["m"].lr_policy.options["hidden"] == 8


def test_shipped_recipes_validate(capsys):
    # recipes/paper needs the user's data and nets: test_paper_data.py validates it on fake files
    recipes = sorted(p for p in Path(__file__).parents[1].glob("recipes/**/*.yaml")
                     if "paper" not in p.parent.name)
    assert recipes
    for path in recipes:
        assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_exit_code_from_the_installed_command(workdir):
    recipe = workdir / "r.yaml"
    recipe.write_text(yaml.safe_dump(BASE))
    proc = subprocess.run([sys.executable, "-m", "metalr.cli", "run", str(recipe), "train.epochs=0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "train.epochs: 0" in proc.stderr
    assert sorted(os.listdir(workdir)) == ["r.yaml"]
