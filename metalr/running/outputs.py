"""What a suite leaves on disk besides its record (:mod:`metalr.running.rundir`): the folder
itself, one run's history, figures and traceback, and the suite's tables and figures, each also
sent to the tracker where there is one.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

from metalr.contracts.protocols import Tracker
from metalr.engine.history import History
from metalr.running.figures import plot_curves, plot_lr
from metalr.running.results import RunSummary
from metalr.running.tracking import Landed, log_once


def new_output_dir(root: str | Path, name: str) -> Path:
    """A new folder ``root/name-YYYYmmdd-HHMMSS[-i]``; ``mkdir`` is exclusive, so two runs
    started in the same second never share one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = Path(root) / (f"{name}-{stamp}" + (f"-{i}" if i else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create an output folder under {root}")


def write_outputs(summary: RunSummary) -> list[Path]:
    """The suite's tables and figures; figures of the first finished seed of each method."""
    out = summary.output_dir
    first = {}
    for r in summary.results:
        if r.history is not None and r.history.lrs and r.method not in first:
            first[r.method] = r.history
    paths = [out / "results.md", out / "results.csv"]
    extra = [t for t in (summary.per_seed_markdown(), summary.tuning_markdown()) if t]
    paths[0].write_text(summary.markdown() + "\n" + "".join(f"\n{t}\n" for t in extra))
    paths[1].write_text(summary.csv())
    if summary.tuning:
        paths.append(out / "tuning.csv")
        paths[-1].write_text(summary.tuning_csv())
    if first:
        paths.append(plot_lr(first, out / "lr.png"))
        means = summary.mean_histories()
        if means:
            paths.append(plot_curves(means, out / "curves.png", summary.metric))
    return paths


def save_history(folder: Path, history: History, metric: str, tracker: Tracker | None,
                 run_id: str | None, label: str, landed: Landed | None = None) -> None:
    """One run's ``history.json`` and figures, its probe's and recheck's choices as params and
    their cost as metrics (each once, see :class:`Landed`)."""
    probe = history.probe
    # History's own plain form, the one a checkpoint holds (probe and recheck included)
    (folder / "history.json").write_text(json.dumps(history.to_dict()))
    log_params = getattr(tracker, "log_params", None)
    if probe is not None and callable(log_params):  # optional (the Tracker protocol)
        # only what a rerun of the probe gives again (a run restarted from its first
        # step logs them twice; a store refuses a param that changes): no seconds
        log_params(run_id, {"probe_lr": f"{probe.lr:.6g}", "probe_steps": probe.steps,
                            "probe_signal": probe.signal})
    recheck = history.recheck
    if recheck is not None and callable(log_params):
        log_params(run_id, {"recheck_step": history.recheck_step,
                            "recheck_lr": f"{recheck.lr:.6g}", "recheck_steps": recheck.steps,
                            "recheck_restart": recheck.restart})
    if history.restarts and callable(log_params):  # the steps after which a dead net restarted
        log_params(run_id, {"restarts": " ".join(map(str, history.restarts)),
                            "restarts_blown": " ".join(map(str, history.blown)) or "-"})
    if history.rollbacks and callable(log_params):  # the steps after which a run that blew up
        # late went back to its last good epoch
        log_params(run_id, {"rollbacks": " ".join(map(str, history.rollbacks))})
    if tracker is not None:
        setup = ({"probe_lr": probe.lr, "probe_seconds": probe.seconds}
                 if probe is not None else {})
        if recheck is not None:
            setup["recheck_seconds"] = recheck.seconds
        if history.t_val is not None:
            setup["meta_t_val"] = history.t_val
        if setup:  # once: a run resumed after it ended sends them again otherwise
            log_once(tracker, landed or Landed(tracker, run_id, False), setup, 0)
    files = [plot_lr({label: history}, folder / "lr.png"),
             plot_curves({label: history}, folder / "curves.png", metric)]
    if tracker is not None:
        for path in files:
            tracker.log_artifact(run_id, str(path))


def save_error(folder: Path, tracker: Tracker | None, run_id: str | None) -> None:
    """The traceback being handled, as ``error.txt`` in the run's folder and its tracker run:
    the screen gets one line, the traceback goes where it can be read later."""
    try:
        path = folder / "error.txt"
        path.write_text(traceback.format_exc())
        if tracker is not None:
            tracker.log_artifact(run_id, str(path))
    except Exception:  # a full or read-only disk: the one-line reason still shows
        pass
