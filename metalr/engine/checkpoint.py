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

A component (the lr policy, the meta-objective) is kept through its declared run state only
(:class:`metalr.contracts.protocols.Resumable`, :func:`component_state`): a component that declares
none is refused on resume, by name, rather than resumed inexactly.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import re
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from metalr.contracts.protocols import Resumable

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


# -- components: their declared run state ------------------------------------------------------

_LABELS = {"lr_policy": "lr policy", "meta_objective": "meta-objective"}


def _type_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _describe(kind: str, name: str | None, obj: Any) -> str:
    """``lr policy 'hd' (metalr_adaptive.hd.HypergradientDescent)``: kind, name and class."""
    label = _LABELS.get(kind, kind)
    return (f"{label} {name!r} ({_type_name(obj)})" if name else f"{label} {_type_name(obj)}")


def component_state(kind: str, obj: Any) -> dict[str, Any]:
    """What a checkpoint keeps of a component: its type and its declared run state
    (:class:`metalr.contracts.protocols.Resumable`), or None where it declares none or one that
    ``torch.load(weights_only=True)`` would refuse (then the run goes on, and its resume
    refuses the component, saying why: :func:`load_component_state`). Kept out, such a value
    cannot make the whole file unreadable."""
    entry: dict[str, Any] = {"kind": kind, "type": _type_name(obj), "state": None}
    if isinstance(obj, Resumable):
        state = obj.run_state()
        problem = _unplain(state, "run_state()")
        entry.update({"state": state} if problem is None else {"problem": problem})
    return entry


# exact types: a NumPy float is a float, yet the restricted loader refuses it
_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.Size, torch.dtype,
           torch.device)


def _unplain(value: Any, where: str) -> str | None:
    """Where ``value`` holds what the restricted loader refuses, and what; None if nowhere.
    Plain containers are walked; any other value is tried on the loader itself (a Counter of
    a torch scheduler's state passes, a NumPy array does not)."""
    if type(value) in _LEAVES or isinstance(value, torch.Tensor):
        return None
    if type(value) in (list, tuple, set):
        return next((p for i, v in enumerate(value)
                     if (p := _unplain(v, f"{where}[{i}]")) is not None), None)
    if type(value) in (dict, OrderedDict):
        for key, v in value.items():
            if (problem := _unplain(key, f"a key of {where}")) is not None:
                return problem
            if (problem := _unplain(v, f"{where}[{key!r}]")) is not None:
                return problem
        return None
    try:
        buffer = io.BytesIO()
        torch.save(value, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception:
        return f"a {type(value).__module__}.{type(value).__qualname__} at {where}"
    return None


def load_component_state(kind: str, obj: Any, saved: Mapping[str, Any],
                         name: str | None = None) -> None:
    """Write ``saved`` (a :func:`component_state`) into ``obj``, after its ``start``.

    Refuses in one line, naming the component (``name``: as registered) and the fix, a
    component without the contract, a checkpoint of another component, and a checkpoint written
    before the contract (its state was captured by walking attributes, not declared).
    """
    path = getattr(saved, "path", None)
    where = f"checkpoint {path}" if path is not None else "the checkpoint"
    if "state" not in saved and ("captured" in saved or "own" in saved):
        # that metalr kept a policy by walking its attributes, skipping what it could not save
        raise CheckpointError(f"{where} is from an earlier metalr and cannot resume this run "
                              "exactly: delete it and its .prev to start the run again")
    what = _describe(kind, name, obj)
    if saved.get("type") != _type_name(obj):
        noun = "policy" if kind == "lr_policy" else _LABELS[kind]
        raise CheckpointError(f"{where} holds the state of a {saved.get('type')} {noun}, not "
                              f"of this run's {_type_name(obj)}; was the recipe changed? Delete "
                              "the run's checkpoint files to start it over")
    if saved.get("problem") is not None:
        raise CheckpointError(
            f"cannot resume: the {what} gave a run state with {saved['problem']}, which a "
            "checkpoint cannot hold; keep its run_state() to tensors, numbers, strings and "
            "lists, tuples and dicts of them, or delete the run's checkpoint files to start it "
            "over")
    if not isinstance(obj, Resumable) or saved["state"] is None:
        raise CheckpointError(
            f"cannot resume: the {what} declares no run state; implement run_state() / "
            "load_run_state() (metalr.contracts.protocols.Resumable) in it, or delete the run's "
            "checkpoint files to start it over")
    try:
        obj.load_run_state(saved["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        raise CheckpointError(f"{where}: the {what} could not load its run state (delete "
                              "the run's checkpoint files to start it over): "
                              f"{' '.join(message.split())[:300]}") from exc
