"""An options schema read off a factory's signature, for components registered without one.

Without a schema, `metalr validate` could not tell a typo'd option from a real one, and the
typo would surface as a ``TypeError`` in the middle of a run (or, with ``**kwargs``, never).
The derived model has one field per keyword parameter, typed by its annotation (``Any`` where
there is none, or where pydantic cannot check it) and required where the parameter has no
default; unknown keys are refused unless the factory takes ``**kwargs``.
"""

from __future__ import annotations

import inspect
import typing
import warnings
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, create_model

# Leading positional arguments the core passes before the options (docs/plugins.md, hooks table).
POSITIONAL: dict[str, int] = {"model": 1, "optimizer": 1}


def options_from_signature(factory: Callable[..., Any], kind: str,
                           name: str) -> type[BaseModel] | None:
    """The schema of ``factory``'s keyword options, or None when its signature is unreadable."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None  # a builtin or C callable: nothing to read
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation that does not resolve: take each one as it is written
        hints = {}
    params = list(signature.parameters.values())[POSITIONAL.get(kind, 0):]
    fields: dict[str, Any] = {}
    extra = "forbid"
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            extra = "allow"
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.name.startswith("_"):
            continue
        annotation = _checkable(hints.get(p.name, p.annotation))
        fields[p.name] = (annotation, ... if p.default is p.empty else p.default)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a parameter named like a BaseModel attribute
            return create_model(f"{_camel(name)}Options", __config__=ConfigDict(
                extra=extra, arbitrary_types_allowed=True), **fields)
    except Exception:
        return None


def _checkable(annotation: Any) -> Any:
    """The annotation if pydantic can validate it, else ``Any``."""
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return Any
    try:
        TypeAdapter(annotation)
    except Exception:
        return Any
    return annotation


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("_", "-").split("-") if part)
