"""Hostile net files: refused in one line naming the file and the key, before any allocation.

A net is a few thousand floats; a file that is not one (a header nested 100,000 deep, options
that declare a 160 GB net, integer or NaN tensors) must end `metalr nets import` and `metalr
validate` with exit 2 and one line, never a traceback or a run that dies later (issue 20). The
files are written here with safetensors' own writer, torch.save, or header bytes by hand.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults
import torch
import yaml
from metalr_mlrsnet.official import expected_shapes
from safetensors.torch import save_file

from metalr.cli import main
from metalr.engine.weights import (
    MAX_FILE_BYTES,
    OPTIONS_KEY,
    POLICY_KEY,
    WeightsError,
    load_meta_learner,
    read_meta_learner,
)
from metalr.scheduler.learned import load_nets

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def good(registry) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """The tensors and header options of a small, sound mlrsnet."""
    net = registry.get("lr_policy", "mlrsnet").build(hidden=8, gamma=0.5)
    return {k: v.detach().contiguous() for k, v in net.state_dict().items()}, net.options()


def write_net(path: Path, tensors: dict[str, torch.Tensor], options: object = None,
              raw_options: str | None = None, **metadata: str) -> Path:
    """A safetensors net as metalr writes it, with whatever header the test wants."""
    header = {POLICY_KEY: "mlrsnet",
              OPTIONS_KEY: raw_options if raw_options is not None else json.dumps(options),
              **metadata}
    save_file(tensors, str(path), metadata=header)
    return path


def authors_state(**changes: torch.Tensor) -> dict[str, torch.Tensor]:
    """A state_dict in the authors' released layout (hidden 50, width 25)."""
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=g) * 0.3
             for k, shape in expected_shapes(50, 25).items()}
    return {**state, **changes}


