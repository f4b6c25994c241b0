"""Conformance checks for plugin authors: test a component the way metalr tests its own.

    from metalr.contracts.registry import get_registry
    from metalr.testing import check_component

    def test_my_rule():
        check_component(get_registry().get("lr_policy", "my-rule"), {"lr": 0.1})

Each check runs the component for real inside the engine on a small, seeded, synthetic task
(no data to download) and raises ``AssertionError`` with a message saying what broke.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metalr.contracts.protocols import (
    ModelSpec,
    NetFormat,
    Resumable,
    RunInfo,
    StepContext,
    TrackerReader,
)
from metalr.contracts.registry import Component
from metalr.engine import checkpoint
from metalr.engine.algorithm import (
    Engine,
    EngineConfig,
    RunInterrupted,
    is_episodic,
    is_meta_learned,
    step_context,
)
from metalr.engine.data import TensorClassificationTask


class Blobs(TensorClassificationTask):
    """Four Gaussian blobs in 8 dimensions: learnable in a few steps, generated from a seed."""

    spec = ModelSpec(input_shape=(8,), num_outputs=4)

    def __init__(self, meta_size: int = 64, n: int = 512, seed: int = 0):
        super().__init__(meta_size)
        self.n, self.data_seed = n, seed

    def load(self):
        gen = torch.Generator().manual_seed(self.data_seed)
        centres = 3 * torch.randn(4, 8, generator=gen)

        def draw(n):
            y = torch.randint(4, (n,), generator=gen)
            return centres[y] + torch.randn(n, 8, generator=gen), y

        return draw(self.n), draw(self.n // 4)


def _mlp(spec: ModelSpec) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(spec.input_shape), 16), nn.ReLU(),
                         nn.Linear(16, spec.num_outputs))


def _engine(task, model, policy, epochs=2, optimizer=None, objective=None, **config) -> Engine:
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    return Engine(task, model, opt, policy, EngineConfig(epochs=epochs, batch_size=32, **config),
                  objective)


class _Fixed:
    def start(self, run):
        pass

    def lr(self, ctx):
        return 0.05

    def end_epoch(self, epoch, metrics):
        pass


def check_component(component: Component, options: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
    """Run the conformance check for the component's kind (``task=`` for models)."""
    checks = {"lr_policy": check_lr_policy, "task": check_task, "model": check_model,
              "optimizer": check_optimizer, "tracker": check_tracker,
              "executor": check_executor, "meta_objective": check_meta_objective,
              "net_format": check_net_format}
    checks[component.kind](component, options or {}, **kwargs)


