"""Runs a validated recipe: every method and seed side by side, one parent run, one child per run.

Methods with ``tune:`` first get their option chosen on the meta split (the DeepOBS protocol,
run with every tuning seed; a value that diverged or ended at chance on any seed is rejected, see
:mod:`metalr.running.results`), then every method runs with every seed. For a given seed all methods
see the same data split, shuffling and initial weights. A run that diverges is marked FAILED and the
others go on; so does one whose components fail to build or that raises anything else (FAILED,
one line on screen, the traceback in its folder). Ctrl-C or SIGTERM stops at the next step: the
run is checkpointed and marked KILLED, and the tables and figures of what ran are written.
Nothing is left RUNNING, and ``metalr resume RUN_DIR`` continues (:mod:`metalr.running.rundir`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import socket
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from metalr.contracts.protocols import RunStatus, Task, Tracker
from metalr.contracts.registry import Registry, get_registry
from metalr.engine import checkpoint, distributed
from metalr.engine.algorithm import (
    Engine,
    EngineConfig,
    History,
    TrainingDiverged,
    is_episodic,
    is_meta_learned,
)
from metalr.engine.device import device_settings, keep_freed_memory
from metalr.engine.episodes import train_episodes
from metalr.engine.stopping import StopRequest
from metalr.engine.weights import ceiling_epochs, load_meta_learner, save_meta_learner
from metalr.recipes.loader import Method, Recipe, resolve_device
from metalr.running import provenance, rundir
from metalr.running.figures import plot_curves, plot_lr
from metalr.running.results import MethodResult, RunSummary, chance_level
from metalr.running.rundir import RunError, StoreError


@dataclass(frozen=True)
class Job:
    """One training run: a method, a seed, and the tuned option's value if any."""

    method: str
    seed: int
    epochs: int
    tuned: tuple[str, float] | None = None
    tuning: bool = False

    @property
    def label(self) -> str:
        if self.tuning:
            return f"{self.method}/tune {self.tuned[0]}={self.tuned[1]:g}/seed{self.seed}"
        return f"{self.method}/seed{self.seed}"

    @property
    def folder(self) -> str:
        return self.label.replace("/", "-").replace(" ", "-")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
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


EXACT_SETTINGS = ("metalr.device", "metalr.torch_threads", "metalr.cpu_capability",
                  "metalr.torch_version", "metalr.world_size")
"""Provenance keys that must not change for a resumed run to match an uninterrupted one."""

OUTPUT_TAG, HOST_TAG = "metalr.output_dir", "metalr.host"
"""Tags of every run metalr starts: the folder it writes to and the machine (``runs --clean``
checks the folder's lock, on this machine only)."""
HOST = socket.gethostname()


def resume_run(tracker: Tracker, run_id: str) -> None:
    """Mark an existing run RUNNING again, to continue logging into it."""
    reopen = getattr(tracker, "resume_run", None)
    if not callable(reopen):
        raise RunError(f"the tracker {type(tracker).__name__} cannot continue a run "
                       "(it has no resume_run); resume with tracking: none")
    reopen(run_id)


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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


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


_RECIPE_COPY = ("it is the recipe the suite started with (its MLflow parent run holds a copy, "
                "artifact recipe.yaml): put it back to resume, or start the suite over with "
                "`metalr run`")