def with_nan(t: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = value
    return t


def hostile(kind: str, tmp: Path, good) -> tuple[Path, list[str]]:
    """One hostile file and the words its refusal must contain (besides the file's name)."""
    tensors, options = good
    if kind == "nested-options":  # json.loads recursed into a RecursionError traceback
        return (write_net(tmp / "nested.safetensors", tensors,
                          raw_options="[" * 100_000 + "]" * 100_000),
                [repr(OPTIONS_KEY), "nests JSON", "limit 16"])
    if kind == "huge-header":  # 2 MB of header: safetensors allows 100 MB
        return (write_net(tmp / "header.safetensors", tensors, options, pad="x" * (2 << 20)),
                ["header of", "limit 1,048,576"])
    if kind == "hidden-200000":  # refused before only because a 160 GB allocation failed
        return (write_net(tmp / "hidden.safetensors", tensors, {**options, "hidden": 200_000}),
                [repr(OPTIONS_KEY), "hidden = 200000", "limit 1024"])
    if kind == "layers-1e9":
        return (write_net(tmp / "layers.safetensors", tensors, {**options, "layers": 10**9}),
                [repr(OPTIONS_KEY), "layers = 1000000000", "limit 16"])
    if kind == "too-many-parameters":  # each size in bounds, the net they make is not
        return (write_net(tmp / "params.safetensors", tensors,
                          {**options, "hidden": 1024, "layers": 8}),
                [repr(OPTIONS_KEY), "parameters", "limit 10,000,000"])
    if kind == "int-tensor":  # passed validate; the run died in ZeroDivisionError
        return (write_net(tmp / "int.safetensors",
                          {**tensors, "out.weight": (tensors["out.weight"] * 100).to(torch.int64)},
                          options),
                ["tensor 'out.weight'", "int64", "not a float"])
    if kind == "nan-tensor":  # passed validate
        return (write_net(tmp / "nan.safetensors",
                          {**tensors, "out.weight": with_nan(tensors["out.weight"])}, options),
                ["tensor 'out.weight'", "NaN or inf"])
    if kind == "pth-inf":  # the authors' format: the same check
        path = tmp / "inf.pth"
        torch.save(authors_state(**{"layer3.weight": with_nan(torch.ones(1, 50), float("inf"))}),
                   path)
        return path, ["tensor 'layer3.weight'", "NaN or inf"]
    if kind == "pth-int":
        path = tmp / "int.pth"
        torch.save(authors_state(**{"layer3.bias": torch.ones(1, dtype=torch.int32)}), path)
        return path, ["tensor 'layer3.bias'", "int32", "not a float"]
    if kind == "pth-sparse":
        path = tmp / "sparse.pth"
        torch.save(authors_state(**{"layer3.weight": torch.ones(1, 50).to_sparse()}), path)
        return path, ["tensor 'layer3.weight'", "sparse_coo"]
    if kind == "too-big-file":  # sparse on disk: refused by its size, never read
        path = tmp / "big.pth"
        with open(path, "wb") as f:
            f.truncate(MAX_FILE_BYTES + 1)
        return path, ["bytes, over the", f"{MAX_FILE_BYTES:,}"]
    raise AssertionError(kind)


KINDS = ["nested-options", "huge-header", "hidden-200000", "layers-1e9", "too-many-parameters",
         "int-tensor", "nan-tensor", "pth-inf", "pth-int", "pth-sparse", "too-big-file"]


@pytest.mark.parametrize("kind", KINDS)
def test_nets_import_refuses_a_hostile_file_in_one_line(kind, tmp_path, good, capsys):
    path, words = hostile(kind, tmp_path, good)
    assert main(["nets", "import", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    for word in [f"{path}:", *words]:
        assert word in err, (word, err)
    assert not (tmp_path / "out").exists()  # nothing half-made


@pytest.mark.parametrize("gamma", ["nan", "inf", "0", "-1"])
def test_nets_import_refuses_a_gamma_that_is_no_lr_bound(gamma, tmp_path, capsys):
    """--gamma nan wrote a NaN net; 0 and -1 ended in a math domain error traceback."""
    torch.save(authors_state(), tmp_path / "ok.pth")
    args = ["nets", "import", str(tmp_path / "ok.pth"), "--out", str(tmp_path / "out")]
    assert main([*args, f"--gamma={gamma}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--gamma must be a finite number > 0" in err, err
    assert not (tmp_path / "out").exists()


def transfer_recipe(tmp: Path, net: Path) -> Path:
    """A recipe whose two meta-learners both use ``net``: as a transfer net and as meta.weights."""
    recipe = {
        "name": "hostile-net",
        "task": {"name": "digits"},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "seed": 0},
        "output_dir": str(tmp / "runs"),
        "methods": {
            "t": {"optimizer": "sgd", "lr_policy": {"name": "mlrsnet-transfer",
                                                    "options": {"nets": [str(net)]}}},
            "m": {"optimizer": "sgd",
                  "lr_policy": {"name": "mlrsnet", "options": {"gamma": 0.5, "hidden": 8}},
                  "meta": {"weights": str(net), "mode": "meta-test"}},
        },
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize("kind", ["int-tensor", "nan-tensor"])
def test_validate_refuses_an_integer_or_nan_net_under_both_keys(kind, tmp_path, good, capsys):
    path, words = hostile(kind, tmp_path, good)
    assert main(["validate", str(transfer_recipe(tmp_path, path))]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    for key in ("methods.t.lr_policy.options.nets", "methods.m.meta.weights"):
        line = next((ln for ln in lines if ln.strip().startswith(key)), None)
        assert line is not None, (key, lines)
        for word in [f"{path}:", *words]:
            assert word in line, (word, line)
    assert not (tmp_path / "runs").exists()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metalr", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_the_cli_ends_a_nested_header_in_one_line_not_a_recursion_error(tmp_path, good):
    path, _ = hostile("nested-options", tmp_path, good)
    done = cli("nets", "import", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert str(path) in done.stderr and OPTIONS_KEY in done.stderr


def test_the_cli_validate_refuses_an_integer_net_without_a_traceback(tmp_path, good):
    path, _ = hostile("int-tensor", tmp_path, good)
    done = cli("validate", str(transfer_recipe(tmp_path, path)))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "methods.t.lr_policy.options.nets" in done.stderr
    assert f"{path}: tensor 'out.weight' is int64" in done.stderr


def test_a_hand_written_header_is_bounded_before_safetensors_reads_it(tmp_path):
    """8-byte length + JSON + data, written directly: a header longer than the limit."""
    body = json.dumps({"__metadata__": {POLICY_KEY: "mlrsnet", OPTIONS_KEY: "{}",
                                        "pad": " " * (1 << 20)},
                       "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "long.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\0\0\0\0")
    with pytest.raises(WeightsError, match=r"long\.safetensors: safetensors header of .* over "
                                           r"the limit 1,048,576"):
        read_meta_learner(path)


def test_the_sound_nets_still_load(good, tmp_path):
    """The checks refuse nothing real: the shipped nets and a sound file of each format."""
    assert len(load_nets("mnist1d-mlp")) == 3
    tensors, options = good
    load_meta_learner(write_net(tmp_path / "ok.safetensors", tensors, options))
    torch.save(authors_state(), tmp_path / "ok.pth")
    load_meta_learner(tmp_path / "ok.pth")
