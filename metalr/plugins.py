"""The component registry: plugins found through the ``metalr`` entry-point group.

Built-in components take the same path as a third party's: each is an entry point of an
installed distribution. Entry points are loaded one at a time; one that fails to import or to
register is reported by distribution and entry-point name and skipped, unless
``METALR_STRICT_PLUGINS=1`` asks for the error to be raised.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy
from pydantic import BaseModel

from metalr import hookspecs

GROUP = "metalr"
KINDS: dict[str, str] = {
    "task": "register_tasks",
    "model": "register_models",
    "optimizer": "register_optimizers",
    "lr_policy": "register_lr_policies",
    "tracker": "register_trackers",
}


@dataclass(frozen=True)
class Component:
    """One registered component and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    options: type[BaseModel] | None
    source: str
    summary: str = ""

    def build(self, *args: Any, **options: Any) -> Any:
        """Validate ``options`` against the component's schema and call its factory."""
        if self.options is not None:
            options = self.options(**options).model_dump()
        return self.factory(*args, **options)


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point that could not be loaded or could not register."""

    source: str
    error: str


class UnknownComponentError(KeyError):
    """A component name that no plugin registered; carries the nearest names."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name = kind, name
        self.suggestions = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
        super().__init__(name)

    def __str__(self) -> str:
        hint = f"; did you mean {' or '.join(map(repr, self.suggestions))}?" if self.suggestions else ""
        return f"unknown {self.kind} {self.name!r}{hint} (`metalr plugins` lists them all)"


class DuplicateComponentError(ValueError):
    """Two plugins registered the same name for the same kind."""


class PluginLoadError(RuntimeError):
    """Raised in strict mode when an entry point cannot be loaded."""


def strict_from_env() -> bool:
    return os.environ.get("METALR_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class Registry:
    """Components by kind and name, filled lazily (and once) from the entry points."""

    strict: bool = field(default_factory=strict_from_env)
    components: dict[str, dict[str, Component]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    broken: list[BrokenPlugin] = field(default_factory=list)
    _loaded: bool = False

    def __post_init__(self) -> None:
        self.manager = pluggy.PluginManager(GROUP)
        self.manager.add_hookspecs(hookspecs)

    def load_entry_points(self) -> Registry:
        """Load every entry point of the group once; later calls do nothing."""
        if self._loaded:
            return self
        self._loaded = True
        for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: (_dist_name(e), e.name)):
            source = f"{_dist_name(ep)}:{ep.name}"
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                self._report(source, exc)
                continue
            self.add_plugin(plugin, source)
        return self

    def add_plugin(self, plugin: object, source: str) -> bool:
        """Register one plugin object (a module with hook implementations); False if broken."""
        staged: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        try:
            self.manager.register(plugin, name=source)
            self.manager.check_pending()
            for kind, hook_name in KINDS.items():
                for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                    if impl.plugin is plugin:
                        impl.function(register=self._stager(kind, source, staged))
        except Exception as exc:
            if self.manager.is_registered(plugin):
                self.manager.unregister(plugin)
            self._report(source, exc)
            return False
        for kind, named in staged.items():
            self.components[kind].update(named)
        return True

    def _stager(self, kind: str, source: str, staged: dict[str, dict[str, Component]]):
        def register(
            name: str,
            factory: Callable[..., Any],
            options: type[BaseModel] | None = None,
            summary: str = "",
        ) -> None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{kind} names must be non-empty strings, got {name!r}")
            other = self.components[kind].get(name) or staged[kind].get(name)
            if other is not None:
                raise DuplicateComponentError(
                    f"{kind} {name!r} is registered twice: by {other.source} and by {source}"
                )
            staged[kind][name] = Component(kind, name, factory, options, source, summary)

        return register

    def _report(self, source: str, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if self.strict:
            raise PluginLoadError(f"plugin {source} failed to load: {error}") from exc
        self.broken.append(BrokenPlugin(source, error))
        warnings.warn(f"metalr: skipping plugin {source}: {error}", stacklevel=2)

    def get(self, kind: str, name: str) -> Component:
        self.load_entry_points()
        if kind not in self.components:
            raise UnknownComponentError("kind", kind, KINDS)
        try:
            return self.components[kind][name]
        except KeyError:
            raise UnknownComponentError(kind, name, self.components[kind]) from None

    def names(self, kind: str) -> list[str]:
        self.load_entry_points()
        return sorted(self.components[kind])

    def all(self) -> list[Component]:
        self.load_entry_points()
        return [c for kind in KINDS for _, c in sorted(self.components[kind].items())]


def _dist_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "<unknown distribution>"


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded from the entry points on first use."""
    global _default
    if _default is None:
        _default = Registry()
    return _default.load_entry_points()
