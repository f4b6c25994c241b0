"""Runs a validated recipe: every method side by side on the same data, seed and initial weights.

One parent run per recipe and one child run per method in the tracker; files go to the run's
output folder. A method that diverges is marked FAILED and the others go on; an interrupt marks
the runs KILLED. Nothing is ever left RUNNING.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from metalr.engine import Engine, EngineConfig, History, TrainingDiverged, is_meta_learned
from metalr.figures import plot_curves, plot_lr
from metalr.plugins import Registry, get_registry
from metalr.protocols import RunStatus, Tracker
from metalr.recipe import Method, Recipe, resolve_device
from metalr.weights import save_meta_learner


@dataclass
class MethodResult:
    name: str
    status: RunStatus
    history: History | None = None
    error: str | None = None
    run_id: str | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def final(self, key: str) -> float | None:
        if self.history is None:
            return None
        values = [e[key] for e in self.history.epochs if key in e]
        return values[-1] if values else None


@dataclass
class RunSummary:
    recipe: Recipe
    output_dir: Path
    metric: str
    results: list[MethodResult]
    run_id: str | None = None

    @property
    def ok(self) -> bool:
        return all(r.status == "FINISHED" for r in self.results)

    def table(self) -> str:
        """A Markdown table: test metric, final LR, wall time, status per method."""
        rows = [f"| method | test {self.metric} | test loss | final LR | wall time (s) | status |",
                "| --- | --- | --- | --- | --- | --- |"]
        for r in self.results:
            m, loss = r.final(f"test_{self.metric}"), r.final("test_loss")
            lr = r.history.lrs[-1] if r.history and r.history.lrs else None
            wall = r.history.wall_time if r.history else None
            rows.append(f"| {r.name} | {_fmt(m, '.4f')} | {_fmt(loss, '.4f')} | {_fmt(lr, '.4g')} "
                        f"| {_fmt(wall, '.1f')} | {r.status} |")
        return "\n".join(rows)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return out


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

    def run(self) -> RunSummary:
        recipe, reg = self.recipe, self.registry
        tracker: Tracker | None = (
            reg.get("tracker", recipe.tracking.name).build(**recipe.tracking.options)
            if recipe.tracking is not None else None
        )
        out = new_output_dir(recipe.output_dir, recipe.name)
        resolved = recipe.resolved()
        (out / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        task = reg.get("task", recipe.task.name).build(**recipe.task.options)
        task.setup(recipe.train.seed, self.device)
        summary = RunSummary(recipe, out, task.metric, [])
        with self._tracked(tracker, recipe.name, flatten(resolved), None) as parent:
            summary.run_id = parent
            if tracker is not None:
                tracker.log_artifact(parent, str(out / "recipe.yaml"))
            total = recipe.train.epochs * len(recipe.methods)
            with tqdm(total=total, desc=recipe.name, unit="epoch", disable=not self.progress,
                      dynamic_ncols=True) as bar:
                for name, method in recipe.methods.items():
                    bar.set_postfix_str(name)
                    result = self._run_method(name, method, task, tracker, parent, out, bar.update)
                    summary.results.append(result)
                    if self.progress:
                        bar.write(self._line(result, task.metric))
            histories = {r.name: r.history for r in summary.results if r.history}
            if histories:
                for path in (plot_lr(histories, out / "lr.png"),
                             plot_curves(histories, out / "curves.png", task.metric)):
                    if tracker is not None:
                        tracker.log_artifact(parent, str(path))
            (out / "results.md").write_text(summary.table() + "\n")
            if tracker is not None:
                tracker.log_artifact(parent, str(out / "results.md"))
        if tracker is not None:
            tracker.close()
        return summary

    @staticmethod
    def _line(result: MethodResult, metric: str) -> str:
        if result.status != "FINISHED":
            return f"{result.name}: {result.status} ({result.error})"
        return (f"{result.name}: test {metric} {result.final('test_' + metric):.4f}, "
                f"final LR {result.history.lrs[-1]:.4g}, {result.history.wall_time:.1f} s")

    @contextmanager
    def _tracked(self, tracker: Tracker | None, name: str, params: dict[str, Any],
                 parent: str | None) -> Iterator[str | None]:
        """A tracker run that ends FINISHED, FAILED or KILLED, never left RUNNING."""
        if tracker is None:
            yield None
            return
        run_id = tracker.start_run(self.recipe.name, name, params, parent)
        status: RunStatus = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            tracker.end_run(run_id, status)

    def _run_method(self, name: str, method: Method, task: Any, tracker: Tracker | None,
                    parent: str | None, out: Path, advance) -> MethodResult:
        recipe, reg, train = self.recipe, self.registry, self.recipe.train
        folder = out / name
        folder.mkdir()
        torch.manual_seed(train.seed)  # same initial weights for every method
        model = reg.get("model", recipe.model.name).build(task.spec, **recipe.model.options)
        model.to(self.device)
        optimizer = reg.get("optimizer", method.optimizer.name).build(
            model.parameters(), **method.optimizer.options)
        policy = reg.get("lr_policy", method.lr_policy.name).build(**method.lr_policy.options)
        learned = is_meta_learned(policy)
        if learned and method.meta.weights:
            from metalr.weights import read_meta_learner

            policy.load_state_dict(read_meta_learner(method.meta.weights)[2])
        config = EngineConfig(
            epochs=train.epochs, batch_size=train.batch_size, seed=train.seed, device=self.device,
            t_val=method.meta.t_val, meta_batch_size=method.meta.batch_size,
            meta_lr=method.meta.lr, meta_weight_decay=method.meta.weight_decay,
            meta_train=method.meta.mode == "meta-train",
            clip_grad_norm=train.clip_grad_norm or getattr(task, "clip_grad_norm", None),
            eval_every=train.eval_every,
        )
        engine = Engine(task, model, optimizer, policy, config)
        result = MethodResult(name, "FAILED")
        params = flatten({"method": name, **method.model_dump(mode="json"),
                          "train": train.model_dump(mode="json")})
        policy_opts = dict(method.lr_policy.options)

        def save_theta(tag: str) -> None:
            opts = {**policy_opts, **({"gamma": float(policy.gamma)} if hasattr(policy, "gamma") else {})}
            path = save_meta_learner(folder / f"theta-{tag}.safetensors", method.lr_policy.name,
                                     opts, policy, extra={"metalr.recipe": recipe.name})
            result.files[tag] = path
            if tracker is not None:
                tracker.log_artifact(run_id, str(path), "theta")

        logged = 0  # steps whose LR and loss have gone to the tracker

        def on_epoch(epoch: int, metrics: Mapping[str, float], history: History) -> None:
            nonlocal logged
            if tracker is not None:
                for s in range(logged, len(history.lrs)):
                    tracker.log_metrics(run_id, {"step_lr": history.lrs[s],
                                                 "step_train_loss": history.losses[s]}, s)
                tracker.log_metrics(run_id, metrics, epoch + 1)
            logged = len(history.lrs)
            if learned and epoch + 1 in method.meta.save_epochs:
                save_theta(f"epoch{epoch + 1:04d}")

        try:
            with self._tracked(tracker, name, params, parent) as run_id:
                result.run_id = run_id
                history = engine.fit(on_epoch=on_epoch, progress=advance)
                result.history = history
                if learned:
                    save_theta("final")
                (folder / "history.json").write_text(json.dumps(
                    {"lrs": history.lrs, "losses": history.losses, "epochs": history.epochs,
                     "wall_time": history.wall_time}))
                files = [plot_lr({name: history}, folder / "lr.png"),
                         plot_curves({name: history}, folder / "curves.png", task.metric)]
                if tracker is not None:
                    for path in files:
                        tracker.log_artifact(run_id, str(path))
        except TrainingDiverged as exc:
            result.error = f"{name}, seed {train.seed}: {exc}"
            return result
        result.status = "FINISHED"
        return result
