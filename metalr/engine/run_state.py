"""A component's run state as a list of its attributes: the common case of
:class:`metalr.contracts.protocols.Resumable`.

A checkpoint keeps what a component declares, never what a walk over its attributes finds: a
walk skips what it cannot save and the run resumes inexactly without a word. Most components'
state is a few attributes of a few kinds, so a class names them once
(:class:`SavedAttributes`) and these functions save and restore them. The kinds: None, numbers,
strings, tensors, lists, tuples and dicts of those, and objects with ``state_dict`` /
``load_state_dict`` (torch optimizers and schedulers), which are restored in place and so must
exist after ``start(run)``. Anything else is refused when saved, naming the attribute.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

_STATEFUL = "__metalr_state_dict__"  # marks the state_dict of an object restored in place


def save_attributes(obj: Any, names: Iterable[str]) -> dict[str, Any]:
    """``{name: plain value}`` for each attribute of ``obj`` named."""
    return {name: _save(getattr(obj, name), f"{type(obj).__name__}.{name}") for name in names}


def load_attributes(obj: Any, state: Mapping[str, Any], names: Iterable[str]) -> None:
    """Write a :func:`save_attributes` state back into ``obj`` (after its ``start``)."""
    names = list(names)
    missing = [n for n in names if n not in state]
    if missing:
        raise KeyError(f"{type(obj).__name__}: the saved run state has no {missing}")
    for name in names:
        where = f"{type(obj).__name__}.{name}"
        setattr(obj, name, _load(getattr(obj, name, None), state[name], where))


class SavedAttributes:
    """:class:`metalr.contracts.protocols.Resumable` for a class whose run state is the attributes
    named in ``run_state_attributes`` (a subclass adds its own: ``Base.run_state_attributes +
    (...)``)."""

    run_state_attributes: ClassVar[tuple[str, ...]] = ()

    def run_state(self) -> dict[str, Any]:
        return save_attributes(self, self.run_state_attributes)

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        load_attributes(self, state, self.run_state_attributes)


def _save(value: Any, where: str) -> Any:
    if value is None:
        return None
    for kind in (bool, int, float, str):  # a NumPy float is a float: kept as Python's, exactly
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_save(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict) and all(isinstance(k, (str, int)) for k in value):
        return {k: _save(v, f"{where}[{k!r}]") for k, v in value.items()}
    if callable(getattr(value, "state_dict", None)) and callable(
            getattr(value, "load_state_dict", None)):
        return {_STATEFUL: value.state_dict()}
    raise TypeError(f"{where}: a {type(value).__name__} is not a run state metalr can save "
                    "(tensors, numbers, strings, containers, objects with state_dict); save "
                    "what it holds in the class's own run_state()")


def _load(live: Any, saved: Any, where: str) -> Any:
    """The value to assign: ``live`` itself where it is restored in place."""
    if isinstance(saved, dict) and _STATEFUL in saved:
        if not callable(getattr(live, "load_state_dict", None)):
            raise TypeError(f"{where}: saved from an object with state_dict, but start() left "
                            f"a {type(live).__name__} there to load it into")
        live.load_state_dict(saved[_STATEFUL])
        return live
    if isinstance(saved, torch.Tensor):
        if not isinstance(live, torch.Tensor):
            return saved
        if isinstance(live, torch.nn.Parameter) and live.shape == saved.shape:
            with torch.no_grad():  # in place: an optimizer holds it
                live.copy_(saved)
            return live
        return saved.to(live.device)
    if isinstance(saved, (list, tuple)):
        same = isinstance(live, (list, tuple)) and len(live) == len(saved)
        return type(saved)(_load(live[i] if same else None, v, f"{where}[{i}]")
                           for i, v in enumerate(saved))
    if isinstance(saved, dict):
        live = live if isinstance(live, dict) else {}
        return {k: _load(live.get(k), v, f"{where}[{k!r}]") for k, v in saved.items()}
    return saved
