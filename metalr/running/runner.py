"""Runs a validated recipe: every method and seed side by side, one parent run, one child per run.

Methods with ``tune:`` first get their option chosen on the meta split (the DeepOBS protocol,
run with every tuning seed; a value that diverged or ended at chance on any seed is rejected, see
:mod:`metalr.running.results`), then every method runs with every seed. For a given seed all methods
see the same data split, shuffling and initial weights. A run that diverges is marked FAILED and the
others go on; so does one whose components fail to build or that raises anything else (FAILED,
one line on screen, the traceback in its folder). Ctrl-C or SIGTERM stops at the next step: the
run is checkpointed and marked KILLED, and the tables and figures of what ran are written.
Nothing is left RUNNING, and ``metalr resume RUN_DIR`` continues (:mod:`metalr.running.rundir`).

The runner owns the suite: its folder and tracker, tuning then the final jobs, the guard around
each job and the tables at the end. One job trains in :mod:`metalr.running.job`; the tracker
runs' lifecycle is :mod:`metalr.running.tracking`, the files besides the record
:mod:`metalr.running.outputs`.
"""

from __future__ import annotations

import contextlib
import json
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from metalr.contracts.protocols import Task, Tracker
from metalr.contracts.registry import Registry, get_registry
from metalr.engine import distributed
from metalr.engine.algorithm import TrainingDiverged, is_episodic
from metalr.engine.device import device_settings, keep_freed_memory
from metalr.engine.stopping import StopRequest
from metalr.recipes.schema import Recipe, resolve_device
from metalr.running import provenance, rundir
from metalr.running.job import Job, Training
from metalr.running.outputs import new_output_dir, save_error, save_history, write_outputs
from metalr.running.results import (
    CHANCE_MARGIN,
    MethodResult,
    RunSummary,
    at_chance,
    chance_level,
)
from metalr.running.rundir import RunError, StoreError
from metalr.running.tracking import (
    HOST,
    HOST_TAG,
    OUTPUT_TAG,
    Landed,
    flatten,
    log_once,
    mark_killed,
    tracked,
)

EXACT_SETTINGS = ("metalr.device", "metalr.torch_threads", "metalr.cpu_capability",
                  "metalr.torch_version", "metalr.world_size")
