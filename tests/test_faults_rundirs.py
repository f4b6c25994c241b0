"""Damaged run folders: `metalr resume` on a folder whose files were cut short, overwritten or
deleted ends in one line that names the damaged file and what to do, never a traceback, and
never runs over a finished run's result.

One real run (digits, a small MLP, one thread, untracked) is made per module; each case damages
a copy of its folder and resumes it with the real CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.faults

RECIPE = {
    "name": "damaged",
    "task": {"name": "digits"},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 2, "batch_size": 64, "device": "cpu", "threads": 1, "seeds": [0]},
    "methods": {"fixed": {"optimizer": {"name": "sgd"},
                          "lr_policy": {"name": "fixed", "options": {"lr": 0.05}}}},
    "tracking": "none",
}


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metalr.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=240,
                          env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'x.db'}"})


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run folder, never touched by a case (each damages its own copy)."""
    tmp = tmp_path_factory.mktemp("finished")
    (tmp / "r.yaml").write_text(yaml.safe_dump({**RECIPE, "output_dir": str(tmp / "out")}))
    done = cli(tmp, "run", "r.yaml", "-q")
    assert done.returncode == 0, done.stderr
    return next((tmp / "out").glob("damaged-*"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


DAMAGE = {
    # case: (what is done to the copy, the file the message must name)
    "recipe.yaml not YAML": (lambda d: (d / "recipe.yaml").write_text("garbage: [\n"),
                             "recipe.yaml"),
    "recipe.yaml deleted": (lambda d: (d / "recipe.yaml").unlink(), "recipe.yaml"),
    "suite.json not JSON": (lambda d: (d / "suite.json").write_text("{"), "suite.json"),
    "result.json not JSON": (lambda d: (d / "fixed-seed0" / "result.json").write_text("{x"),
                             "result.json"),
    "checkpoint cut short, no result": (
        lambda d: ((d / "fixed-seed0" / "result.json").unlink(),
                   _truncate(d / "fixed-seed0" / "checkpoint.pt")),
        "checkpoint.pt"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_of_a_damaged_folder_names_the_file_in_one_line(finished, tmp_path, case):
    folder = tmp_path / finished.name
    shutil.copytree(finished, folder)
    damage, named = DAMAGE[case]
    damage(folder)
    done = cli(tmp_path, "resume", str(folder), "-q")
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert "Traceback" not in said
    lines = [line for line in said.splitlines() if named in line]
    assert lines, f"no line names {named}:\n{said}"
    assert any(word in lines[0] for word in ("delete", "start", "put it back")), \
        f"the line says nothing of what to do: {lines[0]}"


def test_a_finished_run_is_read_back_not_rerun_when_its_run_json_is_damaged(finished, tmp_path):
    """run.json holds the tracking run id only; a finished run's result.json decides."""
    folder = tmp_path / finished.name
    shutil.copytree(finished, folder)
    before = json.loads((folder / "fixed-seed0" / "result.json").read_text())
    (folder / "fixed-seed0" / "run.json").write_text("[]")
    done = cli(tmp_path, "resume", str(folder), "-q")
    assert done.returncode == 0, done.stderr
    assert "done before" in done.stdout
    assert json.loads((folder / "fixed-seed0" / "result.json").read_text()) == before


def test_a_fallback_to_the_previous_checkpoint_is_one_warning_line(finished, tmp_path):
    folder = tmp_path / finished.name
    shutil.copytree(finished, folder)
    run = folder / "fixed-seed0"
    (run / "result.json").unlink()
    shutil.copy(run / "checkpoint.pt", run / "checkpoint.pt.prev")
    data = bytearray((run / "checkpoint.pt").read_bytes())
    data[-20] ^= 0xFF
    (run / "checkpoint.pt").write_bytes(bytes(data))
    done = cli(tmp_path, "resume", str(folder), "-q")
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "checkpoint.pt" in line]
    assert warned == [f"metalr: warning: checkpoint {run / 'checkpoint.pt'} is corrupt (checksum "
                      f"mismatch); continuing from the previous one, {run / 'checkpoint.pt.prev'}"]
    assert "CheckpointWarning" not in done.stderr
