"""Meta-learned LR schedules as plug-and-play schedulers (paper Eq. 12 and Appendix C).

A meta-trained MLR-SNet is a fixed function from the training loss (and its own carried LSTM
state) to the LR. Transferring it means running it frozen on a new task. Following the paper's
Appendix C, k nets saved at different meta-training epochs are switched over k equal phases of
the new run, because a single net has only seen a short stretch of training.

:class:`PhasedNets` is the one implementation of that meta-test schedule. :class:`LearnedLR`
wraps it for a plain PyTorch loop; the engine's ``mlrsnet-transfer`` policy wraps it for recipes,
so the two give the same LR for the same losses (``tests/test_scheduler.py``).

Nets are loaded by :func:`metalr.engine.weights.load_meta_learner` only: safetensors, or the
authors' released ``.pth`` state_dicts read with ``torch.load(weights_only=True)``. Loading a net
never runs code from the file, so a pickle that holds code is refused.
"""

from __future__ import annotations

import re
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from metalr.contracts.protocols import LossToLRNet
from metalr.engine.weights import ceiling_epochs, load_meta_learner, read_meta_learner

NETS_DIR = Path(__file__).parents[1] / "nets"
"""Nets shipped inside the package: ``nets/<name>/*.safetensors`` plus a ``card.md``; the file
names sort in phase order (``theta-epochNNNN``, zero-padded)."""

NetSpec = str | Path
_EPOCH_FILE = re.compile(r"theta-epoch(\d+)\.safetensors$")


# -- which nets ---------------------------------------------------------------------------------

def shipped_nets() -> dict[str, list[Path]]:
    """Shipped net names and their files, in file-name (= meta-training epoch) order."""
    if not NETS_DIR.is_dir():
        return {}
    found = {d.name: sorted(d.glob("*.safetensors")) for d in sorted(NETS_DIR.iterdir())
             if d.is_dir()}
    return {name: files for name, files in found.items() if files}


