"""metalr: learned, transferable learning-rate schedules (MLR-SNet and relatives).

Lean on purpose: ``from metalr import hookimpl`` (what a plugin imports) loads pluggy only; the
registry, ``LearnedLR`` (torch), ``run`` (a recipe from Python, :mod:`metalr.running.api`) and
``ControlledLR`` (the controller plugin, asked of the registry) are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from metalr.contracts.hookspecs import hookimpl

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ loads them
    from metalr.contracts.registry import (
        DuplicateComponentError,
        Registry,
        UnknownComponentError,
        get_registry,
    )
    from metalr.running.api import run
    from metalr.scheduler import LearnedLR

__version__ = "0.1.0"

_REGISTRY = "metalr.contracts.registry"
_LAZY = {"DuplicateComponentError": _REGISTRY, "Registry": _REGISTRY,
         "UnknownComponentError": _REGISTRY, "get_registry": _REGISTRY,
         "LearnedLR": "metalr.scheduler", "run": "metalr.running.api"}


def __getattr__(name: str) -> Any:
    """The public names, imported on first use. ``ControlledLR`` lives in the controller plugin:
    asked of the registry (the :class:`metalr.contracts.protocols.HandLoopScheduled` contract),
    since the core imports no plugin."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name == "ControlledLR":
        value = _controlled_lr()
    else:
        raise AttributeError(f"module 'metalr' has no attribute {name!r}")
    globals()[name] = value
    return value


def _controlled_lr() -> type:
    from metalr.contracts.protocols import HandLoopScheduled
    from metalr.contracts.registry import UnknownComponentError, get_registry

    try:
        factory = get_registry().get("lr_policy", "lr-controller").factory
    except UnknownComponentError as exc:  # e.g. the rl extra missing: the message says so
        raise ImportError(f"metalr.ControlledLR needs the lr-controller plugin: {exc}") from exc
    if not isinstance(factory, HandLoopScheduled):
        raise ImportError("metalr.ControlledLR: the lr-controller component offers no "
                          "scheduler() (metalr.contracts.protocols.HandLoopScheduled)")
    return factory.scheduler()


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ControlledLR",
    "DuplicateComponentError",
    "LearnedLR",
    "Registry",
    "UnknownComponentError",
    "__version__",
    "get_registry",
    "hookimpl",
    "run",
]
