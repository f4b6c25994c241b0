"""The strict YAML reader and the build checks, on what they must accept as well as refuse."""

from __future__ import annotations

import copy
import os
import sqlite3

import pytest
import yaml

from metalr.cli import main
from metalr.contracts.yaml_loader import YAMLLoadError, load_yaml
from metalr.engine.weights import save_meta_learner
from metalr.recipes.validation import tracking_uri_problem

BASE = {
    "name": "tiny",
    "task": {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 2, "batch_size": 64, "device": "cpu"},
    "methods": {
        "m": {"optimizer": "sgd", "lr_policy": {"name": "mlrsnet", "options": {"hidden": 8}}},
        "f": {"optimizer": "sgd", "lr_policy": {"name": "fixed", "options": {"lr": 0.1}}},
    },
}


def with_(*changes: tuple[str, object]) -> dict:
    data = copy.deepcopy(BASE)
    for path, value in changes:
        *parents, last = path.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[last] = value
    return data


def test_merge_keys_set_again_are_not_duplicates():
    data, lines = load_yaml("base: &b {x: 1, y: 2}\nuse: {<<: *b, y: 3}\n")
    assert data["use"] == {"x": 1, "y": 3}
    assert lines["use.y"] == 2 and lines["base.x"] == 1


def test_anchored_mappings_come_back_unshared():
    data, _ = load_yaml("a: &o {m: 0.9}\nb: *o\nc: [*o, *o]\n")
    data["a"]["m"] = 0.5
    assert data["b"] == {"m": 0.9} and data["c"] == [{"m": 0.9}, {"m": 0.9}]
    assert data["c"][0] is not data["c"][1]


def test_every_duplicate_is_reported_with_both_lines():
    with pytest.raises(YAMLLoadError) as info:
        load_yaml("a: 1\nb: {c: 1, c: 2}\na: 3\n")
    messages = sorted(p.message for p in info.value.problems)
    assert messages == ["duplicate key 'a' on lines 1 and 3: keep one",
                        "duplicate key 'c' on lines 2 and 2: keep one"]


@pytest.mark.parametrize("uri", ["sqlite:///{tmp}/new.db", "sqlite:///{tmp}/existing.db",
                                 "sqlite:///{tmp}/new/folder/m.db",
                                 "sqlite:///:memory:", "{tmp}/store", "file://{tmp}/store",
                                 "databricks", "postgresql://u@host/db"])
def test_usable_tracking_uris_pass(tmp_path, uri):
    sqlite3.connect(tmp_path / "existing.db").execute("create table t (x)").connection.close()
    before = sorted(os.listdir(tmp_path))
    assert tracking_uri_problem(uri.format(tmp=tmp_path)) is None
    assert sorted(os.listdir(tmp_path)) == before  # nothing created by the check


@pytest.mark.parametrize("uri,words", [
    ("sqlite://relative.db", "sqlite:///relative/path.db"),
    ("sqlite:///{tmp}/file.txt/m.db", "file.txt is a file"),
    ("sqlite:///{tmp}", "is a folder, not an SQLite database file"),
    ("{tmp}/file.txt/store", "is a file"),
    ("ftp://host/x", "unknown scheme 'ftp'"),
])
def test_unusable_tracking_uris_are_named(tmp_path, uri, words):
    (tmp_path / "file.txt").write_text("x")
    problem = tracking_uri_problem(uri.format(tmp=tmp_path))
    assert problem is not None and words in problem


def test_a_good_net_in_meta_test_validates(tmp_path, monkeypatch, registry, capsys):
    """The checks that refuse bad nets accept a good one, and meta-test with its weights."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    net = save_meta_learner(tmp_path / "theta.safetensors", "mlrsnet",
                            registry.get("lr_policy", "mlrsnet").build(gamma=0.5, hidden=8))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(with_(
        ("methods.m.meta", {"mode": "meta-test", "weights": str(net)}),
        ("methods.f.lr_policy", {"name": "plateau", "options": {"monitor": "meta_accuracy",
                                                                "mode": "max"}}),
        ("methods.f.tune", "lr"), ("methods.f.tune_grid", [0.01, 0.1]))))
    before = sorted(os.listdir(tmp_path))
    assert main(["validate", str(recipe)]) == 0, capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == before


def test_an_integer_option_tuned_with_integers_validates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(with_(("methods.f.lr_policy", {"name": "sgdr"}),
                                           ("methods.f.tune", "T_0"), ("methods.f.tune_grid", [1, 2]))))
    assert main(["validate", str(recipe)]) == 0, capsys.readouterr().err


def test_a_weights_path_in_a_recipe_is_found_next_to_it(tmp_path, monkeypatch, registry):
    """Written in the file, a relative ``meta.weights`` names the file beside the recipe, so the
    recipe runs from any folder; given as an override, it is relative to the working directory."""
    from metalr.recipes.loader import load_recipe

    (tmp_path / "nets").mkdir()
    save_meta_learner(tmp_path / "nets" / "theta.safetensors", "mlrsnet",
                      registry.get("lr_policy", "mlrsnet").build(gamma=0.5, hidden=8))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(with_(
        ("methods.m.meta", {"mode": "meta-test", "weights": "nets/theta.safetensors"}))))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_recipe(recipe)
    assert loaded.methods["m"].meta.weights == str(tmp_path / "nets" / "theta.safetensors")
    (elsewhere / "mine.safetensors").write_bytes(b"")
    overridden = load_recipe(recipe, ["methods.m.meta.weights=mine.safetensors"])
    assert overridden.methods["m"].meta.weights == "mine.safetensors"


def test_a_nets_folder_in_a_recipe_is_found_next_to_it(tmp_path, monkeypatch, registry):
    """The same for a path in ``lr_policy.options`` (``mlrsnet-transfer``'s ``nets``); a name
    without a slash (a shipped net) is left as written."""
    from metalr.recipes.loader import load_recipe

    (tmp_path / "nets" / "run").mkdir(parents=True)
    save_meta_learner(tmp_path / "nets" / "run" / "theta-epoch0001.safetensors", "mlrsnet",
                      registry.get("lr_policy", "mlrsnet").build(gamma=0.5, hidden=8))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(with_(
        ("methods.m.lr_policy", {"name": "mlrsnet-transfer",
                                 "options": {"nets": ["nets/run", "mnist1d-mlp"]}}))))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_recipe(recipe)
    assert loaded.methods["m"].lr_policy.options["nets"] == [str(tmp_path / "nets" / "run"),
                                                             "mnist1d-mlp"]