class Runner:
    def __init__(self, recipe: Recipe, registry: Registry | None = None, progress: bool = True,
                 report: bool = True):
        """``progress``: the progress bar and the folder line; ``report``: one line per run as
        it ends (``metalr run -q`` keeps these: they are results, not progress)."""
        self.recipe = recipe
        self.registry = registry or get_registry()
        # under torchrun: every rank runs the recipe, rank 0 alone prints, tracks and writes
        self.group = distributed.launched()
        self.writes = self.group.is_main
        self.progress, self.report = progress and self.writes, report and self.writes
        self.device = distributed.local_device(resolve_device(recipe.train.device))
        self._tasks: dict[int, Task] = {}
        self.provenance: dict[str, str] = {}
        self.stop = StopRequest()
        self.output_dir: Path | None = None  # set: run() continues the suite there
        self.parent_run: str | None = None  # a sweep's run: the suite's run is nested in it
        self.extra_tags: dict[str, str] = {}  # a sweep point's key values, on all its runs
        self.run_name: str | None = None  # the suite run's name; unset: the recipe's name
        self.tracking_uri: str | None = None  # the store (resume --tracking-uri); unset: the
        # one the folder recorded when resuming, else the recipe's

    @classmethod
    def resumable(cls, run_dir: str | Path, registry: Registry | None = None,
                  progress: bool = True, report: bool = True) -> Runner:
        """A runner whose :meth:`run` continues the suite in ``run_dir`` (the folder ``run``
        printed) into its MLflow runs: finished runs are read back, the others continue from
        their last checkpoint."""
        run_dir = Path(run_dir)
        path = run_dir / "recipe.yaml"
        try:
            recipe = Recipe.model_validate(yaml.safe_load(path.read_text()))
        except FileNotFoundError:
            if not (run_dir / "suite.json").is_file():
                raise RunError(f"{run_dir} is not a metalr run folder (no recipe.yaml); pass "
                               "the folder that `metalr run` printed") from None
            raise RunError(f"{path} is missing: {_RECIPE_COPY}") from None
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise RunError(f"cannot read {path}: {_one_line(exc)}; {_RECIPE_COPY}") from None
        runner = cls(recipe, registry, progress, report)
        runner.output_dir = run_dir
        return runner

    def task(self, seed: int) -> Task:
        """The task set up for a run seed, built once per split seed and shared by every method
        (and every run seed, with ``train.split_seed``): the split is ``task.setup``'s seed."""
        split_seed = self.recipe.train.split_seed
        split = seed if split_seed is None else split_seed
        if split not in self._tasks:
            ref = self.recipe.task
            task = self.registry.get("task", ref.name).build(**ref.options)
            task.setup(split, self.device)
            self._tasks[split] = task
        return self._tasks[split]

    def run(self) -> RunSummary:
        """Run the recipe into a new folder under ``recipe.output_dir`` (or continue it).

        Under torchrun (``WORLD_SIZE`` > 1) every rank calls this inside one process group
        (docs/distributed.md): rank 0 creates the folder and tells the others where it is.
        """
        with distributed.process_group(self.device) as group:
            self.group = group
            self.writes, self.progress = group.is_main, self.progress and group.is_main
            self.report = self.report and group.is_main
            self._refuse_episodic()
            resuming = self.output_dir is not None
            if not resuming:
                self.output_dir = self._new_folder()
            if self.progress:
                print(f"{'resuming' if resuming else 'writing to'} {self.output_dir}", flush=True)
            return self._execute(self.output_dir, resuming)

    def _new_folder(self) -> Path:
        """A new output folder, made by rank 0 (the only one, under torchrun)."""
        folder, error = None, None
        if self.writes:
            try:
                folder = new_output_dir(self.recipe.output_dir, self.recipe.name)
            except OSError as exc:
                error = (f"cannot create an output folder under {self.recipe.output_dir}: "
                         f"{exc.strerror or exc}")
        folder, error = distributed.broadcast_object((folder, error))
        if error is not None:
            raise RunError(error)
        return folder

    def _refuse_episodic(self) -> None:
        """Under torchrun, before any work: a learner that trains itself over whole episodes
        (the RL controller) runs its own loop that the ranks cannot share."""
        if not self.group.active:
            return
        for name, method in self.recipe.methods.items():
            if method.meta.mode != "meta-train":
                continue
            try:
                policy = self.registry.get("lr_policy", method.lr_policy.name).build(
                    **method.lr_policy.options)
            except Exception:  # noqa: S112  (its run fails with the reason)
                continue
            if is_episodic(policy):
                raise RunError(
                    f"methods.{name}.lr_policy: {method.lr_policy.name!r} meta-trains itself "
                    f"over whole episodes, which cannot run across {self.group.size} ranks; "
                    "run this recipe without torchrun (or meta-test saved weights: "
                    f"methods.{name}.meta.mode=meta-test with meta.weights)")

    def _execute(self, out: Path, resuming: bool) -> RunSummary:
        recipe = self.recipe
        if recipe.train.threads is not None:
            torch.set_num_threads(recipe.train.threads)
        if recipe.train.keep_freed_memory and self.device.type == "cpu":
            keep_freed_memory()
        self.provenance = provenance.collect(self.device)
        self.provenance["metalr.world_size"] = str(self.group.size)
        self.stop = StopRequest()
        lock = rundir.locked(out) if self.writes else contextlib.nullcontext()
        with (lock, self.stop,  # from here on Ctrl-C stops at the next safe point
              device_settings(self.device, recipe.train.deterministic)):
            if resuming and self.writes:
                self._check_settings(out)
            elif self.writes:
                self._write_recipe(out)
            parent_id = (rundir.read_json(out / rundir.SUITE) or {}).get("parent_run_id")
            tracker: Tracker | None = None
            try:
                try:
                    if recipe.tracking is not None and self.writes:
                        tracker = self._tracker(out, resuming)
                    if resuming and tracker is not None:
                        mark_killed(tracker, out)
                    summary = self._suite(out, tracker, parent_id)
                finally:
                    if tracker is not None:
                        tracker.close()  # ends every run it started, on any path
                failure = getattr(tracker, "failure", None)
                if isinstance(failure, StoreError):  # met on the way, and said nowhere yet
                    raise failure
                return summary
            except StoreError as exc:
                raise RunError(self._store_failed(exc, out, tracker)) from None
            except RunError:
                raise
            except Exception as exc:  # outside any one run (the tracker, the folder): one line
                path = out / "error.txt"
                with contextlib.suppress(OSError):
                    if self.writes:
                        path.write_text(traceback.format_exc())
                raise RunError(f"{recipe.name}: {_one_line(exc)} (traceback: {path})") from exc

    def _tracker(self, out: Path, resuming: bool) -> Tracker:
        """The recipe's tracker, on the store the folder recorded when resuming (so that a
        relative default such as ``sqlite:///mlflow.db`` is the run's, from any folder) or on
        ``self.tracking_uri``; the store it opened is recorded in ``suite.json`` before any
        run starts."""
        ref = self.recipe.tracking
        component = self.registry.get("tracker", ref.name)
        options = dict(ref.options)
        record = rundir.read_json(out / rundir.SUITE) or {}
        uri = self.tracking_uri or (record.get("tracking_uri") if resuming else None)
        if uri is not None:
            fields = component.options.model_fields if component.options else {}
            if "tracking_uri" in fields:
                options["tracking_uri"] = uri
            elif self.tracking_uri is not None:
                raise RunError(f"--tracking-uri: the tracker {ref.name!r} of {out / 'recipe.yaml'}"
                               " has no tracking_uri option; resume without it")
        tracker = component.build(**options)
        used = getattr(tracker, "uri", None)
        # recorded by a new run, or on a resume told where the store is now (a folder from
        # before stores were recorded is not: from another folder, its guess may be wrong)
        told = not resuming or self.tracking_uri is not None
        if told and isinstance(used, str) and used != record.get("tracking_uri"):
            try:
                rundir.update_json(out / rundir.SUITE, tracking_uri=used)
            except OSError as exc:
                tracker.close()
                raise RunError(f"cannot write to {out}: {exc.strerror or exc}") from None
        return tracker

    def _store_failed(self, exc: StoreError, out: Path, tracker: Tracker | None) -> str:
        """The one line for a store that failed: what, where the traceback is, how to go on,
        and which runs the store would not let us end."""
        path = out / "error.txt"
        try:
            path.write_text("".join(traceback.format_exception(exc)))
            where = f" (traceback: {path})"
        except OSError:
            where = ""
        line = (f"{exc}{where}; the run stopped: once the store has room (or is repaired), "
                f"`metalr resume {out}` continues it")
        unclosed = list(getattr(tracker, "unclosed", None) or [])
        if unclosed:
            uri = getattr(tracker, "uri", None)
            flag = f" --tracking-uri {uri}" if isinstance(uri, str) else ""
            line += (f"; {len(unclosed)} MLflow run{'s' * (len(unclosed) != 1)} may remain "
                     f"RUNNING: `metalr runs --clean{flag}` marks them KILLED")
        return line

    def _write_recipe(self, out: Path) -> None:
        try:
            (out / "recipe.yaml").write_text(
                yaml.safe_dump(self.recipe.resolved(), sort_keys=False))
            (out / "provenance.json").write_text(json.dumps(self.provenance, indent=2) + "\n")
        except OSError as exc:
            raise RunError(f"cannot write to {out}: {exc.strerror or exc}") from None

    def _check_settings(self, out: Path) -> None:
        """Warn when the settings that decide the numbers changed since the run started."""
        before = rundir.read_json(out / "provenance.json") or {}
        changed = [f"{key.removeprefix('metalr.')} {before[key]} -> {self.provenance[key]}"
                   for key in EXACT_SETTINGS
                   if key in before and before[key] != self.provenance.get(key)]
        if changed:
            warnings.warn(f"resuming {out} with other settings ({', '.join(changed)}): the rest "
                          "of the run will not match an uninterrupted one bit for bit",
                          stacklevel=3)

    def _suite(self, out: Path, tracker: Tracker | None, parent_id: str | None) -> RunSummary:
        recipe = self.recipe
        seeds = recipe.train.all_seeds
        tune_epochs = recipe.tuning.epochs or recipe.train.epochs
        tuning_jobs = [Job(name, seed, tune_epochs, (m.tune, v), tuning=True)
                       for name, m in recipe.methods.items() if m.tune
                       for v in (m.tune_grid or recipe.tuning.grid)
                       for seed in recipe.tuning.seeds]
        final_count = len(recipe.methods) * len(seeds)
        total = len(tuning_jobs) * tune_epochs + final_count * recipe.train.epochs
        metric, higher_is_better, chance = self._task_info(seeds)
        summary = RunSummary(recipe.name, out, metric, higher_is_better, chance=chance)
        self._metric = metric
        self.tags = {**self.provenance, OUTPUT_TAG: str(out.resolve()), HOST_TAG: HOST,
                     **self.extra_tags}
        params = flatten(recipe.resolved())
        params["train.device"] = self.provenance["metalr.device"]  # resolved: never "auto"
        with self._tracked(tracker, self.run_name or recipe.name, params, self.parent_run,
                           parent_id) as parent, \
                tqdm(total=total, desc=recipe.name, unit="epoch", disable=not self.progress,
                     dynamic_ncols=True) as bar:
            summary.run_id = parent
            landed = Landed(tracker, parent, continued=parent_id is not None)
            if parent_id is None and self.writes:
                rundir.update_json(out / rundir.SUITE, parent_run_id=parent)
                if tracker is not None:
                    tracker.log_artifact(parent, str(out / "recipe.yaml"))
                    tracker.log_artifact(parent, str(out / "provenance.json"))
            try:
                for job in tuning_jobs:
                    self._run_job(job, tracker, parent, out, bar, summary.tuning)
                chosen = summary.choose_tuned()
                for name in recipe.methods:
                    for seed in seeds:
                        job = Job(name, seed, recipe.train.epochs, chosen.get(name))
                        self._run_job(job, tracker, parent, out, bar, summary.results)
            finally:  # on Ctrl-C too: the tables and figures of what ran
                self._write_outputs(summary, tracker, landed, bar)
        return summary

    def _task_info(self, seeds: list[int]) -> tuple[str, bool, float | None]:
        """The task's headline metric, its direction and its chance level, for the tables:
        from the first seed whose task sets up (the runs of the others fail in their guard)."""
        task: Any = self.registry.get("task", self.recipe.task.name).factory
        for seed in seeds:
            try:
                task = self.task(seed)
                break
            except Exception:  # noqa: S112  (that seed's runs fail with the reason)
                continue
        return (getattr(task, "metric", "metric"), getattr(task, "higher_is_better", True),
                chance_level(task))

    def _write_outputs(self, summary: RunSummary, tracker: Tracker | None, landed: Landed,
                       bar: tqdm) -> None:
        """The tables and figures, then the same to the parent run with the per-seed values
        (each once: a resumed suite wrote some of them before it stopped)."""
        if not self.writes:
            return
        try:
            paths = write_outputs(summary)
        except Exception as exc:  # the runs are tracked and saved; say what is missing
            bar.write(f"results not written to {summary.output_dir}: {type(exc).__name__}: "
                      f"{exc}")
            return
        if tracker is None:
            return
        try:
            for path in paths:
                tracker.log_artifact(landed.run_id, str(path))
            # per-seed values, queryable beside the parent's parameters
            log_once(tracker, landed, summary.seed_metrics(), 0)
        except StoreError:
            pass  # the command's error line says it (the tracker's failure)
        except Exception as exc:
            bar.write(f"results not tracked in run {landed.run_id}: {_one_line(exc)}")

    def _line(self, result: MethodResult, metric: str) -> str:
        if result.status != "FINISHED":
            return f"{result.label}: {result.status} ({result.error})"
        split = "meta" if result.tuning else "test"
        value = result.final(f"{split}_{metric}")
        shown = "-" if value is None else f"{value:.4f}"
        probe = result.history.probe
        probed = ("" if probe is None else
                  f", probe start LR {probe.lr:.3g}{'' if probe.signal else ' (no signal)'} "
                  f"({probe.steps} steps, {probe.seconds:.1f} s)")
        history = result.history
        recheck = history.recheck
        if recheck is not None:
            before = history.lrs[history.recheck_step - 1]
            probed += (f", recheck at step {history.recheck_step}: "
                       + (f"LR {before:.3g} -> {recheck.lr:.3g}" if recheck.signal
                          else f"LR {before:.3g} kept")
                       + f" ({recheck.steps} steps, {recheck.seconds:.1f} s)")
        return (f"{result.label}: {split} {metric} {shown}, "
                f"final LR {result.history.lrs[-1]:.4g}{probed}, "
                f"{result.history.wall_time:.1f} s")

    @contextmanager
    def _tracked(self, tracker: Tracker | None, name: str, params: dict[str, Any],
                 parent: str | None, run_id: str | None = None,
                 on_start: Callable[[str], None] | None = None) -> Iterator[str | None]:
        """A tracker run (``run_id``: an existing one, continued) that ends FINISHED, FAILED or
        KILLED, never left RUNNING."""
        if tracker is None:
            yield None
            return
        if run_id is None:
            run_id = start_run(tracker, self.recipe.name, name, params, parent, self.tags)
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

    def _build(self, job: Job, method: Method, task: Task, options: dict[str, Any]):
        reg, recipe = self.registry, self.recipe
        torch.manual_seed(job.seed)  # the same initial weights for every method of a seed
        model = reg.get("model", recipe.model.name).build(task.spec, **recipe.model.options)
        model.to(self.device)
        optimizer = reg.get("optimizer", method.optimizer.name).build(
            model.parameters(), **method.optimizer.options)
        policy = reg.get("lr_policy", method.lr_policy.name).build(**options)
        if (is_meta_learned(policy) or is_episodic(policy)) and method.meta.weights:
            load_meta_learner(method.meta.weights, policy, policy_name=method.lr_policy.name)
        return model, optimizer, policy

    def _run_job(self, job: Job, tracker: Tracker | None, parent: str | None, out: Path,
                 bar: tqdm, into: list[MethodResult]) -> None:
        """One run, guarded: whatever goes wrong (building included) fails this run alone, with
        one line on screen and the traceback in its folder; a finished one is read back. The
        result goes ``into`` the list even when Ctrl-C stops it (KILLED, with its history)."""
        method, folder = self.recipe.methods[job.method], out / job.folder
        saved = rundir.load_result(folder)
        if saved is not None and saved.status in rundir.DONE:
            bar.update(job.epochs)
            if self.report:
                bar.write(self._line(saved, self._metric) + " (done before)")
            into.append(saved)
            return
        self.stop.check()
        options = dict(method.lr_policy.options)
        if job.tuned is not None:
            options[job.tuned[0]] = job.tuned[1]
        params = flatten({"method": job.method, "seed": job.seed, "tuning": job.tuning,
                          **method.model_dump(mode="json"),
                          "lr_policy": {"name": method.lr_policy.name, "options": options},
                          "train": {**self.recipe.train.model_dump(mode="json"),
                                    "epochs": job.epochs}})
        result = MethodResult(job.method, job.seed, "FAILED", label=job.label,
                              tuned=job.tuned, tuning=job.tuning)
        epochs_done = [0]
        try:
            if self.writes:
                folder.mkdir(exist_ok=True)
            known = (rundir.read_json(folder / rundir.RUN) or {}).get("run_id")

            def started(run_id: str) -> None:
                rundir.write_json(folder / rundir.RUN, {"run_id": run_id})

            with self._tracked(tracker, job.label, params, parent, known, started) as run_id:
                result.run_id = run_id
                try:
                    self._train(job, method, options, folder, tracker, run_id, bar, result,
                                epochs_done, continued=known is not None)
                except (TrainingDiverged, KeyboardInterrupt, StoreError) as exc:
                    result.history = getattr(exc, "history", None) or result.history
                    raise
                except Exception:
                    self._save_error(folder, tracker, run_id)
                    raise
        except TrainingDiverged as exc:
            result.error = f"{job.method}, seed {job.seed}: {exc}"
        except StoreError as exc:  # not this run's fault: it stops, resumable, and so does all
            result.status = "KILLED"
            result.error = f"stopped: {exc}; `metalr resume` continues it"
            self._finish(folder, result, bar, epochs_done[0], job.epochs)
            into.append(result)
            raise
        except KeyboardInterrupt:
            result.status, result.error = "KILLED", "interrupted; `metalr resume` continues it"
            self._finish(folder, result, bar, epochs_done[0], job.epochs)
            into.append(result)
            raise
        except Exception as exc:  # one broken run must not take a long suite down
            result.error = f"{job.method}, seed {job.seed}: {_one_line(exc)}"
            if (folder / "error.txt").exists():
                result.error += f" (traceback: {folder / 'error.txt'})"
        else:
            result.status = "FINISHED"
        self._finish(folder, result, bar, epochs_done[0], job.epochs)
        into.append(result)

    def _finish(self, folder: Path, result: MethodResult, bar: tqdm, done: int,
                epochs: int) -> None:
        """Count the run's epochs in the bar, save how it ended (and the history and figures
        of one cut short), say it in one line."""
        bar.update(max(epochs - done, 0))
        if not self.writes:
            return
        try:
            rundir.save_result(folder, result)
        except OSError as exc:
            result.error = (result.error or "") + f" (result not saved: {_one_line(exc)})"
        if result.status != "FINISHED" and result.history and result.history.lrs:
            with contextlib.suppress(Exception):  # best effort: result.json has it all
                self._save_history(folder, result.history, self._metric, None, None,
                                   result.label)
        if self.report:
            bar.write(self._line(result, self._metric))

    @staticmethod
    def _relog(tracker: Tracker, landed: Landed, history: History, logged: int) -> None:
        """On resume: send the metrics up to the checkpoint that a kill kept from the store,
        key by key (a kill can land a step's LR and not its loss: they may go in two
        batches), so that none is sent twice."""
        for s in range(logged):
            log_once(tracker, landed, {"step_lr": history.lrs[s],
                                       "step_train_loss": history.losses[s]}, s)
        for i, metrics in enumerate(history.epochs):
            log_once(tracker, landed, metrics, i + 1)

    def _save_error(self, folder: Path, tracker: Tracker | None, run_id: str | None) -> None:
        if not self.writes:
            return
        try:
            path = folder / "error.txt"
            path.write_text(traceback.format_exc())
            if tracker is not None:
                tracker.log_artifact(run_id, str(path))
        except Exception:  # a full or read-only disk: the one-line reason still shows
            pass

    def _train(self, job: Job, method: Method, options: dict[str, Any], folder: Path,
               tracker: Tracker | None, run_id: str | None, bar: tqdm, result: MethodResult,
               epochs_done: list[int], continued: bool) -> None:
        recipe, train = self.recipe, self.recipe.train
        task = self.task(job.seed)
        model, optimizer, policy = self._build(job, method, task, options)
        learned = is_meta_learned(policy) or is_episodic(policy)
        config = EngineConfig(
            epochs=job.epochs, batch_size=train.batch_size, seed=job.seed, device=self.device,
            t_val=method.meta.t_val, meta_batch_size=method.meta.batch_size,
            meta_lr=method.meta.lr, meta_weight_decay=method.meta.weight_decay,
            meta_train=method.meta.mode == "meta-train",
            clip_grad_norm=train.clip_grad_norm or getattr(task, "clip_grad_norm", None),
            eval_every=train.eval_every, explode_factor=train.explode_factor,
            order_seed=train.order_seed,
            amp=train.amp, amp_dtype=train.amp_dtype, channels_last=train.channels_last,
        )
        objective = self.registry.get("meta_objective", method.meta.objective.name).build(
            **method.meta.objective.options)
        engine = Engine(task, model, optimizer, policy, config, objective,
                        names={"lr_policy": method.lr_policy.name,
                               "meta_objective": method.meta.objective.name})
        found = checkpoint.load(folder / rundir.CHECKPOINT, map_location=self.device)
        state = None if found is None else found[0]
        logged = 0 if state is None else state["runner"]["logged"]  # steps sent to the tracker
        # an existing run (with or without a checkpoint): what the store holds is not resent
        landed = Landed(tracker, run_id, continued)
        if state is not None:
            epochs_done[0] = state["epoch"]
            bar.update(state["epoch"])
        if continued and tracker is not None:
            self._relog(tracker, landed, History() if state is None else
                        History.from_dict(state["history"]), logged)
        save_at = set(method.meta.save_epochs)
        if method.meta.save_phases:
            save_at |= set(ceiling_epochs(job.epochs, method.meta.save_phases))

        def save_theta(tag: str) -> None:
            if not self.writes:
                return
            path = save_meta_learner(folder / f"theta-{tag}.safetensors", method.lr_policy.name,
                                     policy, extra={"metalr.recipe": recipe.name})
            result.files[tag] = path
            if tracker is not None:
                tracker.log_artifact(run_id, str(path), "theta")

        def on_epoch(epoch: int, metrics: Mapping[str, float], history: History) -> None:
            nonlocal logged
            if tracker is not None:
                for s in range(logged, len(history.lrs)):
                    log_once(tracker, landed, {"step_lr": history.lrs[s],
                                               "step_train_loss": history.losses[s]}, s)
                log_once(tracker, landed, metrics, epoch + 1)
            logged = len(history.lrs)
            if learned and epoch + 1 in save_at:
                save_theta(f"epoch{epoch + 1:04d}")

        def on_checkpoint(engine_state: dict[str, Any]) -> None:
            checkpoint.save(folder / rundir.CHECKPOINT,
                            {**engine_state, "runner": {"logged": logged, "run_id": run_id}})

        def progress(n: int) -> None:
            epochs_done[0] += n
            bar.update(n)

        if is_episodic(policy) and config.meta_train and state is None:
            # trains itself over episodes first, then runs frozen (a resume from a checkpoint
            # of the frozen run finds the trained weights in the policy's saved state)
            self._train_episodes(job, method, task, options, config, policy, tracker, run_id)
        try:
            history = engine.fit(on_epoch=on_epoch, progress=progress,
                                 checkpoint=on_checkpoint if self.writes else None,
                                 resume=state, stop=self.stop)
        except TrainingDiverged as exc:  # its curves up to the divergence, in the tracker too
            if tracker is not None and exc.history is not None:
                for step, point in diverged_steps(exc.history, logged, exc.step):
                    log_once(tracker, landed, point, step)
            raise
        result.history = history
        if not self.writes:
            return
        for path in sorted(folder.glob("theta-epoch*.safetensors")):  # saved before a resume
            result.files.setdefault(path.stem.removeprefix("theta-"), path)
        if learned:
            save_theta("final")
        self._save_history(folder, history, task.metric, tracker, run_id, job.label, landed)
        checkpoint.previous(folder / rundir.CHECKPOINT).unlink(missing_ok=True)

    def _train_episodes(self, job: Job, method: Method, task: Task, options: dict[str, Any],
                        config: EngineConfig, policy: Any, tracker: Tracker | None,
                        run_id: str | None) -> None:
        """Episode i is a fresh run with seed ``1000 * (seed + 1) + i`` on this seed's split."""
        def make_engine(i: int, acting: Any) -> Engine:
            seed = 1000 * (job.seed + 1) + i
            model, optimizer, _ = self._build(replace(job, seed=seed), method, task, options)
            return Engine(task, model, optimizer, acting, replace(config, seed=seed,
                                                                 meta_train=False))

        def open_run(name: str, params: Mapping[str, Any], parent: str | None) -> str:
            return start_run(tracker, self.recipe.name, name, params, parent, self.provenance)

        train_episodes(policy, make_engine, tracker=tracker, open_run=open_run, parent=run_id,
                       label=job.label, progress=self.progress)
        policy.frozen = True

    @staticmethod
    def _save_history(folder: Path, history: History, metric: str, tracker: Tracker | None,
                      run_id: str | None, label: str, landed: Landed | None = None) -> None:
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
                                "recheck_lr": f"{recheck.lr:.6g}", "recheck_steps": recheck.steps})
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