def describe_shipped_nets() -> list[dict[str, Any]]:
    """Name, files, policy, options, gamma and one-line summary of each shipped net."""
    out = []
    for name, files in shipped_nets().items():
        policy, options, tensors, _ = read_meta_learner(files[0])
        card = NETS_DIR / name / "card.md"
        lines = card.read_text().splitlines() if card.is_file() else []
        summary = next((ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")), "")
        out.append({"name": name, "files": [f.name for f in files], "policy": policy,
                    "options": options, "gamma": float(tensors["log_gamma"].exp()),
                    "summary": summary, "card": str(card)})
    return out


def _natural_key(path: Path) -> list[Any]:
    """``net-2`` before ``net-10``: digits compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def folder_nets(folder: Path) -> list[Path]:
    """The ``*.safetensors`` of a folder (``metalr nets import --out``), in natural name order."""
    files = sorted(folder.glob("*.safetensors"), key=_natural_key)
    if not files:
        raise FileNotFoundError(f"{folder}: a folder with no *.safetensors nets in it")
    return files


def resolve_nets(specs: NetSpec | Sequence[NetSpec]) -> list[Path]:
    """Files for a mix of file paths, folders, shipped names and MLflow artifacts, in order.

    A shipped name, or a folder written by ``metalr nets import``, stands for all of its nets
    in meta-training order (its k phases; names compare digits as numbers). An
    existing file wins over a shipped name of the same spelling. ``runs:/<run id>/<path>``
    (e.g. ``runs:/abc123/theta/theta-final.safetensors``) and a logged model's
    ``models:/<model id>`` (its nets, in order) are downloaded from the tracking store named by
    ``MLFLOW_TRACKING_URI`` into a temporary folder.
    """
    if isinstance(specs, (str, Path)):
        specs = [specs]
    if not specs:
        raise ValueError("no nets given")
    shipped, files, missing = shipped_nets(), [], []
    for spec in specs:
        if str(spec).startswith(("runs:/", "models:/")):  # a tracked run's artifact or logged
            from metalr.running.stores import fetch_artifact  # model: the tracker fetches it

            fetched = fetch_artifact(str(spec))
            files.extend(folder_nets(fetched) if fetched.is_dir() else [fetched])
            continue
        path = Path(spec).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(folder_nets(path))
        elif str(spec) in shipped:
            files.extend(shipped[str(spec)])
        else:
            missing.append(repr(str(spec)))  # all of them named at once, not the first only
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} neither a file, a "
            f"folder nor a shipped net (shipped: {', '.join(sorted(shipped)) or 'none'}; "
            "`metalr nets` lists them)")
    return files


def load_nets(specs: NetSpec | Sequence[NetSpec]) -> list[nn.Module]:
    """Frozen loss-to-LR nets for files, folders, shipped names or MLflow artifacts."""
    return [load_meta_learner(path, frozen=True) for path in resolve_nets(specs)]


def pick_nets(folder: str | Path, k: int, meta_epochs: int | None = None) -> list[Path]:
    """The k ``theta-epochNNNN.safetensors`` files of a meta-train run named by the ceiling rule.

    ``folder`` is a method's output folder (``<output>/<method>-seed<seed>/``). ``meta_epochs``
    defaults to ``train.epochs`` of the ``recipe.yaml`` the runner wrote beside it. The last
    epoch's net may come from ``theta-final.safetensors``; k = 1 is that last net alone.
    """
    folder = Path(folder)
    if meta_epochs is None:
        meta_epochs = _recipe_epochs(folder.parent / "recipe.yaml")
    saved = _by_epoch(folder.glob("theta-epoch*.safetensors"))
    final = folder / "theta-final.safetensors"
    if meta_epochs not in saved and final.is_file():
        saved[meta_epochs] = final
    return _by_ceiling(saved, meta_epochs, k, str(folder))


def choose_nets(files: Sequence[Path], k: int) -> list[Path]:
    """k of a meta-train's saved nets (``theta-epochNNNN`` names) by the paper's ceiling rule.

    The meta-train's length is taken as the last epoch saved; k = 1 is that last net alone.
    """
    saved = _by_epoch(files)
    if len(saved) != len(files):
        odd = [Path(p).name for p in files if not _EPOCH_FILE.search(Path(p).name)]
        raise ValueError(f"choosing k={k} nets needs files named theta-epochNNNN.safetensors "
                         f"(as `metalr run` saves them); got {', '.join(odd)}")
    return _by_ceiling(saved, max(saved), k, "the nets given")


def _by_epoch(files) -> dict[int, Path]:
    return {int(m.group(1)): Path(p) for p in files if (m := _EPOCH_FILE.search(Path(p).name))}


def _by_ceiling(saved: dict[int, Path], meta_epochs: int, k: int, where: str) -> list[Path]:
    wanted = [meta_epochs] if k == 1 else ceiling_epochs(meta_epochs, k)
    missing = sorted(set(wanted) - set(saved))
    if missing:
        raise FileNotFoundError(
            f"{where}: no nets for epochs {missing}; the ceiling rule for k={k} over "
            f"{meta_epochs} epochs needs meta.save_epochs={sorted(set(wanted))}")
    return [saved[e] for e in wanted]


def _recipe_epochs(recipe: Path) -> int:
    import yaml

    if not recipe.is_file():
        raise ValueError(f"{recipe}: not found; pass meta_epochs (the meta-train's epochs)")
    return int(yaml.safe_load(recipe.read_text())["train"]["epochs"])


# -- the schedule -------------------------------------------------------------------------------

def phase_of(step: int, total_steps: int, k: int) -> int:
    """The phase (0 .. k-1) of 0-based ``step`` when ``total_steps`` are cut into k equal phases.

    Steps past ``total_steps`` stay in the last phase, so a run that goes on longer than
    planned keeps the last net rather than failing.
    """
    return min(k - 1, step * k // total_steps)


def _state_tensors(state: Any) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, (list, tuple)):
        return [t for s in state for t in _state_tensors(s)]
    return []


def _map_state(state: Any, fn) -> Any:
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, (list, tuple)):
        return type(state)(_map_state(s, fn) for s in state)
    return state


class PhasedNets:
    """k frozen nets, each driving one of k equal phases of a run, with one carried state.

    The LSTM state is zeroed once when a run starts and **carried over** from one net into the
    next, as the reference code's ``meta_test.py`` does (it loads the next net's weights into
    the same module and keeps its hidden state). All nets must therefore share one state shape.
    Each net keeps its own saved gamma unless :meth:`set_gamma` overrides it. A net is anything
    that follows :class:`metalr.contracts.protocols.LossToLRNet`, the only calls made on it.
    """

    def __init__(self, nets: Sequence[LossToLRNet]):
        if not nets:
            raise ValueError("PhasedNets needs at least one net")
        for i, net in enumerate(nets):
            if not isinstance(net, LossToLRNet):
                raise TypeError(f"net {i} of the phased schedule is a {type(net).__name__}, not "
                                "a loss-to-LR net (metalr.contracts.protocols.LossToLRNet, e.g. an "
                                "'mlrsnet'): pass nets saved from such a policy")
        shapes = [[t.shape for t in _state_tensors(n.initial_state(torch.device("cpu")))]
                  for n in nets]
        if any(type(n) is not type(nets[0]) or s != shapes[0] for n, s in zip(nets, shapes)):
            raise ValueError("the nets of a phased schedule must share their kind and state shape "
                             "(the state is carried from one net into the next)")
        self.nets = list(nets)
        self.total_steps = 1
        self.step = 0
        self.state: Any = None

    @property
    def k(self) -> int:
        return len(self.nets)

    def set_gamma(self, gamma: float) -> None:
        """Override every net's LR scale (output in ``[0, gamma]``)."""
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        for net in self.nets:
            net.set_gamma(float(gamma))

    @property
    def ref_lr(self) -> float:
        """The LR the first net's scale was calibrated to (its meta-training run's probe)."""
        return float(self.nets[0].ref_lr)

    def rescale_to(self, lr: float) -> None:
        """Scale every net by ``lr / ref_lr``: the schedule relative to its start carries over."""
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        factor = lr / self.ref_lr
        for net in self.nets:
            net.rescale(factor)

    def start(self, total_steps: int, device: torch.device | str = "cpu") -> None:
        """Begin a run of ``total_steps`` steps: zero state, phase 0."""
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        for net in self.nets:
            net.to(device)
        self.total_steps, self.step, self.state = int(total_steps), 0, None  # None: zero state

    @property
    def phase(self) -> int:
        """The phase (net index) the next call to :meth:`lr` uses."""
        return phase_of(self.step, self.total_steps, self.k)

    def lr(self, loss_input: torch.Tensor | float) -> float:
        """The LR of this step from this step's (normalised) loss; advances the state once."""
        net = self.nets[self.phase]
        x = torch.as_tensor(loss_input).detach().to(device=net.ref_lr.device, dtype=net.ref_lr.dtype)
        if callable(getattr(net, "inputs", None)):  # optional (LossToLRNet): t/T for a progress net
            x = net.inputs(x, self.step, self.total_steps)
        with torch.no_grad():
            lr, self.state = net(x, self.state)
        factor = net.envelope(self.step, self.total_steps)
        self.step += 1
        return float(lr) * factor

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers: loadable with ``torch.load(weights_only=True)``."""
        return {"step": self.step, "total_steps": self.total_steps, "k": self.k,
                "state": _map_state(self.state, lambda t: t.detach().cpu().clone()),
                "gamma": [float(n.gamma) for n in self.nets],
                "ref_lr": [float(n.ref_lr) for n in self.nets]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["k"]) != self.k:
            raise ValueError(f"state is for {state['k']} nets, this schedule has {self.k}")
        device = self.nets[0].ref_lr.device
        self.step, self.total_steps = int(state["step"]), int(state["total_steps"])
        self.state = _map_state(state["state"], lambda t: t.to(device))
        for net, gamma, ref in zip(self.nets, state["gamma"], state["ref_lr"], strict=True):
            net.set_gamma(float(gamma), ref_lr=float(ref))


# -- the scheduler ------------------------------------------------------------------------------

class LossDrivenLR(LRScheduler):
    """A torch ``LRScheduler`` whose LR of step t is a function of step t's training loss.

    Torch's schedulers are stepped *after* ``optimizer.step()`` and set the LR of the next step.
    A learned schedule needs this batch's loss, which exists only after the forward pass, so
    these are stepped *before* ``optimizer.step()``: ``step(loss)`` sets the LR of the
    ``optimizer.step()`` that follows. Frameworks that call ``step()`` with no argument (torch's
    ``SequentialLR``, Lightning, Transformers) get the loss from an earlier ``observe(loss)``.

    An ``optimizer.step()`` with no ``step`` before it warns once (an optimizer step
    pre-hook). Only the newest scheduler of an optimizer watches it: building another one, or
    :meth:`close`, or garbage collection removes the hook, so none pile up on the optimizer.
    Subclasses implement :meth:`_next_lr` and their own part of the state.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._pending: tuple[torch.Tensor, tuple[Any, ...]] | None = None
        self._armed = False  # a step has set the LR of the next optimizer.step()
        self._warned = False
        super().__init__(optimizer)  # records initial_lr; its initial step leaves the LR alone
        previous = getattr(optimizer, "_metalr_scheduler", None)
        if previous is not None and (old := previous()) is not None:
            old.close()
        ref = weakref.ref(self)  # the optimizer must not keep a dropped scheduler alive

        def before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            scheduler = ref()
            if scheduler is not None:
                scheduler._before_optimizer_step()

        handle = optimizer.register_step_pre_hook(before_step)
        self._finalizer = weakref.finalize(self, handle.remove)
        optimizer._metalr_scheduler = ref

    def _next_lr(self, loss: torch.Tensor, *context: Any) -> float:
        raise NotImplementedError

    def observe(self, loss: torch.Tensor | float, *context: Any) -> None:
        """Hand over this step's loss for a following ``step()`` with no argument."""
        self._pending = (torch.as_tensor(loss).detach(), context)

    # Only torch's public scheduler surface is overridden (step, get_lr, get_last_lr, state_dict,
    # load_state_dict); torch's private methods call into it. Its constructor, and SequentialLR
    # when a schedule starts it, take an initial step: step() with no argument while last_epoch
    # is -1 (torch 2.4 to 2.x); a learned schedule has no loss then and leaves the LR alone.
    # SequentialLR hands over at a milestone with step(0) (torch < 2.5) or with its private
    # _update_lr(0), which takes the LR from get_lr(): an ordinary step either way, since the
    # schedule's own clock (its step count) starts there. tests/test_scheduler.py runs each path.
    def get_lr(self) -> list[float]:
        """The LR of the coming ``optimizer.step()`` for every group, from the loss handed over
        by ``step(loss)`` or ``observe(loss)``; advances the schedule by one step."""
        if self._pending is None:
            raise RuntimeError(f"{type(self).__name__}.step() has no loss for this step: call "
                               "step(loss) or observe(loss) before it")
        (loss, context), self._pending = self._pending, None
        lr = self._next_lr(loss, *context)
        self._step_count += 1
        self._armed = True
        return [lr] * len(self.optimizer.param_groups)

    def step(self, loss: torch.Tensor | float | None = None, *context: Any) -> float:  # type: ignore[override]
        """Set (and return) the LR of the coming ``optimizer.step()`` from this step's loss.

        No loss (or an ``int``, torch's deprecated epoch argument): the one given to
        :meth:`observe` since the last step.
        """
        if loss is None or (isinstance(loss, int) and not isinstance(loss, bool)):
            if loss is None and self._pending is None and self.last_epoch == -1:
                # torch's initial step: no loss yet, the optimizer's LR is left as it is
                self.last_epoch = 0
                self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]
                return self._last_lr[0]
        else:
            self.observe(loss, *context)
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = list(lrs)
        self.last_epoch += 1
        return lrs[0]

    def get_last_lr(self) -> list[float]:
        """The LR per param group set by the last ``step`` (before any: the optimizer's)."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers only, so ``torch.load(weights_only=True)`` reads it."""
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count,
                "base_lrs": [float(v) for v in self.base_lrs],
                "last_lr": list(self._last_lr)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # .get: states saved before LearnedLR was an LRScheduler have only last_lr
        self.last_epoch = int(state_dict.get("last_epoch", self.last_epoch))
        self._step_count = int(state_dict.get("_step_count", self._step_count))
        self.base_lrs = [float(v) for v in state_dict.get("base_lrs", self.base_lrs)]
        self._last_lr = [float(v) for v in state_dict["last_lr"]]

    def close(self) -> None:
        """Stop watching the optimizer (remove its step pre-hook); idempotent."""
        self._finalizer()

    def _before_optimizer_step(self) -> None:
        # last_epoch -1: SequentialLR has undone this scheduler; another one is in charge
        # until its milestone
        if not self._armed and not self._warned and self.last_epoch >= 0:
            self._warned = True
            warnings.warn("optimizer.step() ran without a scheduler.step(loss) before it: call "
                          "scheduler.step(loss) after loss.backward() and before "
                          "optimizer.step(), because the learned LR of a step depends on that "
                          "step's loss", UserWarning, stacklevel=3)
        self._armed = False