"""Provenance keys that must not change for a resumed run to match an uninterrupted one."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


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
        self._chance: float | None = None  # the task's, once run() has built it
        self.watch = None  # each evaluated epoch of a final run (metalr.run's on_epoch)
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
        self._metric, self._chance = metric, chance
        self.tags = {**self.provenance, OUTPUT_TAG: str(out.resolve()), HOST_TAG: HOST,
                     **self.extra_tags}
        params = flatten(recipe.resolved())
        params["train.device"] = self.provenance["metalr.device"]  # resolved: never "auto"
        with tracked(tracker, recipe.name, self.run_name or recipe.name, params,
                     self.parent_run, self.tags, parent_id) as parent, \
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
        """The tables and figures, then the same to the parent run with each method's mean
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
            # each method's mean, beside the parent's parameters (per seed: results.csv)
            log_once(tracker, landed, summary.method_metrics(), 0)
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
                  f", probe start LR {probe.lr:.3g}{'' if probe.signal else ' (no signal)'}"
                  f"{' (half-way mark from a constant output)' if probe.constant_mark else ''} "
                  f"({probe.steps} steps, {probe.seconds:.1f} s)")
        history = result.history
        recheck = history.recheck
        if recheck is not None:
            before = history.lrs[history.recheck_step - 1]
            probed += (f", recheck at step {history.recheck_step}: "
                       + (f"LR {before:.3g} -> {recheck.lr:.3g}" if recheck.signal
                          else f"LR {before:.3g} kept")
                       + (", restarted from the first weights" if recheck.restart else "")
                       + f" ({recheck.steps} steps, {recheck.seconds:.1f} s)")
        def lr_after(at: int) -> str:  # the LR of the first step after ``at``
            return f"{history.lrs[min(at, len(history.lrs) - 1)]:.3g}"

        for at in history.restarts:  # the death watch's (the recheck's own is said above)
            if not (recheck is not None and recheck.restart and at == history.recheck_step):
                why = "blew up" if at in history.blown else "dead"
                probed += (f", {why} at step {at}: restarted from the first weights at LR "
                           f"{lr_after(at)}")
        for at in history.rollbacks:
            probed += (f", blew up at step {at}: rolled back to its last good epoch at LR "
                       f"{lr_after(at)}")
        return (f"{result.label}: {split} {metric} {shown}, "
                f"final LR {result.history.lrs[-1]:.4g}{probed}, "
                f"{result.history.wall_time:.1f} s{self._at_chance(value, result.tuning)}")

    def _at_chance(self, value: float | None, tuning: bool) -> str:
        """A run that ended at chance says so on its line, and what to try (a tuning run's
        grid point is rejected for it in the tables instead)."""
        chance = self._chance
        if tuning or value is None or not at_chance(value, chance):
            return ""
        return (f"; ended at chance (<= {chance + CHANCE_MARGIN:.3g}): what to try is in "
                'docs/hard-tasks.md, "On your own task"')

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
        # each run carries its task and model too: MLflow's UI compares runs by their params
        params = flatten({"method": job.method, "seed": job.seed, "tuning": job.tuning,
                          "task": self.recipe.task.model_dump(mode="json"),
                          "model": self.recipe.model.model_dump(mode="json"),
                          **method.model_dump(mode="json"),
                          "lr_policy": {"name": method.lr_policy.name, "options": options},
                          "train": {**self.recipe.train.model_dump(mode="json"),
                                    "epochs": job.epochs}})
        result = MethodResult(job.method, job.seed, "FAILED", label=job.label,
                              tuned=job.tuned, tuning=job.tuning)
        training: Training | None = None
        try:
            if self.writes:
                folder.mkdir(exist_ok=True)
            known = (rundir.read_json(folder / rundir.RUN) or {}).get("run_id")

            def started(run_id: str) -> None:
                rundir.write_json(folder / rundir.RUN, {"run_id": run_id})

            with tracked(tracker, self.recipe.name, job.label, params, parent, self.tags, known,
                         started) as run_id:
                result.run_id = run_id
                try:
                    training = Training(
                        job, method, options, self.recipe.model, self.recipe.train,
                        self.task(job.seed), self.device, self.registry, folder,
                        self.recipe.name, tracker=tracker, run_id=run_id,
                        continued=known is not None, tags=self.provenance, progress=bar.update,
                        stop=self.stop, writes=self.writes, show_episodes=self.progress,
                        watch=self.watch)
                    try:
                        training.run()
                    finally:  # what it got to, stopped or not
                        result.history, result.files = training.history, training.files
                except (TrainingDiverged, StoreError):
                    raise
                except Exception:
                    if self.writes:
                        save_error(folder, tracker, run_id)
                    raise
        except TrainingDiverged as exc:
            result.error = f"{job.method}, seed {job.seed}: {exc}"
        except StoreError as exc:  # not this run's fault: it stops, resumable, and so does all
            result.status = "KILLED"
            result.error = f"stopped: {exc}; `metalr resume` continues it"
            self._finish(folder, result, bar, job, training)
            into.append(result)
            raise
        except KeyboardInterrupt:
            result.status, result.error = "KILLED", "interrupted; `metalr resume` continues it"
            self._finish(folder, result, bar, job, training)
            into.append(result)
            raise
        except Exception as exc:  # one broken run must not take a long suite down
            result.error = f"{job.method}, seed {job.seed}: {_one_line(exc)}"
            if (folder / "error.txt").exists():
                result.error += f" (traceback: {folder / 'error.txt'})"
        else:
            result.status = "FINISHED"
        self._finish(folder, result, bar, job, training)
        into.append(result)

    def _finish(self, folder: Path, result: MethodResult, bar: tqdm, job: Job,
                training: Training | None) -> None:
        """Count the run's epochs in the bar, save how it ended (and the history and figures
        of one cut short), say it in one line."""
        done = 0 if training is None else training.epochs_done
        bar.update(max(job.epochs - done, 0))
        if not self.writes:
            return
        try:
            rundir.save_result(folder, result)
        except OSError as exc:
            result.error = (result.error or "") + f" (result not saved: {_one_line(exc)})"
        if result.status != "FINISHED" and result.history and result.history.lrs:
            with contextlib.suppress(Exception):  # best effort: result.json has it all
                save_history(folder, result.history, self._metric, None, None, result.label)
        if self.report:
            bar.write(self._line(result, self._metric))

