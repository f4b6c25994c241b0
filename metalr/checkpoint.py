"""Checkpoint files: written atomically, verified on load, never an unrestricted pickle.

A checkpoint is one file: a header line ``metalr-checkpoint 1 <sha256 of the payload>`` and a
``torch.save`` payload of plain tensors, numbers, strings and containers, read back with
``torch.load(weights_only=True)``. It is written to a temporary file in the same folder, fsynced
and moved into place with ``os.replace``, after the previous good file is kept as ``.prev``: a
kill at any moment leaves either the old or the new checkpoint whole, and a full disk leaves the
last good one untouched. :func:`load` checks the digest and falls back to ``.prev``, with a
warning saying which file was bad and why. Every error names the file: a payload torch refuses
(pickled objects) without torch's advice to load it unrestricted, a key the payload lacks as
:class:`CheckpointKeyError` rather than a bare ``KeyError``.

It also holds the generic capture of an LR policy's state (:func:`policy_state`), used for
policies that do not define ``state_dict`` / ``load_state_dict`` themselves: their attributes
are saved (tensors, numbers, strings, containers, nested modules, torch optimizers and
schedulers, torch / NumPy / Python generators) and written back after ``policy.start`` has
rebuilt the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import random
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metalr.protocols import RunInfo

MAGIC = b"metalr-checkpoint 1 "
SLEEP_ENV = "METALR_FAULT_CHECKPOINT_SLEEP"
"""Test hook: seconds to pause half-way through writing a checkpoint (to kill it there)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the file and the fix."""


class CheckpointWarning(UserWarning):
    """A bad checkpoint passed over for the previous one; the message names both and why."""


# -- files -----------------------------------------------------------------------------------

def previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def save(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically, keeping the previous good file as ``.prev``."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({k: _plain(v) for k, v in state.items()}, buffer)  # loaded tables as dicts
    payload = buffer.getvalue()
    data = MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write(tmp, data)
        if path.exists():
            os.replace(path, previous(path))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write checkpoint {path}: {exc.strerror or exc} "
                              f"(the last good checkpoint is kept; free space or fix "
                              f"permissions, then `metalr resume`)") from exc
    return path


def _write(tmp: Path, data: bytes) -> None:
    pause = float(os.environ.get(SLEEP_ENV, "0") or 0)
    with open(tmp, "wb") as f:
        if pause:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(pause)
            f.write(data[len(data) // 2:])
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible everywhere (Windows); the replace itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """One checkpoint file, its digest checked; :class:`CheckpointError` says what is wrong.

    A key the payload lacks is a :class:`CheckpointKeyError` naming the file and the key where
    the key is read (here, or in the runner and engine), not a bare ``KeyError: 'runner'``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    head, _, payload = data.partition(b"\n")
    if not head.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a metalr checkpoint (bad header)")
    if hashlib.sha256(payload).hexdigest().encode() != head[len(MAGIC):]:
        raise CheckpointError(f"checkpoint {path} is corrupt (checksum mismatch)")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # a file with a good digest but a foreign payload
        # from None: torch's text (in error.txt's traceback too) advises weights_only=False
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {_refusal(exc)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} cannot be loaded: it holds a "
                              f"{type(state).__name__}, not the table of a checkpoint")
    return _Checked(state, path)


def _refusal(exc: Exception) -> str:
    """Why torch would not load a payload, without its advice to load it unrestricted."""
    text = str(exc)
    if "weights_only" in text or isinstance(exc, pickle.UnpicklingError):
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"it holds objects metalr will not load{what}, possibly unsafe: not a checkpoint "
                "metalr wrote")
    return " ".join(text.split())[:200]


class CheckpointKeyError(CheckpointError, KeyError):
    """A key a checkpoint lacks: still a ``KeyError`` to code that probes for one, but a
    one-line message naming the file, the key and the fix."""

    __str__ = RuntimeError.__str__  # not KeyError's repr of the message