def check_meta_objective(component: Component, options: dict[str, Any]) -> None:
    """A meta-objective must give a finite scalar meta loss that depends on the LR, whose
    derivative matches a central finite difference of itself (float64), meta-train a
    learner end to end (theta moves, the run learns), and declare its run state
    (:class:`metalr.contracts.protocols.Resumable`): that meta-training, stopped and resumed with a
    fresh objective, gives the same LRs."""
    from metalr.contracts.protocols import MetaObjective  # noqa: PLC0415 (the check's own contract)

    name = component.name
    objective = component.build(**options)
    assert isinstance(objective, MetaObjective), f"{name}: no meta_loss(look, lr)"
    task = Blobs()
    task.setup(0, torch.device("cpu"))
    task.splits = {k: (x.double(), y) for k, (x, y) in task.splits.items()}
    torch.manual_seed(0)
    model = _mlp(task.spec).double()
    policy = _Fixed()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    engine = _engine(task, model, policy, optimizer=opt, objective=objective)
    gen = torch.Generator().manual_seed(0)
    batch = next(iter(task.train_batches(32, gen)))
    ctx = engine._training_loss(batch, 3, 0)
    meta = task.meta_batch(32, gen)

    def value(lr: float, grad: bool = False):
        lr_t = torch.tensor(lr, dtype=torch.float64, requires_grad=grad)
        out = objective.meta_loss(engine._lookahead(ctx, meta), lr_t)
        return out, lr_t

    out, lr_t = value(0.05, grad=True)
    assert out.dim() == 0 and torch.isfinite(out), f"{name}: meta loss {out} is not a scalar"
    assert out.requires_grad, f"{name}: the meta loss does not depend on the LR"
    (d,) = torch.autograd.grad(out, lr_t)
    above, below = value(0.05 + 1e-6)[0].detach(), value(0.05 - 1e-6)[0].detach()
    fd = (float(above) - float(below)) / 2e-6
    assert math.isfinite(float(d)) and abs(float(d) - fd) <= 1e-4 * max(1.0, abs(fd)), (
        f"{name}: d meta loss / d lr = {float(d):.6g}, finite difference {fd:.6g}")
    from metalr.contracts.registry import get_registry  # noqa: PLC0415 (a real meta-learner to train)

    learner = get_registry().get("lr_policy", "mlrsnet").build(gamma=0.2)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    torch.manual_seed(0)
    history = _engine(task, _mlp(task.spec).double(), learner, objective=objective,
                      t_val=4).fit()
    moved = any(not torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert moved, f"{name}: meta-training with it did not change theta"
    assert history.losses[-1] < history.losses[0], f"{name}: the run under it did not learn"
    assert isinstance(objective, Resumable), f"{name}: {_NOT_RESUMABLE}"

    def meta_training() -> Engine:
        torch.manual_seed(0)
        learner = get_registry().get("lr_policy", "mlrsnet").build(gamma=0.2)
        return _engine(task, _mlp(task.spec).double(), learner,
                       objective=component.build(**options), t_val=4)

    _check_resume(name, meta_training, meta_training().fit().lrs)


def _square(x: int) -> int:  # module-level: an executor may run it in another process
    return x * x


def check_executor(component: Component, options: dict[str, Any]) -> None:
    """An executor must call the function once per item, in another process or not, and give
    back every result (in any order): what ``metalr sweep`` relies on."""
    executor = component.build(**options)
    items = [2, 3, 5]
    with tempfile.TemporaryDirectory() as folder:  # the sweep's folder, where its files go
        got = sorted(executor.run(_square, items, Path(folder)))
    assert got == [4, 9, 25], (
        f"executor {component.name!r} gave back {got} for items {items} (expected each x*x once)")


def check_net_format(component: Component, options: dict[str, Any],
                     sample: str | Path | None = None) -> None:
    """A net format must refuse, with ``ValueError`` naming the file, a file that is not of it
    (the loader tries every format on a file that is not safetensors); given a ``sample`` of
    it, its conversion must build and load as the lr policy it names."""
    from metalr.contracts.registry import get_registry

    fmt = component.build(**options)
    assert isinstance(fmt, NetFormat), (
        f"net format {component.name!r}: give it label, description, read, convert, complete, "
        "target_name and card (metalr.contracts.protocols.NetFormat)")
    with tempfile.TemporaryDirectory() as folder:
        junk = Path(folder) / "junk.bin"
        junk.write_bytes(b"not a net of any format")
        try:
            fmt.convert(fmt.read(junk), junk)
        except ValueError as exc:
            assert str(junk) in str(exc), f"{component.name}: the refusal must name the file"
        else:
            raise AssertionError(f"net format {component.name!r} took a file of junk bytes")
    if sample is not None:
        sample = Path(sample)
        policy, opts, tensors = fmt.convert(fmt.read(sample), sample)
        get_registry().get("lr_policy", policy).build(**opts).load_state_dict(tensors)
        assert fmt.target_name(sample).endswith(".safetensors"), (
            f"{component.name}: target_name must name a .safetensors file")


def check_lr_policy(component: Component, options: dict[str, Any],
                    expected_lr: float | None = None) -> None:
    """Train with the policy and see it steer: positive finite LRs under which the model learns.

    ``expected_lr``: the LR the policy must give at every step (a fixed schedule's configured
    LR). Every policy must declare its run state (:class:`metalr.contracts.protocols.Resumable`) so
    that the run, stopped and resumed from a checkpoint with a fresh policy, gives the same
    LRs. A meta-learner must also change theta, give LRs that respond to the loss it is fed,
    and survive a ``state_dict`` round trip.
    """
    name = component.name
    task = Blobs()
    task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    policy = component.build(**options)
    for method in ("start", "lr", "end_epoch"):
        assert callable(getattr(policy, method, None)), f"{name}: no {method}()"
    learned = is_meta_learned(policy)
    if learned:  # what the engine calls on a hypergradient meta-learner
        for method in ("meta_parameters", "virtual_lr", "meta_period", "meta_active",
                       "state_dict", "load_state_dict"):
            assert callable(getattr(policy, method, None)), f"{name}: no {method}()"
    before = {k: v.clone() for k, v in policy.state_dict().items()} if learned else {}
    history = _engine(task, _mlp(task.spec), policy, t_val=4).fit()
    lrs = history.lrs
    assert lrs, f"{name}: no steps were taken"
    assert all(math.isfinite(lr) and lr >= 0 for lr in lrs), (
        f"{name}: LRs must be finite and >= 0, got {lrs[:5]}...")
    assert max(lrs) > 0, f"{name}: the LR was 0 at every one of {len(lrs)} steps"
    if expected_lr is not None:
        wrong = [(i, lr) for i, lr in enumerate(lrs) if not math.isclose(lr, expected_lr)]
        assert not wrong, f"{name}: LR {wrong[0][1]} at step {wrong[0][0]}, configured {expected_lr}"
    first, last = history.losses[0], history.epochs[-1]["train_batch_loss"]
    assert last < 0.9 * first, (
        f"{name}: the model did not learn under this policy (training loss {first:.3g} -> "
        f"{last:.3g}, LRs {min(lrs):.3g}..{max(lrs):.3g})")
    assert isinstance(policy, Resumable), f"{name}: {_NOT_RESUMABLE}"

    def same_run() -> Engine:
        torch.manual_seed(0)
        fresh = component.build(**options)
        return _engine(task, _mlp(task.spec), fresh, t_val=4)

    _check_resume(name, same_run, lrs)
    if is_episodic(policy):  # trains itself (metalr.engine.episodes); its saved state must act the same
        twin = component.build(**options)
        twin.load_state_dict(policy.state_dict())
        runs = []
        for p in (policy, twin):
            torch.manual_seed(0)
            runs.append(_engine(task, _mlp(task.spec), p, meta_train=False).fit().lrs)
        assert runs[0] == runs[1], f"{name}: state_dict round trip changed the LRs"
    if learned:
        after = policy.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), (
            f"{name}: theta did not change during meta-training")
        # a state_dict round trip gives the same net: same LRs for the same losses
        twin = component.build(**options)
        twin.load_state_dict(after)
        run = RunInfo(1, 1, None, torch.device("cpu"), 0, task)
        policy.start(run)
        twin.start(run)
        for loss in (2.0, 1.5, 0.7):
            ctx = _loss_context(loss)
            assert policy.lr(ctx) == twin.lr(ctx), f"{name}: state_dict round trip"
        # the LR is a function of the loss it is fed: from the same state, other losses
        answers = set()
        for loss in (3.0, 1.0, 0.1):
            twin.start(run)
            answers.add(float(twin.lr(_loss_context(loss))))
        assert len(answers) > 1, (
            f"{name}: the same LR {answers.pop()} whatever the loss: the net ignores its input")


