"""metalr: learned, transferable learning-rate schedules (MLR-SNet and relatives)."""

from metalr.controlled import ControlledLR
from metalr.hookspecs import hookimpl
from metalr.plugins import (
    DuplicateComponentError,
    Registry,
    UnknownComponentError,
    get_registry,
)
from metalr.scheduler import LearnedLR

__version__ = "0.1.0"

__all__ = [
    "ControlledLR",
    "DuplicateComponentError",
    "LearnedLR",
    "Registry",
    "UnknownComponentError",
    "__version__",
    "get_registry",
    "hookimpl",
]
