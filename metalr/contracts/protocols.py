"""The contracts between the engine and the components that plugins provide.

The engine only ever talks to these protocols; a plugin is free to implement them however it
likes. Each kind is registered through its own hook in :mod:`metalr.contracts.hookspecs`.
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
    """Probes the run's LR scale (:func:`metalr.engine.probe.probe_lr`) on first call, then
    returns the same :class:`metalr.engine.probe.ProbeResult`; None where no probe is possible."""

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
"""``factory(params, **options) -> torch.optim.Optimizer``; the LR is set by the policy every
step."""


@runtime_checkable
class LRPolicy(Protocol):
    """Chooses the learning rate of every training step.

    Checkpoints (docs/reliability.md) save a policy's state through :class:`Resumable`
    (``run_state()`` / ``load_run_state(state)``, called after :meth:`start`); a policy without
    it runs, but a stopped run of it cannot resume, and resume says so.
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
    state at LR ``lr`` (a :class:`metalr.engine.differentiable.VirtualSteps`: ``first()`` is the
    step with this batch's gradient g_t, ``next(loss)`` one more on ``loss(weights)``,
    ``weights`` the current real weights, detached);
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
    check measures a far better one (:func:`metalr.engine.recheck.recheck_lr`), so that a start wrong
    by 10x either way does not decide the run.

    ``recheck_step(total_steps)``: the 0-based step before which the check runs (None: never).
    ``rescale(factor)``: every LR the policy gives from then on is multiplied by ``factor``.
    """

    def recheck_step(self, total_steps: int) -> int | None: ...

    def rescale(self, factor: float) -> None: ...


@runtime_checkable
class EpisodicLearner(LRPolicy, Protocol):
    """A meta-learner that trains itself over whole training runs (episodes): the RL controller,
    MLR-SNet by evolution strategies.

    ``train_episodes(make_engine, on_episode)`` runs ``episodes`` episodes of its own trainer;
    ``make_engine(i, policy)`` returns a fresh :class:`metalr.engine.algorithm.Engine` for episode
    ``i`` whose LR comes from ``policy`` (with ``meta.episode_tasks``, of task ``(i // 2) mod n``
    of that set: a learner that pairs runs gives both the same ``i``); ``on_episode(i, record)``
    receives each episode's reward, LR trace and metrics. As an ordinary LR policy (``lr``) it
    acts deterministically and never learns. The engine sets ``frozen`` (True in meta-test).
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
    the provenance of :mod:`metalr.running.provenance` (device, threads, CPU capability, versions,
    git commit). A tracker whose ``start_run`` has no ``tags`` argument still works; its runs go
    without them (``provenance.json`` in the output folder has them all the same).

    Optional, for ``metalr resume`` and ``metalr runs --clean``: ``resume_run(run_id)`` (mark
    a run RUNNING again to continue it), ``logged_steps(run_id, key) -> set[int]`` (the steps
    of a metric that reached the store before a kill: resume sends the missing ones and skips
    those already there) and ``running_runs()`` (``(run_id, tags)`` of the RUNNING runs).
    Optional too: ``log_params(run_id, params)``, params known only after the run started (the
    LR probe's choice; without it they go as metrics at step 0 only), and ``log_model(run_id,
    path, name, params, card) -> uri | None``: a meta-learned net registered as the store's
    own kind of model (MLflow's logged models), whose URI ``LearnedLR.from_pretrained`` loads.
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
    """Where the points of a sweep run (:mod:`metalr.running.sweep`): a local process pool, a batch
    system.

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


@runtime_checkable
class HandLoopScheduled(Protocol):
    """An lr-policy factory whose saved policies run in a user's own PyTorch loop through a torch
    scheduler of its plugin's, where :class:`metalr.LearnedLR` (which feeds a policy the loss
    alone) cannot run them: the RL controller also looks at the model and a validation loss.

    ``scheduler()`` returns that scheduler class. ``metalr.ControlledLR`` is the ``lr-controller``
    component's, found through the registry when first asked for, so the core imports no plugin.
    """

    def scheduler(self) -> type: ...


# -- saved nets: what the core calls on a loss-to-LR net and on a foreign net format -----------

@runtime_checkable
class LossToLRNet(Protocol):
    """A net from the (normalised) training loss to an LR, with a scale (MLR-SNet, the MLP
    variant, a third party's): what a saved net must offer for the core to run it frozen
    (:class:`metalr.scheduler.learned.PhasedNets`, behind ``LearnedLR`` and ``mlrsnet-transfer``),
    load it (:func:`metalr.engine.weights.load_meta_learner`) and convert it (``metalr nets
    import``).

    It is an ``nn.Module`` whose ``state_dict`` is theta. ``net(x, state)`` gives ``(lr, next
    state)`` for one input, from ``initial_state(device)``; the LR lies in ``[0, gamma]`` and
    ``envelope(step, total_steps)`` multiplies it (a cool-down). ``ref_lr`` is the LR the scale
    was calibrated to: ``rescale(factor)`` multiplies gamma and ``ref_lr``, so a net moved to a
    new run keeps its schedule relative to its start; ``set_gamma(gamma, ref_lr)`` sets both
    (``ref_lr`` unset: gamma / 2). Optional: ``inputs(loss_input, step, total_steps)``, what the
    net reads at a step (without it: the normalised loss alone).
    """

    ref_lr: torch.Tensor

    @property
    def gamma(self) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...

    def initial_state(self, device: torch.device) -> Any: ...

    def envelope(self, step: int, total_steps: int) -> float: ...

    def set_gamma(self, gamma: float, ref_lr: float | None = None) -> None: ...

    def rescale(self, factor: float) -> None: ...

    def to(self, device: torch.device | str) -> Any: ...


@dataclass(frozen=True)
class ImportedNet:
    """One file converted by ``metalr nets import``, as :meth:`NetFormat.card` lists it."""

    source: Path
    target: Path
    sha256: str  # of the source file
    net: Any  # the converted net, as saved


@runtime_checkable
class NetFormat(Protocol):
    """A foreign file format of meta-learned nets (the authors' released MLR-SNet ``.pth``),
    which the loader reads wherever a net is named and ``metalr nets import`` converts into
    metalr's safetensors. The core tries each registered format on a file that is not
    safetensors; the first whose ``read`` and ``convert`` succeed reads it.

    ``read(path)``: the file's tensors, never running code from it. ``convert(tensors, path)``:
    ``(registered lr_policy name, its options, its tensors)``. Both raise ``ValueError`` naming
    the file, the key and what was expected, for a file that is not of the format; between them
    the core refuses tensors no net can run with. ``complete(net)`` sets, once the net is built
    and loaded (and again after ``--gamma`` set its bound), what the file could not hold (the
    authors' ``ref_lr``). ``label`` is recorded in
    a converted net's header (``metalr.source_format``); ``description`` says what a file of the
    format is, in errors ("one of the authors' MLR-SNet torch files"). For ``nets import``:
    ``target_name(source)`` is the converted file's name (in phase order) and ``card(imported,
    gamma)`` the folder's ``card.md`` (``gamma``: the bound given with ``--gamma``, or None).
    """

    label: str
    description: str

    def read(self, path: Path) -> dict[str, torch.Tensor]: ...

    def convert(self, tensors: dict[str, torch.Tensor],
                path: Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]: ...

    def complete(self, net: Any) -> None: ...

    def target_name(self, source: Path) -> str: ...

    def card(self, imported: Sequence[ImportedNet], gamma: float | None) -> str: ...


# -- a tracking store read back, outside any run (`metalr report`, `runs:/` nets) ---------------

@dataclass(frozen=True)
class StoredRun:
    """One run as a :class:`StoreReader` lists it: what choosing suites and their method runs
    takes, without any metric's history. ``experiment`` is the experiment's name (``?``: not
    listed); ``start_time`` is in milliseconds since the epoch (0: unknown); ``tags`` leave out
    the backend's own, as :class:`RecordedRun`'s do; ``metrics`` are the keys the run logged."""

    run_id: str
    name: str
    experiment: str
    status: str
    start_time: int
    params: dict[str, str]
    tags: dict[str, str]
    metrics: frozenset[str]
    parent: str | None = None


@runtime_checkable
class StoreReader(Protocol):
    """A tracking store opened read-only: what `metalr report` reads suites through, so that the
    core never imports a tracking library.

    Opening and reading never create, migrate or write the store. A store that cannot be read
    (missing, damaged, foreign, of an older schema, a server gone) raises
    :class:`metalr.running.rundir.StoreError`: one line naming the store and the fix. ``uri`` is the
    store as it was named, or defaulted, for messages and pages. ``runs(experiment)``: the runs
    of one experiment (None: of all); ``run(run_id)``: None for a run the store does not know;
    ``history(run_id, key)``: the ``(step, value)`` points of a metric in step order, one per
    step.
    """

    uri: str

    def experiments(self) -> list[str]: ...

    def runs(self, experiment: str | None = None) -> list[StoredRun]: ...

    def run(self, run_id: str) -> StoredRun | None: ...

    def children(self, run_id: str) -> list[StoredRun]: ...

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]: ...

    def close(self) -> None: ...


@runtime_checkable
class TrackerStore(Protocol):
    """What a tracker component's factory offers for its store outside any run; the core finds
    it through the registry (:mod:`metalr.running.stores`), as it finds the factory to build a
    tracker.

    ``open_reader(location)``: the store at ``location`` (None: the tracker's default, as its
    own settings name it) as a :class:`StoreReader`. ``fetch_artifact(uri)``: a local copy of
    an artifact named in the tracker's own URI form (MLflow's ``runs:/<run id>/<path>``), valid
    until the process exits; ``FileNotFoundError`` saying why when it cannot be had. Neither
    writes to the store.
    """

    def open_reader(self, location: str | None = None) -> StoreReader: ...

    def fetch_artifact(self, uri: str) -> Path: ...


# -- run state: what a checkpoint keeps of a component ------------------------------------------

@runtime_checkable
class Resumable(Protocol):
    """A component whose state a checkpoint keeps, so that a run stopped between two steps goes
    on exactly as if it had never stopped: the lr policy of every run, and the meta-objective of
    a run that meta-learns (docs/reliability.md). A checkpoint keeps what the component declares
    here and nothing else; resume refuses a component without it, naming it, rather than go on
    inexactly. (Executors are not asked: a sweep resumes from its points' records.)

    ``run_state()`` holds everything the component needs to continue exactly: step counters,
    the LR it carries, the states of its own random generators, optimizer states, running
    averages, and theta where the run changes it; as plain tensors, numbers, strings, None and
    lists, tuples and dicts of them (what ``torch.load(weights_only=True)`` reads back). Not
    what ``start(run)`` rebuilds from the recipe and the run (options, references to the run's
    optimizer or task, the probe's result, structures built at start): on resume the component
    is built from the recipe, ``start`` runs, then ``load_run_state`` writes the state into
    what ``start`` built. Tensors come back on the run's device; write parameters in place
    (an optimizer holds them). A component with no state returns ``{}``.

    Not ``state_dict()``: a meta-learner's ``state_dict`` is theta alone, what its net file
    holds (:class:`HypergradientLearner`, :class:`EpisodicLearner`); its run state is theta and
    what the run has done with it. :mod:`metalr.engine.run_state` saves named attributes for the
    common case; ``metalr.testing`` checks the round trip.
    """

    def run_state(self) -> dict[str, Any]: ...

    def load_run_state(self, state: Mapping[str, Any]) -> None: ...
