"""Damaged checkpoints say what is wrong in one line: a fallback to ``.prev`` is announced, a
payload lacking a key names the file and the key, a refused payload never advises
``weights_only=False``. Real files written by :func:`metalr.engine.checkpoint.save`, then
altered."""

from __future__ import annotations

import traceback
import types
import warnings
from pathlib import Path

import pytest
import torch

from metalr.engine import checkpoint
from metalr.recipes.schema import Recipe
from metalr.running.runner import Runner

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("restore_threads")]

RECIPE = {
    "name": "ckpt",
    "task": {"name": "digits"},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 2, "batch_size": 64, "device": "cpu", "threads": 1, "seeds": [0]},
    "methods": {"fine": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                         "lr_policy": {"name": "fixed", "options": {"lr": 0.05}}}},
    "tracking": "none",
}


@pytest.fixture
def killed_run(tmp_path, registry) -> Path:
    """A finished one-run suite made to look killed after its last checkpoint: its run folder
    (``checkpoint.pt`` and no ``.prev``, as a finished run leaves it)."""
    data = {**RECIPE, "output_dir": str(tmp_path)}
    summary = Runner(Recipe.model_validate(data), registry=registry, progress=False).run()
    job = summary.output_dir / "fine-seed0"
    (job / "result.json").unlink()
    return job


def resume(job: Path, registry):
    (result,) = Runner.resumable(job.parent, registry=registry, progress=False).run().results
    return result


def test_falling_back_to_the_previous_checkpoint_says_which_and_why(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1, "w": torch.ones(3)})
    checkpoint.save(path, {"epoch": 2, "w": torch.ones(3) * 2})
    good = path.read_bytes()
    for damage, why in [(lambda b: b[:-20] + bytes([b[-20] ^ 0xFF]) + b[-19:], "corrupt"),
                        (lambda b: b[: len(b) // 2], "corrupt"),  # cut short by a full disk
                        (lambda b: b[:10], "not a metalr checkpoint")]:
        path.write_bytes(damage(good))
        with pytest.warns(checkpoint.CheckpointWarning) as caught:
            state, used = checkpoint.load(path)
        assert used == checkpoint.previous(path) and state["epoch"] == 1
        (message,) = [str(w.message) for w in caught]
        assert "\n" not in message and why in message
        assert f"{path} " in message and f"continuing from the previous one, {used}" in message
    # a kill between save's two renames leaves only .prev: nothing to announce
    path.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkpoint.load(path)[1] == checkpoint.previous(path)


def test_a_checkpoint_lacking_a_key_names_the_file_and_the_key(killed_run, registry):
    path = killed_run / "checkpoint.pt"
    state, _ = checkpoint.load(path)
    checkpoint.save(path, {k: v for k, v in state.items() if k != "runner"})
    checkpoint.previous(path).unlink()
    result = resume(killed_run, registry)
    assert result.status == "FAILED" and "\n" not in result.error
    assert "KeyError: 'runner'" not in result.error
    assert f"checkpoint {path} has no 'runner'" in result.error
    assert "delete it to resume from checkpoint.pt.prev, or both to start the run over" in (
        result.error)
    # a key inside a table too; and it is still a KeyError to code that probes for one
    rng = {k: v for k, v in state["rng"].items() if k != "data"}
    checkpoint.save(path, {**state, "rng": rng})
    loaded, _ = checkpoint.load(path)
    with pytest.raises(checkpoint.CheckpointKeyError, match=r"has no 'rng\.data' "):
        loaded["rng"]["data"]
    with pytest.raises(KeyError):
        loaded["nothing"]
    assert loaded.get("nothing") is None and "runner" in loaded


def test_a_loaded_checkpoint_saved_again_loads_again(killed_run, registry):
    """Loaded tables check their keys; what :func:`checkpoint.save` writes of them is still
    plain dicts, which the restricted loader accepts, and a resume from it finishes."""
    path = killed_run / "checkpoint.pt"
    state, _ = checkpoint.load(path)
    checkpoint.save(path, state)
    again, _ = checkpoint.load(path)
    assert again.keys() == state.keys() and again["runner"] == state["runner"]
    assert resume(killed_run, registry).status == "FINISHED"


def test_a_refused_checkpoint_never_advises_loading_it_unrestricted(killed_run, registry):
    path = killed_run / "checkpoint.pt"
    state, _ = checkpoint.load(path)
    checkpoint.save(path, {**state, "extra": types.SimpleNamespace(a=1)})  # a pickled object
    checkpoint.previous(path).unlink()
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.read(path)
    message = str(caught.value)
    assert message == (f"checkpoint {path} cannot be loaded: it holds objects metalr will not "
                       "load (types.SimpleNamespace), possibly unsafe: not a checkpoint metalr "
                       "wrote")
    assert "weights_only" not in "".join(traceback.format_exception(caught.value))
    result = resume(killed_run, registry)
    assert result.status == "FAILED" and f"{path} cannot be loaded" in result.error
    assert "possibly unsafe" in result.error and "weights_only" not in result.error
    assert "weights_only" not in (killed_run / "error.txt").read_text()


def test_a_checkpoint_of_an_earlier_metalr_says_to_start_again(killed_run, registry):
    """Before the run-state contract, a checkpoint kept the policy by walking its attributes;
    such a file cannot resume exactly, and says so in one line."""
    path = killed_run / "checkpoint.pt"
    state, _ = checkpoint.load(path)
    old = {"type": state["policy"]["type"], "captured": {"_lr": 0.05}}  # that format's policy
    checkpoint.save(path, {k: v for k, v in state.items() if k != "objective"} | {"policy": old})
    checkpoint.previous(path).unlink()
    result = resume(killed_run, registry)
    assert result.status == "FAILED" and "\n" not in result.error
    assert (f"checkpoint {path} is from an earlier metalr and cannot resume this run exactly: "
            "delete it and its .prev to start the run again") in result.error


class Forgetful:
    """A third party's policy that declares no run state (metalr.contracts.protocols.Resumable)."""

    def __init__(self, lr: float = 0.05):
        self.value = lr

    def start(self, run): pass
    def lr(self, ctx): return self.value
    def end_epoch(self, epoch, metrics): pass


def test_a_policy_without_a_run_state_is_refused_on_resume_by_name(tmp_path):
    from metalr import hookimpl
    from metalr.contracts.registry import Registry

    @hookimpl
    def register_lr_policies(register):
        register("forgetful", Forgetful)

    registry = Registry(strict=False).load_entry_points()
    assert registry.add_plugin(types.SimpleNamespace(register_lr_policies=register_lr_policies),
                               "tests:forgetful")
    methods = {"fine": {**RECIPE["methods"]["fine"], "lr_policy": {"name": "forgetful"}}}
    data = {**RECIPE, "output_dir": str(tmp_path), "methods": methods}
    summary = Runner(Recipe.model_validate(data), registry=registry, progress=False).run()
    assert [r.status for r in summary.results] == ["FINISHED"]  # it runs, checkpoints and all
    job = summary.output_dir / "fine-seed0"
    (job / "result.json").unlink()
    result = resume(job, registry)
    assert result.status == "FAILED" and "\n" not in result.error
    assert (f"cannot resume: the lr policy 'forgetful' ({__name__}.Forgetful) declares no run "
            "state; implement run_state() / load_run_state() (metalr.contracts.protocols.Resumable) in "
            "it, or delete the run's checkpoint files to start it over") in result.error