class LearnedLR(LossDrivenLR):
    """A meta-learned LR schedule for any ``torch.optim`` optimizer, in a plain PyTorch loop.

    Call order, once per batch (paper Eq. 12: the LR of step t is computed from the loss of
    batch t, at the weights that step starts from)::

        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        scheduler.step(loss)   # sets the LR of the optimizer.step() just below
        optimizer.step()

    This differs from torch's epoch schedulers, which are stepped *after* ``optimizer.step()``
    and set the LR of the following step: a learned schedule needs this batch's loss, which
    exists only after the forward pass. There is therefore no initial LR to pick: the first
    ``step(loss)`` sets the first LR, and the constructor leaves the optimizer's LR alone.
    ``optimizer.step()`` without a preceding ``step(loss)`` warns once.

    Every param group gets the same LR. With k nets, step t (0-based) uses net
    ``floor(t * k / total_steps)``; steps past ``total_steps`` keep the last net. The LSTM state
    carries over from one net into the next (see :class:`PhasedNets`).

    ``lr`` rescales the nets so that their schedule starts from it: each net's scale is
    multiplied by ``lr / ref_lr``, where ``ref_lr`` is the LR the nets were calibrated to in
    meta-training (the shape of the schedule transfers, the absolute LR comes from your run).
    Unset, the nets keep the absolute scale they were meta-trained with, which suits only a
    model and optimizer like theirs (their model card says which). ``gamma`` instead sets the
    upper bound of every net's output directly. ``loss_scale`` divides the loss before the net
    sees it and must match
    meta-training (1 for classification, ln(vocabulary) for language models). The nets run on
    ``device`` (default CPU: they are tiny; the loss is copied there, one scalar per step).

    ``warmup_steps`` N > 0 multiplies the LR of step t < N by a linear ramp,
    ``warmup_start + (1 - warmup_start) * (t + 1) / N`` (reaching 1 at step N - 1), as the
    frameworks' own schedules offer. The ramp scales the learned LR rather than replacing it:
    the nets still read every loss from step 0, so their state and phases are those of a run
    without warm-up. The ramp is part of :meth:`state_dict`, so a resumed run continues it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, nets: Sequence[LossToLRNet],
                 total_steps: int, *, lr: float | None = None, gamma: float | None = None,
                 loss_scale: float = 1.0, device: torch.device | str = "cpu",
                 warmup_steps: int = 0, warmup_start: float = 0.0):
        if not loss_scale > 0:
            raise ValueError(f"loss_scale must be > 0, got {loss_scale}")
        if lr is not None and gamma is not None:
            raise ValueError("give lr (where the schedule starts) or gamma (its bound), not both")
        self.warmup_steps, self.warmup_start = _check_warmup(warmup_steps, warmup_start)
        self.loss_scale = float(loss_scale)
        self.phases = PhasedNets(nets)
        if lr is not None:
            self.phases.rescale_to(lr)
        if gamma is not None:
            self.phases.set_gamma(gamma)
        self.phases.start(total_steps, device)
        super().__init__(optimizer)

    @classmethod
    def from_pretrained(cls, optimizer: torch.optim.Optimizer, nets: NetSpec | Sequence[NetSpec],
                        *, total_steps: int, lr: float | None = None,
                        gamma: float | None = None, loss_scale: float = 1.0,
                        device: torch.device | str = "cpu", warmup_steps: int = 0,
                        warmup_start: float = 0.0) -> LearnedLR:
        """Load shipped nets by name (``metalr nets`` lists them) or saved nets by path.

        A path is a safetensors net, a folder of them (``metalr nets import --out``), or one of
        the authors' released ``.pth`` files (read with ``torch.load(weights_only=True)``). A
        list mixes them; its order is the order of the phases.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError("LearnedLR.from_pretrained(optimizer, nets, total_steps=...): the "
                            "first argument must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        return cls(optimizer, load_nets(nets), total_steps, lr=lr, gamma=gamma,
                   loss_scale=loss_scale, device=device, warmup_steps=warmup_steps,
                   warmup_start=warmup_start)

    @property
    def total_steps(self) -> int:
        return self.phases.total_steps

    @property
    def last_step(self) -> int:
        """How many LRs have been set so far."""
        return self.phases.step

    def warmup_factor(self, step: int) -> float:
        """The warm-up's multiplier of the LR of 0-based ``step`` (1 once the ramp is over)."""
        if step >= self.warmup_steps:
            return 1.0
        return self.warmup_start + (1.0 - self.warmup_start) * (step + 1) / self.warmup_steps

    def _next_lr(self, loss: torch.Tensor, *context: Any) -> float:
        if context:
            raise TypeError(f"LearnedLR.step takes only the loss, got {len(context)} more "
                            "arguments")
        step = self.phases.step
        lr = self.phases.lr(loss / self.loss_scale)
        return lr if step >= self.warmup_steps else lr * self.warmup_factor(step)

    def state_dict(self) -> dict[str, Any]:
        """Step count, phase, LSTM state, gammas/scales, warm-up and last LR: a resumed loop
        continues the same LRs.

        The nets' weights are not included (they are frozen and come from their files), just
        as torch's schedulers leave the optimizer out of theirs.
        """
        return {**super().state_dict(), **self.phases.state_dict(), "phase": self.phases.phase,
                "loss_scale": self.loss_scale, "warmup_steps": self.warmup_steps,
                "warmup_start": self.warmup_start}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.phases.load_state_dict(state_dict)
        self.loss_scale = float(state_dict["loss_scale"])
        # the saved ramp wins, as the saved loss_scale does: the resumed run continues it
        # (.get: states saved before the warm-up existed had none)
        self.warmup_steps, self.warmup_start = _check_warmup(
            state_dict.get("warmup_steps", self.warmup_steps),
            state_dict.get("warmup_start", self.warmup_start))
        super().load_state_dict(state_dict)

    def __repr__(self) -> str:
        warmup = f", warmup_steps={self.warmup_steps}" if self.warmup_steps else ""
        return (f"LearnedLR(k={self.phases.k}, step={self.last_step}/{self.total_steps}, "
                f"gamma={[float(n.gamma) for n in self.phases.nets]}{warmup})")


def _check_warmup(steps: Any, start: Any) -> tuple[int, float]:
    """``(warmup_steps, warmup_start)`` as int and float, refused early when they make no ramp."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"warmup_steps must be a whole number >= 0, got {steps!r}")
    if not 0.0 <= float(start) <= 1.0:
        raise ValueError(f"warmup_start must be in [0, 1] (a fraction of the learned LR), got "
                         f"{start!r}")
    return int(steps), float(start)
