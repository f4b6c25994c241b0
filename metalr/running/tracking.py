"""A tracker run's lifecycle, apart from the runner so that sweeps and ``metalr runs`` use it
too: start one with metalr's tags, continue one on resume, end it never left RUNNING, and send
each metric once, however often a run was resumed.
"""

from __future__ import annotations

import inspect
import json
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metalr.contracts.protocols import RunStatus, Tracker
from metalr.running import rundir
from metalr.running.rundir import RunError

if TYPE_CHECKING:
    from metalr.engine.history import History

OUTPUT_TAG, HOST_TAG = "metalr.output_dir", "metalr.host"
"""Tags of every run metalr starts: the folder it writes to and the machine (``runs --clean``
checks the folder's lock, on this machine only)."""
HOST = socket.gethostname()


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted params (a store takes flat ones); lists and dicts as JSON."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return out


def start_run(tracker: Tracker, experiment: str, name: str, params: Mapping[str, Any],
              parent: str | None, tags: Mapping[str, str]) -> str:
    """``tracker.start_run`` with tags, or without them for a tracker that takes none."""
    args = inspect.signature(tracker.start_run).parameters
    if "tags" in args or any(a.kind is a.VAR_KEYWORD for a in args.values()):
        return tracker.start_run(experiment, name, params, parent, tags=tags)
    return tracker.start_run(experiment, name, params, parent)


def resume_run(tracker: Tracker, run_id: str) -> None:
    """Mark an existing run RUNNING again, to continue logging into it."""
    reopen = getattr(tracker, "resume_run", None)
    if not callable(reopen):
        raise RunError(f"the tracker {type(tracker).__name__} cannot continue a run "
                       "(it has no resume_run); resume with tracking: none")
    reopen(run_id)


@contextmanager
def tracked(tracker: Tracker | None, experiment: str, name: str, params: Mapping[str, Any],
            parent: str | None, tags: Mapping[str, str], run_id: str | None = None,
            on_start: Callable[[str], None] | None = None) -> Iterator[str | None]:
    """A tracker run (``run_id``: an existing one, continued) that ends FINISHED, FAILED or
    KILLED, never left RUNNING; ``None`` without a tracker."""
    if tracker is None:
        yield None
        return
    if run_id is None:
        run_id = start_run(tracker, experiment, name, params, parent, tags)
    else:
        resume_run(tracker, run_id)
    status: RunStatus = "FAILED"
    try:
        if on_start is not None:
            on_start(run_id)
        yield run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end_run(run_id, status)


class Landed:
    """What a continued tracker run already holds, so that resuming sends every metric once:
    per metric key, the steps in the store (asked once per key, by ``logged_steps``), and
    those sent since. A new run, or a tracker that cannot tell, holds nothing."""

    def __init__(self, tracker: Tracker | None, run_id: str | None, continued: bool):
        ask = getattr(tracker, "logged_steps", None)
        self._ask = ask if continued and callable(ask) else None
        self.run_id = run_id
        self._steps: dict[str, set[int]] = {}

    def missing(self, metrics: Mapping[str, float], step: int) -> dict[str, float]:
        """The part of ``metrics`` not yet at ``step`` in the store (then counted as sent)."""
        if self._ask is None:
            return dict(metrics)
        out = {}
        for key, value in metrics.items():
            if key not in self._steps:
                self._steps[key] = set(self._ask(self.run_id, key))
            if step not in self._steps[key]:
                self._steps[key].add(step)
                out[key] = value
        return out


def log_once(tracker: Tracker, landed: Landed, metrics: Mapping[str, float], step: int) -> None:
    """``tracker.log_metrics`` of what the run does not hold yet at ``step``."""
    todo = landed.missing(metrics, step)
    if todo:
        tracker.log_metrics(landed.run_id, todo, step)


def relog(tracker: Tracker, landed: Landed, history: History, logged: int) -> None:
    """On resume: send the metrics up to the checkpoint that a kill kept from the store,
    key by key (a kill can land a step's LR and not its loss: they may go in two
    batches), so that none is sent twice."""
    for s in range(logged):
        log_once(tracker, landed, {"step_lr": history.lrs[s],
                                   "step_train_loss": history.losses[s]}, s)
    for i, metrics in enumerate(history.epochs):
        log_once(tracker, landed, metrics, i + 1)


def diverged_steps(history: History, start: int, last: int | None) -> Iterator[
        tuple[int, dict[str, float]]]:
    """Per step from ``start`` to the diverged step ``last`` (all recorded ones if unknown), the
    LR and loss the run recorded; past the last full epoch only the LR is known (the engine
    holds that epoch's losses apart)."""
    end = len(history.lrs) if last is None else min(len(history.lrs), last + 1)
    for step in range(start, end):
        point = {"step_lr": history.lrs[step]}
        if step < len(history.losses):
            point["step_train_loss"] = history.losses[step]
        yield step, point


def mark_killed(tracker: Tracker, folder: Path | None = None) -> list[str]:
    """End as KILLED the RUNNING runs whose process is gone (its folder's lock is free): those
    of ``folder``, or all that metalr started. Returns their ids."""
    running = getattr(tracker, "running_runs", None)
    if not callable(running):
        return []
    killed = []
    for run_id, tags in running():
        where = tags.get(OUTPUT_TAG)
        if where is None or (folder is not None and Path(where) != folder.resolve()):
            continue
        if folder is None and (tags.get(HOST_TAG, HOST) != HOST or rundir.is_running(Path(where))):
            continue  # another machine's run cannot be checked from here; a live one is kept
        tracker.end_run(run_id, "KILLED")
        killed.append(run_id)
    return killed