_NOT_RESUMABLE = ("no run_state() / load_run_state() (metalr.contracts.protocols.Resumable): a checkpoint "
                  "cannot keep its state, so a stopped run of it cannot resume")


def _check_resume(name: str, make: Callable[[], Engine], lrs: list[float]) -> None:
    """The run ``make()`` builds, stopped three quarters in and resumed with a fresh component
    from each checkpoint (the end of epoch 1, the stop; real files, read with
    ``weights_only``), gives every LR of the run that never stopped (``lrs``): its
    ``run_state`` holds all that decides them."""
    with tempfile.TemporaryDirectory() as folder:
        saved: list[Path] = []
        steps = iter(range(10**9))
        stop_after = max(1, len(lrs) * 3 // 4 - 1)

        def save(state: dict[str, Any]) -> None:
            saved.append(checkpoint.save(Path(folder) / f"checkpoint{len(saved)}.pt", state))

        try:
            make().fit(checkpoint=save, stop=lambda: next(steps) == stop_after)
        except RunInterrupted:
            pass
        for path in saved:
            state, _ = checkpoint.load(path)
            at = state["step"]
            try:
                resumed = make().fit(resume=state).lrs
            except checkpoint.CheckpointError as exc:
                raise AssertionError(f"{name}: resumed after step {at}: {exc}") from exc
            wrong = next((i for i, (a, b) in enumerate(zip(resumed, lrs)) if a != b),
                         None if len(resumed) == len(lrs) else min(len(resumed), len(lrs)))
            assert wrong is None, (
                f"{name}: resumed after step {at}, the LR of step {wrong} is "
                f"{resumed[wrong] if wrong < len(resumed) else 'missing'}, not "
                f"{lrs[wrong] if wrong < len(lrs) else 'missing'} as in the run that never "
                "stopped: its run_state() misses part of what decides the LRs")


def _loss_context(loss: float) -> StepContext:
    """A step that shows a policy only its loss (no parameters, no optimizer), built by the
    engine's one builder (loss scale 1)."""
    return step_context(0, 0, torch.tensor(loss), 1.0, [], None)


def check_task(component: Component, options: dict[str, Any]) -> None:
    task = component.build(**options)
    task.setup(0, torch.device("cpu"))
    for attr in ("spec", "loss_scale", "default_gamma", "metric", "higher_is_better"):
        assert hasattr(task, attr), f"{component.name}: missing attribute {attr}"
    gen = torch.Generator().manual_seed(0)
    batches = list(task.train_batches(32, gen))
    assert len(batches) == task.num_train_batches(32), (
        f"{component.name}: num_train_batches disagrees with train_batches")
    assert task.loss_scale > 0 and task.default_gamma > 0
    meta = task.meta_batch(16, gen)
    if task.spec.kind != "classification":
        return  # other kinds need their own model; their plugin's tests cover loss and evaluate
    torch.manual_seed(0)
    model = _mlp(task.spec)
    for batch in (batches[0], meta):
        loss = task.loss(model, batch)
        assert loss.ndim == 0 and torch.isfinite(loss), f"{component.name}: loss must be a scalar"
    for split in ("train", "meta", "test"):
        metrics = task.evaluate(model, split)
        assert {"loss", task.metric} <= set(metrics), (
            f"{component.name}: evaluate({split!r}) must give 'loss' and {task.metric!r}")


def check_model(component: Component, options: dict[str, Any], task: Any = None) -> None:
    """Train the model for three epochs on ``task`` (default: the blobs) and see the loss fall.

    Pass a task whose spec the model accepts (an image or sequence model needs its own).
    """
    if task is None:
        task = Blobs()
        task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    model = component.build(task.spec, **options)
    assert isinstance(model, nn.Module), f"{component.name}: factory must return an nn.Module"
    history = _engine(task, model, _Fixed(), epochs=3).fit()
    first, last = history.epochs[0]["train_batch_loss"], history.epochs[-1]["train_batch_loss"]
    assert last < first, f"{component.name}: training did not lower the loss ({first} -> {last})"


def check_optimizer(component: Component, options: dict[str, Any]) -> None:
    task = Blobs()
    task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    model = _mlp(task.spec)
    opt = component.build(model.parameters(), **options)
    assert isinstance(opt, torch.optim.Optimizer), f"{component.name}: not a torch optimizer"
    history = _engine(task, model, _Fixed(), epochs=3, optimizer=opt).fit()
    assert history.losses[-1] < history.losses[0], f"{component.name}: loss did not go down"


def check_tracker(component: Component, options: dict[str, Any]) -> None:
    """A parent and a child run, read back: params, tags, metrics by step, artifacts, status.

    The tracker must implement :class:`~metalr.contracts.protocols.TrackerReader` (``read_run``): a
    tracker that stores nothing, or drops a step, has to fail here.
    """
    import inspect
    import tempfile

    name = component.name
    tracker = component.build(**options)
    params = inspect.signature(tracker.start_run).parameters
    assert "tags" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()), (
        f"{name}: start_run must take tags= (the run's provenance)")
    assert isinstance(tracker, TrackerReader), (
        f"{name}: give the tracker read_run(run_id) -> metalr.contracts.protocols.RecordedRun, so that "
        "this check can read back what it stored")
    tags = {"metalr.device": "cpu", "metalr.torch_threads": "1"}
    parent = tracker.start_run("metalr-conformance", "check", {"a": 1, "lr": 0.1}, tags=tags)
    assert isinstance(parent, str) and parent, f"{name}: start_run must return a run id"
    child = tracker.start_run("metalr-conformance", "check/child", {"b": 2}, parent, tags=tags)
    assert isinstance(child, str) and child and child != parent, (
        f"{name}: start_run must return a new run id for every run")
    tracker.log_metrics(child, {"loss": 2.5, "lr": 0.1}, 0)
    tracker.log_metrics(child, {"loss": 1.25}, 1)
    with tempfile.TemporaryDirectory() as tmp:
        note = Path(tmp) / "note.txt"
        note.write_text("conformance")
        tracker.log_artifact(child, str(note), "files")
        tracker.log_artifact(parent, str(note))
    tracker.end_run(child, "FINISHED")
    tracker.end_run(parent, "KILLED")
    try:
        expected = {
            parent: ("check", "KILLED", {"a": "1", "lr": "0.1"}, {}, ["note.txt"], None),
            child: ("check/child", "FINISHED", {"b": "2"},
                    {"loss": [(0, 2.5), (1, 1.25)], "lr": [(0, 0.1)]}, ["files/note.txt"], parent),
        }
        for run_id, (run_name, status, run_params, metrics, artifacts, up) in expected.items():
            got = tracker.read_run(run_id)
            where = f"{name}: run {run_name!r} read back"
            assert got.name == run_name, f"{where}: name {got.name!r}"
            assert got.status == status, f"{where}: status {got.status!r}, ended {status!r}"
            assert got.params == run_params, f"{where}: params {got.params}, logged {run_params}"
            assert {k: got.tags.get(k) for k in tags} == tags, (
                f"{where}: tags {got.tags}, logged {tags}")
            points = {k: [(int(s), float(v)) for s, v in pts] for k, pts in got.metrics.items()}
            assert points == metrics, f"{where}: metrics {points}, logged {metrics}"
            assert sorted(got.artifacts) == artifacts, (
                f"{where}: artifacts {got.artifacts}, logged {artifacts}")
            assert got.parent == up, f"{where}: parent {got.parent!r}, started under {up!r}"
    finally:
        tracker.close()