class _Checked(dict):
    """A loaded checkpoint (and each table in it): a missing key raises
    :class:`CheckpointKeyError` naming the file. Two levels deep, which is what the runner and
    engine index; :func:`save` writes plain dicts back (the loader refuses any other class)."""

    def __init__(self, items: Mapping[str, Any], path: Path, where: str = ""):
        super().__init__(items)
        self.path, self.where = path, where
        if not where:
            for key, value in self.items():
                if type(value) is dict:
                    dict.__setitem__(self, key, _Checked(value, path, f"{key}."))

    def __missing__(self, key: Any) -> Any:
        path, main = self.path, self.path.name.removesuffix(".prev")
        if path.name == main:
            fix = f"delete it to resume from {previous(path).name}, or both to start the run over"
        else:
            fix = f"delete it and {main} to start the run over"
        raise CheckpointKeyError(f"checkpoint {path} has no '{self.where}{key}' (not a run's "
                                 f"checkpoint, or another metalr version's): {fix}")


def _plain(value: Any) -> Any:
    return {k: _plain(v) for k, v in value.items()} if isinstance(value, _Checked) else value


def load(path: str | Path, map_location: Any = "cpu") -> tuple[dict[str, Any], Path] | None:
    """The newest good checkpoint at ``path`` (or its ``.prev``), and which file it was.

    None when neither exists; :class:`CheckpointError` when files exist and none is good. Going
    back to ``.prev`` because ``path`` is bad is a :class:`CheckpointWarning` saying why (the
    run redoes up to an epoch; a missing ``path``, as a kill between the two renames of
    :func:`save` leaves it, is no news).
    """
    path = Path(path)
    errors = []
    for candidate in (path, previous(path)):
        if not candidate.exists():
            continue
        try:
            state = read(candidate, map_location)
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        if errors:
            warnings.warn(f"{errors[0]}; continuing from the previous one, {candidate}",
                          CheckpointWarning, stacklevel=2)
        return state, candidate
    if errors:
        raise CheckpointError("; ".join(errors) + " — delete the folder's checkpoint files to "
                              "start this run over")
    return None


# -- random number generators ----------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Torch's global (and CUDA) generators, Python's and NumPy's."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss)
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.cpu().numpy().astype("uint32"), pos, has_gauss, gauss))


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# -- LR policies -------------------------------------------------------------------------------

_KIND = "__metalr_kind__"
_MODULE_ATTRS = frozenset(vars(nn.Module()))  # nn.Module's own bookkeeping


def policy_state(policy: Any, skip: tuple[Any, ...] = ()) -> dict[str, Any]:
    """What a checkpoint keeps of a policy: its own ``state_dict()`` when it has one (and is
    not an ``nn.Module``, whose ``state_dict`` is theta alone), else its captured attributes.
    ``skip``: objects the engine saves itself (model, optimizer, task)."""
    kind = {"type": _type_name(policy)}
    if not isinstance(policy, nn.Module) and callable(getattr(policy, "state_dict", None)):
        return {**kind, "own": policy.state_dict()}
    return {**kind, "captured": _capture(policy, {id(o) for o in skip})}


def _type_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def load_policy_state(policy: Any, state: Mapping[str, Any]) -> None:
    if state.get("type") != _type_name(policy):
        raise CheckpointError(f"the checkpoint holds the state of a {state.get('type')} policy, "
                              f"not of this run's {_type_name(policy)}; was the recipe changed? "
                              "Delete the run's checkpoint files to start it over")
    if "own" in state:
        policy.load_state_dict(state["own"])
    else:
        _restore(policy, state["captured"])


