"""Provenance: every run records the device, threads, CPU kernels, versions and git commit."""

from __future__ import annotations

import json
import platform
import subprocess
import types
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

import metalr
from metalr import hookimpl
from metalr.cli import main
from metalr.contracts.registry import Registry
from metalr.recipes.schema import Recipe
from metalr.running import provenance
from metalr.running.runner import Runner
from metalr.testing import check_tracker

RECIPE = {
    "name": "prov",
    "task": {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 1, "seeds": [0], "batch_size": 64, "device": "cpu"},
    "tuning": {"grid": [0.05], "seeds": [0, 1]},
    "methods": {"fixed": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                          "lr_policy": {"name": "fixed", "options": {"lr": 0.05}}, "tune": "lr"}},
}


def expected_git() -> dict[str, str]:
    """What the tags should say about git, found independently of metalr.running.provenance."""
    source = Path(metalr.__file__).parent

    def git(*args):
        try:
            proc = subprocess.run(["git", "-C", str(source), *args], capture_output=True,
                                  text=True, timeout=10)
        except OSError:
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    if git("ls-files", "--error-unmatch", "__init__.py") is None:
        return {}
    dirty = [line for line in (git("-c", "status.relativePaths=false", "status", "--porcelain",
                                   "--untracked-files=no") or "")
             .splitlines() if not (line[3:].startswith("docs/") and line.endswith(".md"))]
    return {"metalr.git_commit": git("rev-parse", "HEAD"),
            "metalr.git_dirty": "true" if dirty else "false"}


def expected_tags() -> dict[str, str]:
    return {
        "metalr.device": "cpu",
        "metalr.torch_threads": str(torch.get_num_threads()),
        "metalr.cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "metalr.torch_version": torch.__version__,
        "metalr.python_version": platform.python_version(),
        "metalr.version": metalr.__version__,
        **expected_git(),
    }


def test_collect_on_cpu():
    tags = provenance.collect(torch.device("cpu"))
    assert {k: tags.get(k) for k in expected_tags()} == expected_tags()
    assert "metalr.gpu" not in tags and all(isinstance(v, str) for v in tags.values())


def test_git_state_of_a_checkout_a_folder_and_no_git(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    package = repo / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    assert provenance.git_state(package) == {}  # inside a checkout but not tracked by it
    subprocess.run([*git, "add", "pkg"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    head = head.strip()
    assert provenance.git_state(package) == {"metalr.git_commit": head, "metalr.git_dirty": "false"}
    (repo / "docs").mkdir()
    (repo / "docs" / "page with space.md").write_text("a\n")
    subprocess.run([*git, "add", "docs"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "d"], check=True)
    (repo / "docs" / "page with space.md").write_text("b\n")  # prose: moves no number
    assert provenance.git_state(package)["metalr.git_dirty"] == "false"
    (repo / "docs" / "figures").mkdir()
    (repo / "docs" / "figures" / "lr.png").write_bytes(b"\x89PNG 1")
    subprocess.run([*git, "add", "docs"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "f"], check=True)
    (repo / "docs" / "figures" / "lr.png").write_bytes(b"\x89PNG 2")  # a redrawn figure
    assert provenance.git_state(package)["metalr.git_dirty"] == "false"
    (repo / "docs" / "data.csv").write_text("1\n")  # not prose: could move a number
    subprocess.run([*git, "add", "docs"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "g"], check=True)
    (repo / "docs" / "data.csv").write_text("2\n")
    assert provenance.git_state(package)["metalr.git_dirty"] == "true"
    (repo / "docs" / "data.csv").write_text("1\n")
    (package / "__init__.py").write_text("x = 2\n")
    assert provenance.git_state(package)["metalr.git_dirty"] == "true"
    assert provenance.git_state(tmp_path / "elsewhere") == {}  # no such folder: no tag
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git at all: no tag, no error
    assert provenance.git_state(package) == {}
    assert "metalr.git_commit" not in provenance.collect(torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_collect_on_cuda_names_the_gpu():
    tags = provenance.collect(torch.device("cuda"))
    assert tags["metalr.device"] == f"cuda:{torch.cuda.current_device()}"
    assert tags["metalr.gpu"] == torch.cuda.get_device_name(torch.cuda.current_device())


def test_every_mlflow_run_is_tagged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    recipe = tmp_path / "prov.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(tmp_path / "out")}))
    assert main(["run", str(recipe), "-q"]) == 0

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("prov").experiment_id])
    names = {r.info.run_name for r in runs}
    assert names == {"prov", "fixed/tune lr=0.05/seed0", "fixed/tune lr=0.05/seed1", "fixed/seed0"}
    expected = expected_tags()
    for run in runs:
        assert {k: run.data.tags.get(k) for k in expected} == expected, run.info.run_name
    (folder,) = (tmp_path / "out").iterdir()
    written = json.loads((folder / "provenance.json").read_text())
    assert {k: written.get(k) for k in expected} == expected
    (parent,) = [r for r in runs if r.info.run_name == "prov"]
    assert "provenance.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}


class TaglessTracker:
    """A third party's tracker written before start_run took tags."""

    def __init__(self):
        self.runs: list[tuple[str, str | None]] = []

    def start_run(self, experiment, name, params, parent=None):
        self.runs.append((name, parent))
        return f"run{len(self.runs)}"

    def log_metrics(self, run_id, metrics, step):
        pass

    def log_artifact(self, run_id, path, artifact_path=None):
        pass

    def end_run(self, run_id, status):
        pass

    def close(self):
        pass


def test_a_tracker_without_tags_still_works_but_fails_conformance(tmp_path):
    made: list[TaglessTracker] = []

    @hookimpl
    def register_trackers(register):
        register("tagless", lambda: made.append(TaglessTracker()) or made[-1])

    registry = Registry(strict=False).load_entry_points()
    registry.add_plugin(types.SimpleNamespace(register_trackers=register_trackers), "tests")
    recipe = Recipe.model_validate({**RECIPE, "tracking": "tagless", "output_dir": str(tmp_path),
                                    "tuning": {"grid": [0.05], "seeds": [0]}})
    summary = Runner(recipe, registry=registry, progress=False).run()
    assert summary.ok and [name for name, _ in made[0].runs] == [
        "prov", "fixed/tune lr=0.05/seed0", "fixed/seed0"]
    written = json.loads((summary.output_dir / "provenance.json").read_text())
    assert written["metalr.device"] == "cpu"
    with pytest.raises(AssertionError, match="start_run must take tags"):
        check_tracker(registry.get("tracker", "tagless"), {})