def check_learned(summary: Any, may_not_learn: Collection[str] = ()) -> None:
    """Every method of a recipe run finished and learned something (a slow test's bar).

    Finished: not diverged, not failed. Learned: the final test (else meta) metric above chance
    plus :data:`metalr.running.results.CHANCE_MARGIN` where the task has a chance level
    (classification accuracy), else a last epoch whose training loss is below the first step's. A
    recipe whose methods all diverge, or all sit at chance, fails here. ``may_not_learn``: methods
    that must finish but whose failure to learn is the point (an ablation's bad setting). Every
    problem is reported at once.
    """
    assert summary.results, f"{summary.name}: no results"
    problems = [p for r in summary.results
                if (p := _not_learned(r, summary, r.method in may_not_learn))]
    assert not problems, f"{summary.name}: " + "; ".join(problems)


def _not_learned(r: Any, summary: Any, finish_only: bool) -> str | None:
    from metalr.running.results import at_chance

    if r.status != "FINISHED":
        return f"{r.label}: {r.status} ({r.error})"
    if finish_only:
        return None
    last = r.history.epochs[-1]
    key = next((f"{split}_{summary.metric}" for split in ("test", "meta")
                if f"{split}_{summary.metric}" in last), None)
    if key is None or not math.isfinite(last[key]):
        return f"{r.label}: no finite test or meta {summary.metric} in the last epoch"
    if summary.chance is not None:
        if at_chance(last[key], summary.chance):
            return f"{r.label}: {key} {last[key]:.4f} is chance ({summary.chance:.4f})"
    elif not last["train_batch_loss"] < r.history.losses[0]:
        return (f"{r.label}: training loss {r.history.losses[0]:.4g} -> "
                f"{last['train_batch_loss']:.4g}")
    return None
