"""A corpus of broken recipes and overrides, as a new user writes them.

Each goes through ``metalr validate`` and ``metalr run`` in an empty folder and must end with
exit code 2, a message naming the problem (the words listed), no traceback, and nothing
written: no MLflow store, no output folder. In process (the CLI's ``main``), a few by subprocess.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from metalr.cli import build_parser, main, parse_args
from metalr.engine.weights import save_meta_learner
from metalr.recipes.loader import load_recipe

pytestmark = pytest.mark.faults

ROOT = Path(__file__).parents[1]

BASE = {
    "name": "tiny",
    "task": {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 2, "seed": 0, "batch_size": 64, "device": "cpu"},
    "methods": {
        "m": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
              "lr_policy": {"name": "mlrsnet", "options": {"gamma": 0.5, "hidden": 8}}},
        "f": {"optimizer": "sgd", "lr_policy": {"name": "fixed", "options": {"lr": 0.1}}},
    },
    "tracking": "mlflow",
}


def with_(*changes: tuple[str, object]) -> dict:
    """BASE with ``(dotted.path, value)`` changes; the value ``None`` deletes the key."""
    data = copy.deepcopy(BASE)
    for path, value in changes:
        *parents, last = path.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return data


BASE_TEXT = yaml.safe_dump(BASE, sort_keys=False)

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))

DUPLICATE_TOP = BASE_TEXT + "name: other\n"
DUPLICATE_METHOD = """\
name: tiny
task: {name: mnist1d, options: {meta_size: 100, num_samples: 600}}
model: {name: mlp, options: {hidden: [16]}}
train: {epochs: 2, device: cpu}
methods:
  f: {optimizer: sgd, lr_policy: fixed}
  g: {optimizer: sgd, lr_policy: fixed}
  f: {optimizer: adam, lr_policy: fixed}