def _capture(value: Any, skip: set[int]) -> Any:
    """A plain tree for ``value``, or ``_SKIP`` for what ``start()`` rebuilds or cannot be saved."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if id(value) in skip or isinstance(value, RunInfo):  # start() hands a new RunInfo
        return _SKIP
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, torch.Generator):
        return {_KIND: "generator", "state": value.get_state()}
    if isinstance(value, random.Random):
        return {_KIND: "py_random", "state": value.getstate()}
    if hasattr(value, "bit_generator"):  # numpy.random.Generator
        return {_KIND: "np_generator", "state": value.bit_generator.state}
    if type(value).__module__ == "numpy":  # numeric arrays as tensors, scalars as numbers
        if not hasattr(value, "dtype") or value.dtype.kind not in "fiub":
            return _SKIP
        if not getattr(value, "shape", ()):
            return value.item()
        return {_KIND: "ndarray", "dtype": str(value.dtype), "shape": list(value.shape),
                "data": torch.from_numpy(value.copy()).reshape(-1)}
    if isinstance(value, (set, frozenset)):
        items = [_capture(v, skip) for v in value]
        return _SKIP if any(i is _SKIP for i in items) else {_KIND: "set", "items": items}
    if isinstance(value, (list, tuple)):
        items = [_capture(v, skip) for v in value]
        return _SKIP if any(i is _SKIP for i in items) else type(value)(items)
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int, float, tuple)) for k in value):
            return _SKIP
        items = {k: _capture(v, skip) for k, v in value.items()}
        return _SKIP if any(i is _SKIP for i in items.values()) else items
    if isinstance(value, nn.Module):
        return {_KIND: "module", "state": nn.Module.state_dict(value),
                "attrs": _capture_attrs(value, skip, _MODULE_ATTRS)}
    if type(value).__module__.startswith("pydantic") or _is_pydantic(value):
        return _SKIP  # options: rebuilt from the recipe
    if callable(getattr(value, "state_dict", None)) and callable(
            getattr(value, "load_state_dict", None)):
        return {_KIND: "state_dict", "state": value.state_dict()}  # optimizers, schedulers
    if not isinstance(value, type) and (dataclasses.is_dataclass(value) or (
            hasattr(value, "__dict__") and not callable(value))):
        return {_KIND: "object", "attrs": _capture_attrs(value, skip, frozenset())}
    return _SKIP


def _is_pydantic(value: Any) -> bool:
    return any(c.__module__.startswith("pydantic") for c in type(value).__mro__[1:])


def _capture_attrs(obj: Any, skip: set[int], exclude: frozenset[str]) -> dict[str, Any]:
    skip = skip | {id(obj)}
    out = {}
    for name, value in vars(obj).items():
        if name in exclude:
            continue
        captured = _capture(value, skip)
        if captured is not _SKIP:
            out[name] = captured
    return out


def _restore(live: Any, saved: Any) -> Any:
    """``saved`` written into ``live`` in place where identity matters (parameters, modules,
    optimizers: others hold references to them); the value to assign otherwise."""
    if isinstance(saved, dict) and _KIND in saved:
        kind = saved[_KIND]
        if live is None and kind not in ("ndarray", "set"):
            raise CheckpointError(f"the checkpoint has a {kind} where the policy has none after "
                                  "start(); a policy that creates such objects later needs its "
                                  "own state_dict / load_state_dict")
        if kind == "ndarray":
            return saved["data"].cpu().numpy().astype(saved["dtype"]).reshape(saved["shape"])
        if kind == "set":
            return set(saved["items"])
        if kind == "module":
            nn.Module.load_state_dict(live, saved["state"])
            _restore_attrs(live, saved["attrs"])
        elif kind == "state_dict":
            live.load_state_dict(saved["state"])
        elif kind == "generator":
            live.set_state(saved["state"].cpu())
        elif kind == "py_random":
            live.setstate(_tuples(saved["state"]))
        elif kind == "np_generator":
            live.bit_generator.state = saved["state"]
        else:
            _restore_attrs(live, saved["attrs"])
        return live
    if isinstance(saved, torch.Tensor):
        # Parameters are written in place (optimizers hold them); any other tensor is replaced,
        # since live tensors may alias each other (an LSTM state starts as one zero tensor).
        if (isinstance(live, torch.Tensor) and live.requires_grad and live.is_leaf
                and live.shape == saved.shape and live.dtype == saved.dtype):
            with torch.no_grad():
                live.copy_(saved)
            return live
        return saved.to(live.device) if isinstance(live, torch.Tensor) else saved
    if isinstance(saved, (list, tuple)):
        if isinstance(live, (list, tuple)) and len(live) == len(saved):
            return type(saved)(_restore(a, b) for a, b in zip(live, saved))
        return type(saved)(_restore(None, b) if _has_kind(b) else b for b in saved)
    if isinstance(saved, dict):
        if isinstance(live, dict):
            return {k: _restore(live.get(k), v) for k, v in saved.items()}
        return saved
    return saved


def _has_kind(value: Any) -> bool:
    return isinstance(value, dict) and _KIND in value


def _restore_attrs(obj: Any, attrs: Mapping[str, Any]) -> None:
    for name, saved in attrs.items():
        try:
            object.__setattr__(obj, name, _restore(getattr(obj, name, None), saved))
        except CheckpointError as exc:
            raise CheckpointError(f"{type(obj).__name__}.{name}: {exc}") from None


class _Skip:
    def __repr__(self) -> str:
        return "<not saved>"


_SKIP: Any = _Skip()
