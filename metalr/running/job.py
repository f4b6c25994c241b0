"""One run of a suite: what it is (:class:`Job`) and how it trains (:class:`Training`), from
its checkpoint when there is one, logging each step and epoch to the tracker once.

The runner decides which jobs run and guards each one; a :class:`Training` takes only what one
run needs, so that it can be read (and tested) without a suite around it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from metalr.contracts.protocols import Task, Tracker
from metalr.contracts.registry import Registry
from metalr.engine import checkpoint
from metalr.engine.algorithm import (
    Engine,
    EngineConfig,
    History,
    TrainingDiverged,
    is_episodic,
    is_meta_learned,
)
from metalr.engine.device import rng_aside
from metalr.engine.episodes import train_episodes
from metalr.engine.stopping import StopRequest
from metalr.engine.weights import ceiling_epochs, load_meta_learner, save_meta_learner
from metalr.recipes.schema import ComponentRef, Method, TrainConfig
from metalr.running import rundir
from metalr.running.outputs import save_history
from metalr.running.rundir import StoreError
from metalr.running.tracking import Landed, diverged_steps, log_once, relog, start_run


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


def _no_progress(epochs: int) -> None:
    pass


@dataclass
class Training:
    """Trains one job into ``folder``: builds its model, optimizer and LR policy, continues from
    the folder's checkpoint, logs to ``tracker`` run ``run_id`` (``continued``: a run that may
    hold metrics already) and saves theta, the history and the figures. Under torchrun every
    rank trains; only the one that ``writes`` saves.

    What it got to stays on it when it stops: ``epochs_done`` (checkpoint included),
    ``history`` (set once training ends, or the one a divergence or a stop carried) and
    ``files`` (the theta files saved).
    """

    job: Job
    method: Method
    options: dict[str, Any]  # the LR policy's, the tuned value included
    model: ComponentRef
    train: TrainConfig
    task: Task
    device: torch.device
    registry: Registry
    folder: Path
    experiment: str  # the recipe's name: the tracker experiment, and the theta files'
    _: KW_ONLY
    tracker: Tracker | None = None
    run_id: str | None = None
    continued: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)  # of the episode runs
    progress: Callable[[int], None] = _no_progress  # epochs trained, as they pass
    stop: StopRequest | None = None
    writes: bool = True
    show_episodes: bool = False  # the episodes' progress bar
    # called with each evaluated epoch of a final (not tuning) run; True stops the suite there
    watch: Callable[[Job, int, Mapping[str, float]], bool | None] | None = None
    epochs_done: int = field(default=0, init=False)
    history: History | None = field(default=None, init=False)
    files: dict[str, Path] = field(default_factory=dict, init=False)

    def build(self, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
        """The model, optimizer and policy of a run seeded ``seed``."""
        reg, method = self.registry, self.method
        model, optimizer = self.build_model(seed, self.task, self.model, method.optimizer)
        # the policy's own initialisation (MLR-SNet's cell) must not move the model's dropout
        # draws: every method of a seed trains with the same masks (a paired comparison)
        with rng_aside(model):
            policy = reg.get("lr_policy", method.lr_policy.name).build(**self.options)
        if (is_meta_learned(policy) or is_episodic(policy)) and method.meta.weights:
            load_meta_learner(method.meta.weights, policy, policy_name=method.lr_policy.name)
        return model, optimizer, policy

    def build_model(self, seed: int, task: Task, model_ref: ComponentRef,
                    optimizer_ref: ComponentRef) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """A model for ``task`` and its optimizer, seeded ``seed``: the same initial weights for
        every method of a seed."""
        torch.manual_seed(seed)
        model = self.registry.get("model", model_ref.name).build(task.spec, **model_ref.options)
        model.to(self.device)
        optimizer = self.registry.get("optimizer", optimizer_ref.name).build(
            model.parameters(), **optimizer_ref.options)
        return model, optimizer

    def run(self) -> History:
        """Train to the end; a divergence or a stop keeps the history it carries."""
        try:
            return self._run()
        except (TrainingDiverged, KeyboardInterrupt, StoreError) as exc:
            self.history = getattr(exc, "history", None) or self.history
            raise

    def _run(self) -> History:
        job, method, train, task = self.job, self.method, self.train, self.task
        tracker, run_id, folder = self.tracker, self.run_id, self.folder
        model, optimizer, policy = self.build(job.seed)
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
        landed = Landed(tracker, run_id, self.continued)
        if state is not None:
            self.epochs_done = state["epoch"]
            self.progress(state["epoch"])
        if self.continued and tracker is not None:
            relog(tracker, landed, History() if state is None else
                  History.from_dict(state["history"]), logged)
        save_at = set(method.meta.save_epochs)
        if method.meta.save_phases:
            save_at |= set(ceiling_epochs(job.epochs, method.meta.save_phases))

        def save_theta(tag: str) -> None:
            if not self.writes:
                return
            path = save_meta_learner(folder / f"theta-{tag}.safetensors", method.lr_policy.name,
                                     policy, extra={"metalr.recipe": self.experiment})
            self.files[tag] = path
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
            evaluated = any(key.startswith("test_") for key in metrics)
            if self.watch is not None and not job.tuning and evaluated and \
                    self.watch(job, epoch + 1, metrics) and self.stop is not None:
                self.stop.request()  # stops at the next step, checkpointed, as Ctrl-C does

        def on_checkpoint(engine_state: dict[str, Any]) -> None:
            checkpoint.save(folder / rundir.CHECKPOINT,
                            {**engine_state, "runner": {"logged": logged, "run_id": run_id}})

        def progress(n: int) -> None:
            self.epochs_done += n
            self.progress(n)

        if is_episodic(policy) and config.meta_train and state is None:
            # trains itself over episodes first, then runs frozen (a resume from a checkpoint
            # of the frozen run finds the trained weights in the policy's saved state)
            self._train_episodes(config, policy)
        try:
            history = engine.fit(on_epoch=on_epoch, progress=progress,
                                 checkpoint=on_checkpoint if self.writes else None,
                                 resume=state, stop=self.stop)
        except TrainingDiverged as exc:  # its curves up to the divergence, in the tracker too
            if tracker is not None and exc.history is not None:
                for step, point in diverged_steps(exc.history, logged, exc.step):
                    log_once(tracker, landed, point, step)
            raise
        self.history = history
        if not self.writes:
            return history
        for path in sorted(folder.glob("theta-epoch*.safetensors")):  # saved before a resume
            self.files.setdefault(path.stem.removeprefix("theta-"), path)
        if learned:
            save_theta("final")
            if config.meta_train:
                self._log_model(self.files["final"], policy)
        save_history(folder, history, task.metric, tracker, run_id, job.label, landed)
        checkpoint.previous(folder / rundir.CHECKPOINT).unlink(missing_ok=True)
        return history

    def _log_model(self, path: Path, policy: Any) -> None:
        """The net this run meta-learned as the store's own kind of model (MLflow's logged
        models: the UI's Models view; the tracker's optional ``log_model``), with a short card
        saying what made it and how to load it."""
        log_model = getattr(self.tracker, "log_model", None)
        if not callable(log_model):
            return
        job, method = self.job, self.method
        name = f"{self.experiment}-{job.method}-seed{job.seed}"
        options = policy.options() if callable(getattr(policy, "options", None)) else {}
        card = (f"# {name}\n\n`{method.lr_policy.name}` meta-learned by `metalr run` (recipe "
                f"{self.experiment}, method {job.method}, seed {job.seed}) with optimizer "
                f"`{method.optimizer.name}` on model `{self.model.name}`, {job.epochs} epochs; "
                "its run holds the training curves and the recipe.\n\nLoad it with "
                "`LearnedLR.from_pretrained(optimizer, \"models:/<this model's id>\", "
                "total_steps=...)` (docs/scheduler.md).\n")
        log_model(self.run_id, str(path), name, {"lr_policy": method.lr_policy.name, **options},
                  card)

    def _train_episodes(self, config: EngineConfig, policy: Any) -> None:
        """Episode i is a fresh run with seed ``1000 * (seed + 1) + i`` on this seed's split: of
        the recipe's task, or with ``meta.episode_tasks`` of the set's task ``(i // 2) mod n``
        on the episode seed's own split (both runs of an antithetic pair share task, seed and
        split; a set that meta-trains once for many tasks should not see one split only)."""
        tracker = self.tracker
        specs = self.method.meta.episode_tasks
        tasks: dict[tuple[int, int], Task] = {}  # the current pair's

        def make_engine(i: int, acting: Any) -> Engine:
            seed = 1000 * (self.job.seed + 1) + i
            run_config = replace(config, seed=seed, meta_train=False)
            if not specs:
                model, optimizer, _ = self.build(seed)
                return Engine(self.task, model, optimizer, acting, run_config)
            n = (i // 2) % len(specs)
            spec = specs[n]
            if (n, seed) not in tasks:
                tasks.clear()
                tasks[n, seed] = self.registry.get("task", spec.task.name).build(
                    **spec.task.options)
                tasks[n, seed].setup(seed, self.device)
            task = tasks[n, seed]
            model, optimizer = self.build_model(seed, task, spec.model,
                                                spec.optimizer or self.method.optimizer)
            return Engine(task, model, optimizer, acting, replace(
                run_config, epochs=spec.epochs,
                batch_size=spec.batch_size or self.train.batch_size,
                clip_grad_norm=self.train.clip_grad_norm or getattr(task, "clip_grad_norm", None)))

        def open_run(name: str, params: Mapping[str, Any], parent: str | None) -> str:
            return start_run(tracker, self.experiment, name, params, parent, self.tags)

        train_episodes(policy, make_engine, tracker=tracker, open_run=open_run,
                       parent=self.run_id, label=self.job.label, progress=self.show_episodes)
        policy.frozen = True
