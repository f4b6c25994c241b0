"""A run's output folder as the record of its progress: what resume reads back.

Layout (``RUN_DIR`` is the folder ``metalr run`` prints)::

    RUN_DIR/recipe.yaml, provenance.json    the resolved recipe and where it ran
    RUN_DIR/suite.json                      the parent MLflow run's id and the tracking store
                                            (its absolute URI: resume uses it from any folder)
    RUN_DIR/.lock                           held (flock) by the process running the suite
    RUN_DIR/<job>/run.json                  the child MLflow run's id, written as it starts
    RUN_DIR/<job>/checkpoint.pt[.prev]      the training state (:mod:`metalr.engine.checkpoint`)
    RUN_DIR/<job>/result.json               how the run ended: status, error, history
    RUN_DIR/<job>/error.txt                 the traceback of an unexpected error

A job with a ``result.json`` that is not KILLED is done; resume reads it back and runs the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metalr.running.results import MethodResult

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
RUN = "run.json"
SUITE = "suite.json"
LOCK = ".lock"
DONE = ("FINISHED", "FAILED")  # a KILLED job is continued by resume


class RunError(RuntimeError):
    """A problem that stops a whole ``metalr run`` / ``resume``; one line, names the path."""


class StoreError(RunError):
    """The tracking store cannot be used (a full disk, a damaged database, a server gone).

    It stops the whole command, not one run: every run after it would fail the same way, and a
    run stopped this way is continued by ``metalr resume`` once the store is writable again.
    ``store`` names the store (a SQLite file's path, else its URI).
    """

    def __init__(self, message: str, store: str):
        super().__init__(message)
        self.store = store


def write_json(path: Path, data: Any) -> None:
    """Atomically: a reader (or a resume after a kill) sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def update_json(path: Path, **values: Any) -> None:
    """Set ``values`` in the JSON object at ``path`` (created if missing), atomically."""
    write_json(path, {**(read_json(path) or {}), **values})


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read {path}: {exc}; delete it to run that part again") from exc


def save_result(folder: Path, result: MethodResult) -> None:
    write_json(folder / RESULT, {
        "method": result.method, "seed": result.seed, "status": result.status,
        "label": result.label, "error": result.error, "run_id": result.run_id,
        "tuned": None if result.tuned is None else list(result.tuned),
        "tuning": result.tuning, "files": {k: str(v) for k, v in result.files.items()},
        "history": None if result.history is None else result.history.to_dict(),
    })


def load_result(folder: Path) -> MethodResult | None:
    from metalr.engine.algorithm import (
        History,  # torch-heavy; the CLI imports this module for RunError
    )
    from metalr.running.results import MethodResult

    data = read_json(folder / RESULT)
    if data is None:
        return None
    return MethodResult(
        data["method"], data["seed"], data["status"], label=data["label"], error=data["error"],
        run_id=data["run_id"], tuned=None if data["tuned"] is None else tuple(data["tuned"]),
        tuning=data["tuning"], files={k: Path(v) for k, v in data["files"].items()},
        history=None if data["history"] is None else History.from_dict(data["history"]))


def is_running(folder: Path) -> bool:
    """Whether a live process holds the folder's lock (False where locks are unsupported)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        with open(folder / LOCK, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:  # no folder, or not writable: nobody can be running there
        return False
    return False


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the folder's lock while a process runs in it; a kill releases it."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        f = open(folder / LOCK, "a")
    except OSError as exc:
        raise RunError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunError(f"{folder} is in use by another metalr process; wait for it to end "
                           "(or stop it) before resuming") from None
        yield
