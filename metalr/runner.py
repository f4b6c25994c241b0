"""Runs a validated recipe: every method and seed side by side, one parent run, one child per run.

Methods with ``tune:`` first get their option chosen on the meta split (the DeepOBS protocol,
run with every tuning seed; a value that diverged or ended at chance on any seed is rejected, see
:mod:`metalr.results`), then every method runs with every seed. For a given seed all methods see
the same data split, shuffling and initial weights. A run that diverges is marked FAILED and the
others go on; an interrupt marks the runs KILLED. Nothing is left RUNNING.
"""

from __future__ import annotations

import inspect
import json
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from metalr import provenance
from metalr.engine import (Engine, EngineConfig, History, TrainingDiverged, is_episodic,
                           is_meta_learned)
from metalr.episodes import train_episodes
from metalr.figures import plot_curves, plot_lr
from metalr.plugins import Registry, get_registry
from metalr.protocols import RunStatus, Task, Tracker
from metalr.recipe import Method, Recipe, resolve_device
from metalr.results import MethodResult, RunSummary, chance_level
from metalr.scheduler import ceiling_epochs
from metalr.weights import load_meta_learner, save_meta_learner


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


def new_output_dir(root: str | Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = Path(root) / (f"{name}-{stamp}" + (f"-{i}" if i else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create an output folder under {root}")


class Runner:
    def __init__(self, recipe: Recipe, registry: Registry | None = None, progress: bool = True):
        self.recipe = recipe
        self.registry = registry or get_registry()
        self.progress = progress
        self.device = resolve_device(recipe.train.device)
        self._tasks: dict[int, Task] = {}
        self.provenance: dict[str, str] = {}

    def task(self, seed: int) -> Task:
        """The task set up for a seed (the split depends on it), built once per seed."""
        if seed not in self._tasks:
            ref = self.recipe.task
            task = self.registry.get("task", ref.name).build(**ref.options)
            task.setup(seed, self.device)
            self._tasks[seed] = task
        return self._tasks[seed]

    def run(self) -> RunSummary:
        recipe, reg = self.recipe, self.registry
        if recipe.train.threads is not None:
            torch.set_num_threads(recipe.train.threads)
        self.provenance = provenance.collect(self.device)
        tracker: Tracker | None = (
            reg.get("tracker", recipe.tracking.name).build(**recipe.tracking.options)
            if recipe.tracking is not None else None
        )
        out = new_output_dir(recipe.output_dir, recipe.name)
        (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.resolved(), sort_keys=False))
        (out / "provenance.json").write_text(json.dumps(self.provenance, indent=2) + "\n")
        seeds = recipe.train.all_seeds
        tune_epochs = recipe.tuning.epochs or recipe.train.epochs
        tuning_jobs = [Job(name, seed, tune_epochs, (m.tune, v), tuning=True)
                       for name, m in recipe.methods.items() if m.tune
                       for v in (m.tune_grid or recipe.tuning.grid)
                       for seed in recipe.tuning.seeds]
        final_count = len(recipe.methods) * len(seeds)
        total = len(tuning_jobs) * tune_epochs + final_count * recipe.train.epochs
        summary = RunSummary(recipe.name, out, self.task(seeds[0]).metric,
                             self.task(seeds[0]).higher_is_better,
                             chance=chance_level(self.task(seeds[0])))
        try:
            with self._tracked(tracker, recipe.name, flatten(recipe.resolved()), None) as parent, \
                    tqdm(total=total, desc=recipe.name, unit="epoch", disable=not self.progress,
                         dynamic_ncols=True) as bar:
                summary.run_id = parent
                if tracker is not None:
                    tracker.log_artifact(parent, str(out / "recipe.yaml"))
                    tracker.log_artifact(parent, str(out / "provenance.json"))
                for job in tuning_jobs:
                    summary.tuning.append(self._run_job(job, tracker, parent, out, bar))
                chosen = summary.choose_tuned()
                for name in recipe.methods:
                    for seed in seeds:
                        tuned = chosen.get(name)
                        job = Job(name, seed, recipe.train.epochs, tuned)
                        summary.results.append(self._run_job(job, tracker, parent, out, bar))
                self._write_outputs(summary, tracker, parent)
        finally:
            if tracker is not None:
                tracker.close()
        return summary

    def _write_outputs(self, summary: RunSummary, tracker: Tracker | None, parent: str | None):
        out = summary.output_dir
        first = {}
        for r in summary.results:  # the first finished seed of each method, for LR figures
            if r.history is not None and r.method not in first:
                first[r.method] = r.history
        paths = [out / "results.md", out / "results.csv"]
        tuning = summary.tuning_markdown()
        paths[0].write_text(summary.markdown() + "\n" + (f"\n{tuning}\n" if tuning else ""))
        paths[1].write_text(summary.csv())
        if summary.tuning:
            paths.append(out / "tuning.csv")
            paths[-1].write_text(summary.tuning_csv())
        if first:
            paths.append(plot_lr(first, out / "lr.png"))
            paths.append(plot_curves(summary.mean_histories(), out / "curves.png", summary.metric))
        if tracker is not None:
            for path in paths:
                tracker.log_artifact(parent, str(path))

    def _line(self, result: MethodResult) -> str:
        if result.status != "FINISHED":
            return f"{result.label}: {result.status} ({result.error})"
        m = self.task(result.seed).metric
        split = "meta" if result.tuning else "test"
        return (f"{result.label}: {split} {m} {result.final(f'{split}_{m}'):.4f}, "
                f"final LR {result.history.lrs[-1]:.4g}, {result.history.wall_time:.1f} s")

    @contextmanager
    def _tracked(self, tracker: Tracker | None, name: str, params: dict[str, Any],
                 parent: str | None) -> Iterator[str | None]:
        """A tracker run that ends FINISHED, FAILED or KILLED, never left RUNNING."""
        if tracker is None:
            yield None
            return
        run_id = start_run(tracker, self.recipe.name, name, params, parent, self.provenance)
        status: RunStatus = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            tracker.end_run(run_id, status)

    def _build(self, job: Job, method: Method, task: Task):
        reg, recipe = self.registry, self.recipe
        torch.manual_seed(job.seed)  # the same initial weights for every method of a seed
        model = reg.get("model", recipe.model.name).build(task.spec, **recipe.model.options)
        model.to(self.device)
        optimizer = reg.get("optimizer", method.optimizer.name).build(
            model.parameters(), **method.optimizer.options)
        options = dict(method.lr_policy.options)
        if job.tuned is not None:
            options[job.tuned[0]] = job.tuned[1]
        policy = reg.get("lr_policy", method.lr_policy.name).build(**options)
        if (is_meta_learned(policy) or is_episodic(policy)) and method.meta.weights:
            load_meta_learner(method.meta.weights, policy, policy_name=method.lr_policy.name)
        return model, optimizer, policy, options

    def _run_job(self, job: Job, tracker: Tracker | None, parent: str | None, out: Path,
                 bar: tqdm) -> MethodResult:
        recipe, train = self.recipe, self.recipe.train
        method = recipe.methods[job.method]
        task = self.task(job.seed)
        model, optimizer, policy, options = self._build(job, method, task)
        learned = is_meta_learned(policy) or is_episodic(policy)
        config = EngineConfig(
            epochs=job.epochs, batch_size=train.batch_size, seed=job.seed, device=self.device,
            t_val=method.meta.t_val, meta_batch_size=method.meta.batch_size,
            meta_lr=method.meta.lr, meta_weight_decay=method.meta.weight_decay,
            meta_train=method.meta.mode == "meta-train",
            clip_grad_norm=train.clip_grad_norm or getattr(task, "clip_grad_norm", None),
            eval_every=train.eval_every, explode_factor=train.explode_factor,
        )
        engine = Engine(task, model, optimizer, policy, config)
        result = MethodResult(job.method, job.seed, "FAILED", label=job.label,
                              tuned=job.tuned, tuning=job.tuning)
        folder = out / job.folder
        folder.mkdir()
        params = flatten({"method": job.method, "seed": job.seed, "tuning": job.tuning,
                          **method.model_dump(mode="json"),
                          "lr_policy": {"name": method.lr_policy.name, "options": options},
                          "train": {**train.model_dump(mode="json"), "epochs": job.epochs}})
        logged = 0  # steps whose LR and loss have gone to the tracker
        save_at = set(method.meta.save_epochs)
        if method.meta.save_phases:
            save_at |= set(ceiling_epochs(job.epochs, method.meta.save_phases))
        run_id = None

        def save_theta(tag: str) -> None:
            path = save_meta_learner(folder / f"theta-{tag}.safetensors", method.lr_policy.name,
                                     policy, extra={"metalr.recipe": recipe.name})
            result.files[tag] = path
            if tracker is not None:
                tracker.log_artifact(run_id, str(path), "theta")

        def on_epoch(epoch: int, metrics: Mapping[str, float], history: History) -> None:
            nonlocal logged
            if tracker is not None:
                for s in range(logged, len(history.lrs)):
                    tracker.log_metrics(run_id, {"step_lr": history.lrs[s],
                                                 "step_train_loss": history.losses[s]}, s)
                tracker.log_metrics(run_id, metrics, epoch + 1)
            logged = len(history.lrs)
            if learned and epoch + 1 in save_at:
                save_theta(f"epoch{epoch + 1:04d}")

        try:
            with self._tracked(tracker, job.label, params, parent) as run_id:
                result.run_id = run_id
                if is_episodic(policy) and config.meta_train:  # trains itself, then runs frozen
                    self._train_episodes(job, method, task, config, policy, tracker, run_id)
                try:
                    history = engine.fit(on_epoch=on_epoch, progress=bar.update)
                except TrainingDiverged as exc:
                    result.error = f"{job.method}, seed {job.seed}: {exc}"
                    result.history = exc.history
                    raise
                result.history = history
                if learned:
                    save_theta("final")
                self._save_history(folder, history, task.metric, tracker, run_id, job.label)
        except TrainingDiverged:
            bar.update(job.epochs - len(result.history.epochs if result.history else []))
        except Exception as exc:  # one broken run must not take a long suite down
            result.error = f"{job.method}, seed {job.seed}: {type(exc).__name__}: {exc}"
            bar.write(traceback.format_exc())
            bar.update(job.epochs - len(result.history.epochs if result.history else []))
        else:
            result.status = "FINISHED"
        if self.progress:
            bar.write(self._line(result))
        return result

    def _train_episodes(self, job: Job, method: Method, task: Task, config: EngineConfig,
                        policy: Any, tracker: Tracker | None, run_id: str | None) -> None:
        """Episode i is a fresh run with seed ``1000 * (seed + 1) + i`` on this seed's split."""
        def make_engine(i: int, acting: Any) -> Engine:
            seed = 1000 * (job.seed + 1) + i
            model, optimizer, _, _ = self._build(replace(job, seed=seed), method, task)
            return Engine(task, model, optimizer, acting, replace(config, seed=seed,
                                                                 meta_train=False))

        def open_run(name: str, params: Mapping[str, Any], parent: str | None) -> str:
            return start_run(tracker, self.recipe.name, name, params, parent, self.provenance)

        train_episodes(policy, make_engine, tracker=tracker, open_run=open_run, parent=run_id,
                       label=job.label, progress=self.progress)
        policy.frozen = True

    @staticmethod
    def _save_history(folder: Path, history: History, metric: str, tracker: Tracker | None,
                      run_id: str | None, label: str) -> None:
        probe = history.probe
        (folder / "history.json").write_text(json.dumps(
            {"lrs": history.lrs, "losses": history.losses, "epochs": history.epochs,
             "wall_time": history.wall_time, "t_val": history.t_val,
             "probe": None if probe is None else {
                 "lr": probe.lr, "best": probe.best, "edge": probe.edge,
                 "initial_loss": probe.initial_loss,
                 "steps_per_point": probe.steps_per_point, "at_edge": probe.at_edge,
                 "losses": {f"{k:.6g}": v for k, v in probe.losses.items()}}}))
        if tracker is not None:
            setup = {"probe_lr": probe.lr} if probe is not None else {}
            if history.t_val is not None:
                setup["meta_t_val"] = history.t_val
            if setup:
                tracker.log_metrics(run_id, setup, 0)
        files = [plot_lr({label: history}, folder / "lr.png"),
                 plot_curves({label: history}, folder / "curves.png", metric)]
        if tracker is not None:
            for path in files:
                tracker.log_artifact(run_id, str(path))
