"""The contracts between the engine and the components that plugins provide.

The engine only ever talks to these protocols; a plugin is free to implement them however it
likes. Each kind is registered through its own hook in :mod:`metalr.hookspecs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

Batch = Any
"""Whatever a task's batches are; only the task itself looks inside."""

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]


@dataclass(frozen=True)
class ModelSpec:
    """What a model factory needs to know about the data it will see."""

    input_shape: tuple[int, ...]
    num_outputs: int
    kind: Literal["classification", "language-model"] = "classification"


@dataclass
class RunInfo:
    """Handed to an LR policy once, before the first step."""

    epochs: int
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    device: torch.device
    seed: int
    task: Task
    probe: Callable[[], Any] | None = None
    """Probes the run's LR scale (:func:`metalr.probe.probe_lr`) on first call, then
    returns the same :class:`metalr.probe.ProbeResult`; None where no probe is possible."""

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class StepContext:
    """Everything an LR policy may look at when it chooses the LR of one training step.

    ``grads`` is the gradient of this batch's loss at ``params``; it has no graph. The two
    callables are there for rules that need more than first-order information on the batch
    (RTHO's Hessian-vector products) or a look at the meta set (hypergradient rules).
    """

    step: int
    epoch: int
    loss: torch.Tensor
    loss_input: torch.Tensor
    params: Sequence[torch.Tensor]
    grads: Sequence[torch.Tensor]
    optimizer: torch.optim.Optimizer
    batch_loss: Callable[[Sequence[torch.Tensor]], torch.Tensor]
    meta_grads: Callable[[], list[torch.Tensor]] | None = None
    meta_loss: Callable[[], float] | None = None
    """The current model's loss on a fresh meta batch, no gradient (an RL controller's state)."""
    batch_outputs: Callable[[Sequence[torch.Tensor] | None], torch.Tensor] | None = None
    """The model's outputs on this batch at the given parameters (None: the current ones)."""


@runtime_checkable
class Task(Protocol):
    """Data with train / meta / test splits, the loss, the metrics and the loss normalisation.

    ``loss_scale`` normalises the loss before a meta-learner sees it (1 for images, ln(vocab)
    for language models, paper Appendix B). ``metric`` names the headline test metric.

    Two optional attributes let ``metalr validate`` check more before a run: ``metrics``, the
    names :meth:`evaluate` returns (default: ``loss`` and ``metric``), against which a plateau
    ``monitor`` is checked; and ``cheap_setup = True`` for a task whose :meth:`setup` is quick
    and offline, which validation then runs to check data-dependent limits (``meta_size``
    against the data, a batch size against a split).
    """

    spec: ModelSpec
    loss_scale: float
    default_gamma: float
    metric: str
    higher_is_better: bool

    def setup(self, seed: int, device: torch.device) -> None: ...

    def num_train_batches(self, batch_size: int) -> int: ...

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]: ...

    def meta_batch(self, batch_size: int, generator: torch.Generator) -> Batch: ...

    def loss(self, model: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]: ...


ModelFactory = Callable[..., nn.Module]
"""``factory(spec: ModelSpec, **options) -> nn.Module``."""

OptimizerFactory = Callable[..., torch.optim.Optimizer]
"""``factory(params, **options) -> torch.optim.Optimizer``; the LR is set by the policy every step."""


@runtime_checkable
class LRPolicy(Protocol):
    """Chooses the learning rate of every training step.

    Checkpoints (docs/reliability.md) save a policy's state. A policy may define
    ``state_dict()`` / ``load_state_dict(state)`` (plain tensors, numbers, strings, containers);
    without them its attributes are saved (tensors, numbers, strings, containers, nested
    modules, torch optimizers and schedulers, generators) and written back after
    :meth:`start` has rebuilt everything else, which covers stateless policies and those built
    on ``torch.optim.lr_scheduler``. For an ``nn.Module`` policy the attributes are always
    saved, since its ``state_dict`` is theta alone.
    """

    def start(self, run: RunInfo) -> None: ...

    def lr(self, ctx: StepContext) -> float: ...

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None: ...


@runtime_checkable
class HypergradientLearner(LRPolicy, Protocol):
    """A meta-learner whose theta the engine trains by Algorithm 1 (MLR-SNet, the MLP variant).

    The engine tells the kinds apart with ``isinstance`` on these protocols, never by a string,
    so a new kind needs a new protocol and a runner branch, not a change to the engine's step.
    The engine sets ``frozen`` (True in meta-test); a learner need not define it.

    ``meta_parameters`` yields tensors or torch param-group dicts (a group may carry its own
    ``lr`` and ``weight_decay`` for the meta optimizer). ``meta_period`` is the number of steps
    between meta-updates when the recipe leaves ``meta.t_val`` unset, and ``meta_active(step)``
    says whether theta is meta-updated at a step at all (e.g. not during a cool-down).
    """

    def meta_parameters(self) -> Iterable[nn.Parameter | dict[str, Any]]: ...

    def virtual_lr(self, ctx: StepContext) -> torch.Tensor: ...

    def meta_period(self, run: RunInfo) -> int: ...

    def meta_active(self, step: int) -> bool: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> Any: ...