"""
DUPLICATE_NESTED = DUPLICATE_METHOD.replace("  g: {optimizer: sgd, lr_policy: fixed}\n",
                                            "  g: {optimizer: sgd, lr_policy: {name: fixed, "
                                            "options: {lr: 0.1, lr: 0.2}}}\n")

# (id, the recipe: text, bytes, a dict, a callable of the nets folder or None for BASE;
#  overrides; words the message must contain)
CASES = [
    # -- the file ----------------------------------------------------------------------------
    ("yaml-syntax", "name: [unclosed\n", [], ["not valid YAML", "line"]),
    ("binary-file", b"\x89PNG\r\n\x1a\n\0\0\0IHDR", [], ["binary file"]),
    ("not-utf8", b"name: caf\xe9\n", [], ["not UTF-8"]),
    ("top-level-list", "- name: tiny\n", [], ["a recipe is a mapping"]),
    ("empty-file", "", [], ["a recipe is a mapping"]),
    ("alias-bomb", BOMB, [], ["expands to more than", "aliases"]),
    ("recursive-alias", "name: &n [*n]\n", [], ["expands to more than"]),
    ("duplicate-top-level", DUPLICATE_TOP, [], ["duplicate key 'name'", "lines 1 and"]),
    ("duplicate-method", DUPLICATE_METHOD, [], ["methods.f", "duplicate key 'f' on lines 6 and 8"]),
    ("duplicate-nested", DUPLICATE_NESTED, [], ["methods.g.lr_policy.options.lr",
                                                "duplicate key 'lr' on lines 7 and 7"]),
    # -- numbers -------------------------------------------------------------------------------
    ("epochs-bool", with_(("train.epochs", True)), [], ["train.epochs", "not a boolean"]),
    ("epochs-float", with_(("train.epochs", 2.5)), [], ["train.epochs", "2.5"]),
    ("batch-size-bool", with_(("train.batch_size", False)), [], ["train.batch_size", "boolean"]),
    ("seeds-bool", with_(("train.seeds", [1, True])), [], ["train.seeds.1", "boolean"]),
    ("option-bool", with_(("methods.f.lr_policy.options.lr", True)), [],
     ["methods.f.lr_policy.options.lr", "boolean"]),
    ("lr-inf", None, ["methods.f.lr_policy.options.lr=.inf"],
     ["methods.f.lr_policy.options.lr", "inf is not a finite number"]),
    ("meta-lr-nan", None, ["methods.m.meta.lr=.nan"], ["methods.m.meta.lr", "not a finite number"]),
    ("threads-bool", with_(("train.threads", True)), [], ["train.threads", "boolean"]),
    ("seed-beyond-int64", None, ["train.seed=99999999999999999999"], ["train.seed", "4294967295"]),
    ("seed-negative", with_(("train.seed", -1)), [], ["train.seed", "greater than or equal to 0"]),
    ("batch-beyond-int64", None, ["train.batch_size=99999999999999999999"],
     ["train.batch_size", "less than or equal"]),
    ("batch-size-zero", with_(("train.batch_size", 0)), [], ["train.batch_size", "greater than 0"]),
    ("width-negative", with_(("model.options.hidden", [-5])), [],
     ["model.options.hidden.0", "greater than 0"]),
    ("width-absurd", with_(("model.options.hidden", [10**8, 10**8])), [],
     ["model.options", "parameters", "GiB", "smaller widths"]),
    # -- names and overrides -------------------------------------------------------------------
    ("name-dots", with_(("name", "..")), [], ["name", "only dots"]),
    ("name-slash", with_(("name", "a/b")), [], ["name", "letters, digits"]),
    ("name-empty", None, ["name="], ["name", "letters, digits"]),
    ("method-name-dots", lambda nets: {**BASE, "methods": {"..": BASE["methods"]["f"]}}, [],
     ["methods...", "only dots"]),
    ("override-empty-part", None, ["train.=5"], ["train.=5", "malformed override"]),
    ("override-no-key", None, ["=5"], ["an override is written key.path=value"]),
    ("override-not-mapping", None, ["train.epochs.x=1"], ["train.epochs", "not a mapping"]),
    ("override-unknown-key", None, ["train.epoch=5"], ["train.epoch", "did you mean 'epochs'"]),
    ("override-duplicate", None, ["task={name: mnist1d, name: digits}"], ["duplicate key 'name'"]),
    ("unknown-policy", with_(("methods.m.lr_policy.name", "mlrsnt")), [],
     ["methods.m.lr_policy.name", "did you mean 'mlrsnet'"]),
    # -- meta settings and net files ----------------------------------------------------------
    ("meta-on-fixed", with_(("methods.f.meta", {"t_val": 5})), [],
     ["methods.f.meta", "'fixed' has no parameters theta", "t_val"]),
    ("weights-on-fixed", lambda nets: with_(("methods.f.meta", {"weights": str(nets / "good.safetensors")})),
     [], ["methods.f.meta", "no parameters theta"]),
    ("meta-test-no-weights", with_(("methods.m.meta", {"mode": "meta-test"})), [],
     ["methods.m.meta.mode", "needs meta.weights"]),
    ("weights-pickle", lambda nets: with_(("methods.m.meta.weights", str(nets / "theta.pt"))), [],
     ["methods.m.meta.weights", "not a safetensors file", "never from pickle"]),
    ("weights-truncated", lambda nets: with_(("methods.m.meta.weights", str(nets / "cut.safetensors"))),
     [], ["methods.m.meta.weights", "not a safetensors file"]),
    ("weights-wrong-shape", lambda nets: with_(("methods.m.meta.weights", str(nets / "big.safetensors"))),
     [], ["methods.m.meta.weights", "do not fit"]),
    ("weights-wrong-kind", lambda nets: with_(("methods.m.meta.weights", str(nets / "mlp.safetensors"))),
     [], ["methods.m.meta.weights", "holds a 'mlp-lr' net, not 'mlrsnet'"]),
    ("weights-bad-json", lambda nets: with_(("methods.m.meta.weights", str(nets / "json.safetensors"))),
     [], ["methods.m.meta.weights", "is not JSON"]),
    ("weights-foreign", lambda nets: with_(("methods.m.meta.weights", str(nets / "plain.safetensors"))),
     [], ["methods.m.meta.weights", "not saved by metalr"]),
    ("weights-folder", lambda nets: with_(("methods.m.meta.weights", str(nets))), [],
     ["methods.m.meta.weights", "a folder, not a file"]),
    ("weights-missing", with_(("methods.m.meta.weights", "/nonexistent/theta.safetensors")), [],
     ["methods.m.meta.weights", "no such file"]),
    ("transfer-pickle", lambda nets: with_(("methods.t", {
        "optimizer": "sgd", "lr_policy": {"name": "mlrsnet-transfer",
                                          "options": {"nets": [str(nets / "theta.pt")]}}})), [],
     ["methods.t.lr_policy.options.nets", "not a safetensors file"]),
    ("transfer-not-a-net", lambda nets: with_(("methods.t", {
        "optimizer": "sgd", "lr_policy": {"name": "mlrsnet-transfer",
                                          "options": {"nets": [str(nets / "fixed.safetensors")]}}})),
     [], ["methods.t.lr_policy.options.nets", "not a loss-to-LR net"]),
    # -- tuning --------------------------------------------------------------------------------
    ("tune-grid-refused", with_(("methods.f.tune", "lr"), ("methods.f.tune_grid", [0.1, -0.1])), [],
     ["methods.f.tune_grid.1", "-0.1 for lr of 'fixed'", "greater than 0"]),
    ("tune-grid-int-option", with_(("methods.f.lr_policy", {"name": "sgdr"}), ("methods.f.tune", "T_0"),
                                   ("methods.f.tune_grid", [2, 2.5])), [],
     ["methods.f.tune_grid.1", "'T_0' of 'sgdr' is an integer option"]),
    ("tuning-grid-refused", with_(("methods.f.tune", "lr"), ("tuning", {"grid": [-1.0, 0.1]})), [],
     ["tuning.grid.0", "-1.0 for lr"]),
    # -- the task's data and metrics -----------------------------------------------------------
    ("meta-size-beyond-data", with_(("task.options.meta_size", 1000)), [],
     ["task.options", "meta_size 1000 leaves no training data"]),
    ("meta-size-zero-meta-train", with_(("task.options.meta_size", 0)), [],
     ["methods.m.meta.batch_size", "meta-training needs a meta split", "no meta set"]),
    ("monitor-unknown", with_(("methods.f.lr_policy", {"name": "plateau",
                                                       "options": {"monitor": "meta_accuarcy"}})), [],
     ["methods.f.lr_policy.options.monitor", "did you mean 'meta_accuracy'"]),
    ("monitor-other-task", with_(("methods.f.lr_policy", {"name": "plateau",
                                                          "options": {"monitor": "meta_perplexity"}})),
     [], ["meta_perplexity", "is not a metric task MNIST1D reports"]),
    ("lm-batch-beyond-data", with_(("task", {"name": "pydoc-lm"}), ("model", {"name": "lstm-lm"}),
                                   ("train.batch_size", 10**7), ("methods.m", None)), [],
     ["train.batch_size", "does not fit the data", "under 2 rows"]),
    # -- where a run writes --------------------------------------------------------------------
    ("tracking-folder-under-file", lambda nets: with_(("tracking", {"name": "mlflow", "options": {
        "tracking_uri": f"sqlite:///{nets / 'theta.pt'}/store/mlflow.db"}})), [],
     ["tracking.options.tracking_uri", "theta.pt is a file, so the store's folder"]),
    ("tracking-unknown-scheme", with_(("tracking", {"name": "mlflow", "options": {
        "tracking_uri": "mlfow://host/x"}})), [], ["unknown scheme 'mlfow'"]),
    ("tracking-not-sqlite", lambda nets: with_(("tracking", {"name": "mlflow", "options": {
        "tracking_uri": f"sqlite:///{nets / 'theta.pt'}"}})), [], ["is not an SQLite database"]),
    ("tracking-unreachable", with_(("tracking", {"name": "mlflow", "options": {
        "tracking_uri": "http://127.0.0.1:9"}})), [], ["cannot reach 127.0.0.1:9"]),
    ("output-dir-is-file", lambda nets: with_(("output_dir", str(nets / "theta.pt"))), [],
     ["output_dir", "is a file, not a folder"]),
    # -- several at once -----------------------------------------------------------------------
    ("shape-and-build-at-once", with_(("methods.m.optimizer.options.momentum", float("inf")),
                                      ("model.options.hidden", [10**8, 10**8])), [],
     ["2 problems", "momentum: inf is not a finite number", "smaller widths"]),
    ("three-at-once", with_(("train.epochs", True), ("name", ".."), ("trian", {})), ["train.=1"],
     ["4 problems", "train.epochs", "name", "trian", "train.=1"]),
]


@pytest.fixture(scope="module")
def nets(tmp_path_factory, registry) -> Path:
    """Net files, good and broken, as a user might hand them over."""
    folder = tmp_path_factory.mktemp("nets")
    mlrsnet = registry.get("lr_policy", "mlrsnet")
    save_meta_learner(folder / "good.safetensors", "mlrsnet", mlrsnet.build(gamma=0.5, hidden=8))
    save_meta_learner(folder / "big.safetensors", "mlrsnet", mlrsnet.build(gamma=0.5, hidden=12))
    save_meta_learner(folder / "mlp.safetensors", "mlp-lr",
                      registry.get("lr_policy", "mlp-lr").build(gamma=0.5, hidden=8))
    good = (folder / "good.safetensors").read_bytes()
    (folder / "cut.safetensors").write_bytes(good[: len(good) // 2])
    with open(folder / "theta.pt", "wb") as f:
        pickle.dump({"w": [1.0, 2.0]}, f)
    tensors = {"w": torch.zeros(2)}
    save_file(tensors, str(folder / "json.safetensors"),
              metadata={"metalr.policy": "mlrsnet", "metalr.options": "{hidden: 8"})
    save_file(tensors, str(folder / "plain.safetensors"))
    save_file(tensors, str(folder / "fixed.safetensors"),
              metadata={"metalr.policy": "fixed", "metalr.options": json.dumps({"lr": 0.1})})
    return folder


def write_recipe(folder: Path, recipe, nets: Path) -> Path:
    if callable(recipe):
        recipe = recipe(nets)
    if recipe is None:
        recipe = BASE_TEXT
    path = folder / "recipe.yaml"
    if isinstance(recipe, bytes):
        path.write_bytes(recipe)
    else:
        path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    return path


def assert_refused(command: list[str], work: Path, capsys, words: list[str]) -> str:
    code = main(command)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in out + err
    for word in words:
        assert word in err, f"{word!r} not in:\n{err}"
    assert len(err) < 5000, err[:2000]  # one clear line per problem, never pages
    assert sorted(os.listdir(work)) == [], "something was written"
    return err


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("recipe,overrides,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_recipe_is_refused_before_anything_is_written(
        tmp_path, empty_cwd, nets, capsys, command, recipe, overrides, words):
    path = write_recipe(tmp_path, recipe, nets)
    err = assert_refused([command, str(path), *overrides], empty_cwd, capsys, words)
    assert str(path) in err  # the file is named


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_folder_given_as_recipe(tmp_path, empty_cwd, capsys, command):
    assert_refused([command, str(tmp_path)], empty_cwd, capsys, ["is a folder, not a recipe file"])


def test_alias_bomb_message_is_short(tmp_path, empty_cwd, nets, capsys):
    path = write_recipe(tmp_path, BOMB, nets)
    err = assert_refused(["validate", str(path)], empty_cwd, capsys, ["aliases"])
    assert len(err) < 500


def test_every_problem_has_its_line(tmp_path, empty_cwd, nets, capsys):
    text = BASE_TEXT.replace("epochs: 2", "epochs: true").replace("lr: 0.1", "lr: .inf")
    lines = text.splitlines()
    path = write_recipe(tmp_path, text, nets)
    err = assert_refused(["validate", str(path)], empty_cwd, capsys, ["2 problems"])
    epochs_line = next(i for i, line in enumerate(lines, 1) if "epochs: true" in line)
    lr_line = next(i for i, line in enumerate(lines, 1) if "lr: .inf" in line)
    assert f"train.epochs: True: a number is needed here, not a boolean (line {epochs_line})" in err
    assert f"(line {lr_line})" in err


def test_override_changes_only_the_key_it_names_through_anchors():
    """digits.yaml shares one anchored optimizer mapping among four methods."""
    path = ROOT / "recipes/transfer/digits.yaml"
    key = "methods.sgdm-fixed.optimizer.options.momentum"
    recipe = load_recipe(path, [f"{key}=0.5"])
    momenta = {name: m.optimizer.options.get("momentum") for name, m in recipe.methods.items()}
    assert momenta["sgdm-fixed"] == 0.5
    assert momenta["mlrsnet-transfer"] == momenta["sgdm-multistep"] == 0.9
    assert momenta["sgdm-cosine"] == 0.9


def test_quickstart_with_fewer_epochs_validates(empty_cwd, capsys):
    code = main(["validate", str(ROOT / "recipes/quickstart.yaml"), "train.epochs=20"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "20 epochs" in out
    assert os.listdir(empty_cwd) == []


def test_options_may_follow_the_overrides():
    parser = build_parser()
    args = parse_args(parser, ["run", "r.yaml", "train.epochs=3", "-q", "train.seed=1"])
    assert args.quiet and args.overrides == ["train.epochs=3", "train.seed=1"]
    with pytest.raises(SystemExit):
        parse_args(parser, ["run", "r.yaml", "train.epochs=3", "--loud"])


@pytest.mark.parametrize("content,words", [
    (b"\0\1\2binary", "binary file"),
    (BOMB.encode(), "expands to more than"),
])
def test_installed_command_refuses_without_traceback(tmp_path, empty_cwd, content, words):
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "metalr.cli", "run", str(path), "train.epochs=1",
                           "-q"], capture_output=True, text=True, cwd=empty_cwd)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert os.listdir(empty_cwd) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["validate", "run"])
def test_cuda_asked_for_where_there_is_none(tmp_path, empty_cwd, nets, capsys, command):
    path = write_recipe(tmp_path, with_(("model.options.hidden", [10**8, 10**8])), nets)
    assert_refused([command, str(path), "train.device=cuda"], empty_cwd, capsys,
                   ["train.device: 'cuda': no CUDA device here"])


@pytest.mark.gpu
def test_a_model_too_large_for_the_gpu(tmp_path, empty_cwd, nets, capsys):
    """Measured against the GPU's memory, not the host's."""
    path = write_recipe(tmp_path, with_(("model.options.hidden", [10**6, 10**6])), nets)
    assert_refused(["validate", str(path), "train.device=cuda"], empty_cwd, capsys,
                   ["model.options", "of cuda memory here"])
