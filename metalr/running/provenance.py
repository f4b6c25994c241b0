"""What a run needs to be reproduced, beyond its recipe: the machine-side settings.

A seeded run repeats exactly on one machine with the same torch, thread count and CPU kernels,
but the same seed gives different numbers when those change: torch picks its CPU kernels by ISA
(``ATEN_CPU_CAPABILITY``: default, avx2, avx512, ...) and sums in a different order with another
thread count (docs/design.md, "Determinism"). These tags go on every tracked run and into
``provenance.json`` beside the run's ``recipe.yaml``.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

_GIT_TIMEOUT = 1.0  # seconds per git call; normally a few milliseconds in all


def collect(device: torch.device) -> dict[str, str]:
    """The tags of a run on ``device``, as strings (call it after the thread count is set)."""
    import metalr  # here, not at the top: metalr/__init__ is still importing when we are

    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    tags = {
        "metalr.device": str(device),
        "metalr.torch_threads": str(torch.get_num_threads()),
        "metalr.cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "metalr.torch_version": torch.__version__,
        "metalr.python_version": platform.python_version(),
        "metalr.version": metalr.__version__,
        "metalr.platform": platform.platform(),
    }
    tags.update(gpu_tags(device))
    tags.update(git_state())
    tags.update(command_tag())  # the command line, for the model card of its nets
    return tags


def gpu_tags(device: torch.device) -> dict[str, str]:
    """GPU name, memory and compute capability, CUDA and cuDNN versions of a CUDA device."""
    if device.type != "cuda":
        return {}
    props = torch.cuda.get_device_properties(device)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"metalr.gpu": torch.cuda.get_device_name(device),
            "metalr.gpu_memory_gib": f"{props.total_memory / 2**30:.1f}",
            "metalr.gpu_capability": f"{props.major}.{props.minor}",
            "metalr.cuda_version": str(torch.version.cuda),
            "metalr.cudnn_version": str(cudnn)}


def git_state(source: Path | None = None) -> dict[str, str]:
    """``metalr.git_commit`` and ``metalr.git_dirty`` when metalr runs from a git checkout.

    Empty when git is missing, slow or refuses, or when the package is not tracked by the
    repository around it (an installed copy in a virtualenv inside some project's checkout).
    Dirty means tracked files differ from the commit, Markdown and figures under docs/ aside (they
    cannot move a number: `metalr reproduce` rewrites them while it regenerates one section
    after another); untracked files are not looked at. Two git
    calls, run side by side: a few milliseconds.
    """
    source = source or Path(__file__).resolve().parents[1]
    calls = {"tracked": ["ls-files", "--error-unmatch", "--", "__init__.py"],
             "status": ["-c", "status.relativePaths=false",  # paths from the root, not cwd
                        "status", "--porcelain=v2", "--branch", "--untracked-files=no"]}
    procs: dict[str, subprocess.Popen] = {}
    out: dict[str, str | None] = {}
    try:
        for key, args in calls.items():
            procs[key] = subprocess.Popen(
                ["git", "--no-optional-locks", "-C", str(source), *args], text=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for key, proc in procs.items():
            stdout, _ = proc.communicate(timeout=_GIT_TIMEOUT)
            out[key] = stdout if proc.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return {}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if out.get("tracked") is None or out.get("status") is None:
        return {}
    lines = out["status"].splitlines()
    commit = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), None)
    if commit is None or commit == "(initial)":
        return {}
    dirty = any(_may_move_numbers(line) for line in lines if line.strip())
    return {"metalr.git_commit": commit, "metalr.git_dirty": "true" if dirty else "false"}


def _may_move_numbers(line: str) -> bool:
    """Whether a ``git status --porcelain=v2`` entry is a change that could move a result:
    anything but Markdown under ``docs/`` and ``docs/figures/`` (prose, and the blocks and
    figures that `metalr reproduce` rewrites while a regeneration of several sections runs).
    Paths are the repository's."""
    if line.startswith("#"):
        return False
    fields = {"1": 8, "2": 9, "u": 10}.get(line[:1], 0)  # the fields before the path
    path = line.split(" ", fields)[-1].split("\t")[0] if fields else ""
    return not ((path.startswith("docs/") and path.endswith(".md"))
                or path.startswith("docs/figures/"))


COMMAND_TAG = "metalr.command"
"""The ``metalr`` command line of a run, paths inside the repository made relative to its root
(what a model card gives as the command that made its net)."""


def repository_root() -> Path | None:
    """The checkout metalr runs from (the folder holding ``metalr/`` and ``.git``), or None for
    an installed copy: the root that recorded paths are made relative to."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / ".git").exists() else None


def command_tag(argv: list[str] | None = None, cwd: Path | None = None,
                root: Path | None = None) -> dict[str, str]:
    """``{"metalr.command": "metalr run recipes/x.yaml key=value"}`` for a process started as
    the ``metalr`` command (or ``python -m metalr``); empty from Python, where no command line
    made the run. Paths that name an existing file or folder become relative to the repository
    root when inside it (the command then reruns from a fresh clone), absolute otherwise, so the
    record never depends on the folder the command was typed in."""
    argv = list(sys.argv if argv is None else argv)
    if not argv or not _is_metalr(argv[0]):
        return {}
    try:  # a record, never a reason for a run to fail
        cwd = Path.cwd() if cwd is None else cwd
        root = repository_root() if root is None else root
        words = ["metalr", *argv[1:2], *(_portable_word(w, cwd, root) for w in argv[2:])]
    except (OSError, ValueError, RuntimeError):
        return {}
    return {COMMAND_TAG: shlex.join(words)}


def _is_metalr(program: str) -> bool:
    path = Path(program)
    return path.stem == "metalr" or (path.name == "__main__.py" and path.parent.name == "metalr")


def _portable_word(word: str, cwd: Path, root: Path | None) -> str:
    """One word of the command line with its path (alone or after ``key=``) made portable."""
    key, sep, value = word.partition("=") if "=" in word and not word.startswith("-") else (
        "", "", word)
    if not value or value.startswith("-") or "://" in value:
        return word
    path = Path(value).expanduser()
    looks_like_path = path.is_absolute() or "/" in value or os.sep in value or path.suffix
    if not looks_like_path:
        return word
    full = path if path.is_absolute() else cwd / path
    try:
        if not full.exists():
            return word
        full = full.resolve()
    except (OSError, ValueError, RuntimeError):  # a name too long, a NUL byte, a symlink loop
        return word
    if root is not None and full.is_relative_to(root.resolve()):
        value = full.relative_to(root.resolve()).as_posix() or "."
    else:
        value = str(full)
    return f"{key}{sep}{value}"