@dataclass
class Lookahead:
    """What a meta-objective builds the meta loss from, at one meta-update of the engine.

    ``steps(lr)`` starts differentiable steps of the real optimizer from the current weights and
    state at LR ``lr`` (a :class:`metalr.differentiable.VirtualSteps`: ``first()`` is the step
    with this batch's gradient g_t, ``next(loss)`` one more on ``loss(weights)``);
    ``train_batch(k)`` is the k-th further training batch of this meta-update (k >= 1; drawn
    from its own generator, so the real run's batches are untouched, and the same on a resume);
    ``train_loss(weights, batch)`` and ``meta_loss(weights)`` are the losses at given weights
    (the meta loss on this meta-update's meta batch). ``clip_grad_norm`` is the run's.
    """

    steps: Callable[[torch.Tensor], Any]
    train_batch: Callable[[int], Batch]
    train_loss: Callable[[Sequence[torch.Tensor], Batch], torch.Tensor]
    meta_loss: Callable[[Sequence[torch.Tensor]], torch.Tensor]
    clip_grad_norm: float | None = None


@runtime_checkable
class MetaObjective(Protocol):
    """What the engine's meta-update minimises, as a function of the LR: the meta loss after
    the objective's look ahead (one step in Algorithm 1, K steps in an unroll). The engine
    differentiates it in the LR and chains the result into theta (``recipe meta.objective``)."""

    def meta_loss(self, look: Lookahead, lr: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Rechecked(LRPolicy, Protocol):
    """A policy whose LR scale the engine checks once, part-way into the run, and moves when the
    check measures a far better one (:func:`metalr.probe.recheck_lr`), so that a start wrong
    by 10x either way does not decide the run.

    ``recheck_step(total_steps)``: the 0-based step before which the check runs (None: never).
    ``rescale(factor)``: every LR the policy gives from then on is multiplied by ``factor``.
    """

    def recheck_step(self, total_steps: int) -> int | None: ...

    def rescale(self, factor: float) -> None: ...


@runtime_checkable
class EpisodicLearner(LRPolicy, Protocol):
    """A meta-learner that trains itself over whole training runs (episodes): the RL controller.

    ``train_episodes(make_engine, on_episode)`` runs ``episodes`` episodes of its own trainer;
    ``make_engine(i, policy)`` returns a fresh :class:`metalr.engine.Engine` for episode ``i`` whose LR comes from
    ``policy``; ``on_episode(i, record)`` receives each episode's reward, LR trace and metrics.
    As an ordinary LR policy (``lr``) it acts deterministically and never learns. The engine
    sets ``frozen`` (True in meta-test).
    """

    episodes: int

    def train_episodes(self, make_engine: Callable[..., Any],
                       on_episode: Callable[[int, Mapping[str, Any]], None] | None = None
                       ) -> None: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> Any: ...


@runtime_checkable
class Tracker(Protocol):
    """Where parameters, metrics and artifacts of runs go.

    ``tags`` of :meth:`start_run` are string labels of the run that are not recipe parameters:
    the provenance of :mod:`metalr.provenance` (device, threads, CPU capability, versions, git
    commit). A tracker whose ``start_run`` has no ``tags`` argument still works; its runs go
    without them (``provenance.json`` in the output folder has them all the same).

    Optional, for ``metalr resume`` and ``metalr runs --clean``: ``resume_run(run_id)`` (mark
    a run RUNNING again to continue it), ``logged_steps(run_id, key) -> set[int]`` (the steps
    of a metric that reached the store before a kill: resume sends the missing ones and skips
    those already there) and ``running_runs()`` (``(run_id, tags)`` of the RUNNING runs).
    Optional too: ``log_params(run_id, params)``, params known only after the run started (the
    LR probe's choice; without it they go as metrics at step 0 only).
    """

    def start_run(
        self, experiment: str, name: str, params: Mapping[str, Any], parent: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str: ...

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None: ...

    def end_run(self, run_id: str, status: RunStatus) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ItemFailed:
    """What an executor yields for an item whose call gave back nothing: its batch job was
    killed (time limit, out of memory) or failed outside ``call``. Yielded, not raised, so that
    one lost job costs one point, not the sweep; ``error`` is one line, with where the log is."""

    item: Any
    error: str


@runtime_checkable
class Executor(Protocol):
    """Where the points of a sweep run (:mod:`metalr.sweep`): a local process pool, a batch system.

    ``run(call, items, folder)`` calls ``call(item)`` once per item and yields each return value
    as its point ends, in any order, or an :class:`ItemFailed` for an item whose call never
    returned. ``call`` is a module-level function and the items are plain, picklable
    dataclasses, so a point can run in another process or on another machine; the point writes
    its own record, so an executor that loses a result loses nothing for resume. ``folder`` is
    the sweep's folder: an executor that keeps files of its own (job scripts, logs) keeps them
    there, never in the working directory. On Ctrl-C it starts no more points, asks the running
    ones to stop (they end KILLED, with their checkpoints), waits for them and re-raises
    ``KeyboardInterrupt``.
    """

    def run(self, call: Callable[[Any], Any], items: Sequence[Any],
            folder: Path) -> Iterator[Any]: ...


@dataclass
class RecordedRun:
    """What a tracker stored for one run, as :meth:`TrackerReader.read_run` gives it back.

    ``metrics`` maps each key to its ``(step, value)`` points in step order; ``artifacts`` are
    paths relative to the run's artifact root (``"theta/net.safetensors"``); ``tags`` are the
    tags given to ``start_run`` (a backend's own tags left out).
    """

    name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, list[tuple[int, float]]]
    artifacts: list[str]
    parent: str | None = None


@runtime_checkable
class TrackerReader(Protocol):
    """A tracker that can give back what it stored: what `metalr.testing` checks it against."""

    def read_run(self, run_id: str) -> RecordedRun: ...
