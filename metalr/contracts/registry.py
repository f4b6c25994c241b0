"""The component registry: plugins found through the ``metalr`` entry-point group.

Built-in components take the same path as a third party's: each is an entry point of an
installed distribution. Entry points are loaded one at a time; one that fails to import or to
register is reported by distribution and entry-point name and skipped, unless
``METALR_STRICT_PLUGINS=1`` asks for the error to be raised.

A name clash costs only the clashing component: the name stays with the built-in (or, between
two third parties, with the one loaded first), and the newcomer's component is refused with a
message naming both sources. Built-ins load first, so this holds whatever the distributions'
names. A component registered without an options schema gets one derived from its factory's
signature (:mod:`metalr.contracts.derived_options`), so typo'd options fail validation.

The distribution name ``metalr`` is reserved. ``importlib.metadata.entry_points`` keeps only the
first distribution of each name on ``sys.path``, so a third party's dist-info named ``metalr``
placed earlier would hide every built-in and pass its own components off as built-ins. Here
every distribution is seen, the one that installed this very package is the built-ins' (by its
file list or its editable-install record; else the one whose plugin modules lie beside this
package; else, as before, the first), another copy of the same entry points is skipped, and any
other distribution claiming the name is refused whole.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pluggy
from pydantic import BaseModel

from metalr.contracts import hookspecs
from metalr.contracts.derived_options import options_from_signature

GROUP = "metalr"
BUILTIN_DISTRIBUTION = "metalr"  # its components keep their names against any newcomer
KINDS: dict[str, str] = {
    "task": "register_tasks",
    "model": "register_models",
    "optimizer": "register_optimizers",
    "lr_policy": "register_lr_policies",
    "tracker": "register_trackers",
    "executor": "register_executors",
    "meta_objective": "register_meta_objectives",
    "net_format": "register_net_formats",
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
    derived: bool = False  # options read off the factory's signature (not given by the plugin)

    def build(self, *args: Any, **options: Any) -> Any:
        """Validate ``options`` against the component's schema and call its factory."""
        if self.options is not None:
            # a derived schema passes on only what was given: the factory keeps its defaults
            options = self.options(**options).model_dump(exclude_unset=self.derived)
        return self.factory(*args, **options)


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point that could not be loaded or could not register."""

    source: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.source} is broken ({self.error})"


@dataclass(frozen=True)
class RefusedComponent:
    """A component whose name was already taken: refused, while the rest of its plugin loads."""

    kind: str
    name: str
    source: str
    kept: str  # the source that keeps the name

    def __str__(self) -> str:
        return (f"{self.kind} {self.name!r} from {self.source} refused: the name is taken by "
                f"{self.kept}; register it under another name in {self.source}")


@dataclass(frozen=True)
class RefusedPlugin:
    """An entry point refused whole: its distribution claims the name reserved for metalr.

    Shaped like :class:`RefusedComponent` (``kind`` is ``"plugin"``) so that ``metalr plugins``
    lists both kinds of refusal the same way.
    """

    name: str  # the entry point's name
    source: str  # distribution:entry-point, as for any plugin
    location: str  # where its distribution is installed
    kept: str = BUILTIN_DISTRIBUTION
    kind: str = "plugin"

    def __str__(self) -> str:
        return (f"plugin {self.source} ({self.location}) refused: the distribution name "
                f"{BUILTIN_DISTRIBUTION!r} is reserved for metalr's built-ins "
                f"({_OWN_PACKAGE.parent}); rename the distribution, e.g. metalr-{self.name}")


class UnknownComponentError(KeyError):
    """A component name that no plugin registered; carries the nearest names.

    When some plugins did not load or had components refused, the message says so: the name
    asked for may be one of theirs.
    """

    def __init__(self, kind: str, name: str, known: Iterable[str],
                 skipped: Iterable[BrokenPlugin | RefusedComponent] = ()):
        self.kind, self.name = kind, name
        self.suggestions = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
        self.skipped = list(skipped)
        super().__init__(name)

    def __str__(self) -> str:
        hint = (f"; did you mean {' or '.join(map(repr, self.suggestions))}?"
                if self.suggestions else "")
        text = f"unknown {self.kind} {self.name!r}{hint} (`metalr plugins` lists them all)"
        if self.skipped:
            shown = [_short(str(s)) for s in self.skipped[:5]]
            more = f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            text += f"; note: not loaded: {'; '.join(shown)}{more}"
        return text


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    refused: list[RefusedComponent | RefusedPlugin] = field(default_factory=list)
    _loaded: bool = False

    def __post_init__(self) -> None:
        self.manager = pluggy.PluginManager(GROUP)
        self.manager.add_hookspecs(hookspecs)

    def load_entry_points(self) -> Registry:
        """Load every entry point of the group once; later calls do nothing."""
        if self._loaded:
            return self
        self._loaded = True
        for ep, refusal in _plugin_entry_points():
            if refusal is not None:
                self._refuse_plugin(refusal)
                continue
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
        refused: list[RefusedComponent] = []
        try:
            self.manager.register(plugin, name=source)
            self.manager.check_pending()
            for kind, hook_name in KINDS.items():
                for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                    if impl.plugin is plugin:
                        impl.function(register=self._stager(kind, source, staged, refused))
        except Exception as exc:
            if self.manager.is_registered(plugin):
                self.manager.unregister(plugin)
            self._report(source, exc)
            return False
        for kind, named in staged.items():
            for name, component in named.items():
                displaced = self.components[kind].get(name)
                if displaced is not None:  # a built-in added after a third party took its name
                    refused.append(RefusedComponent(kind, name, displaced.source, source))
                self.components[kind][name] = component
        for refusal in refused:
            self.refused.append(refusal)
            warnings.warn(f"metalr: {refusal}", stacklevel=3)
        return True

    def _stager(self, kind: str, source: str, staged: dict[str, dict[str, Component]],
                refused: list[RefusedComponent]):
        def register(
            name: str,
            factory: Callable[..., Any],
            options: type[BaseModel] | None = None,
            summary: str = "",
        ) -> None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{kind} names must be non-empty strings, got {name!r}")
            other = staged[kind].get(name) or self.components[kind].get(name)
            if other is not None:
                if self.strict:
                    raise DuplicateComponentError(
                        f"{kind} {name!r} is registered twice: by {other.source} and by {source}"
                    )
                if other.source == source or not _outranks(source, other.source):
                    refused.append(RefusedComponent(kind, name, source, other.source))
                    return
            derived = options is None
            if derived:
                options = options_from_signature(factory, kind, name)
            staged[kind][name] = Component(kind, name, factory, options, source, summary,
                                           derived=derived and options is not None)

        return register

    def _refuse_plugin(self, refusal: RefusedPlugin) -> None:
        if self.strict:
            raise PluginLoadError(str(refusal))
        self.refused.append(refusal)
        warnings.warn(f"metalr: {refusal}", stacklevel=3)

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
            skipped = [*self.broken, *(r for r in self.refused if r.kind in (kind, "plugin"))]
            raise UnknownComponentError(kind, name, self.components[kind], skipped) from None

    def names(self, kind: str) -> list[str]:
        self.load_entry_points()
        return sorted(self.components[kind])

    def all(self) -> list[Component]:
        self.load_entry_points()
        return [c for kind in KINDS for _, c in sorted(self.components[kind].items())]


_OWN_PACKAGE = Path(__file__).resolve().parents[1]
"""The ``metalr`` package this registry belongs to: its distribution holds the built-ins."""


@dataclass(frozen=True)
class _Installed:
    """One installed distribution with entry points in the group."""

    name: str  # normalized
    location: str
    dist: metadata.Distribution
    eps: tuple[metadata.EntryPoint, ...]


def _plugin_entry_points() -> list[tuple[metadata.EntryPoint, RefusedPlugin | None]]:
    """The group's entry points of every installed distribution, in load order: built-ins first,
    so that they hold their names whatever a third party is called, then by distribution and
    entry-point name. An entry point of a distribution that claims the reserved name without
    being this metalr comes with its refusal; another install of this metalr (an egg-info beside
    the sources, an older copy) adds nothing and is skipped.

    ``metadata.entry_points`` is not used: it keeps the first distribution of each name on
    ``sys.path``, which lets a dist-info named ``metalr`` hide the real one.
    """
    found: dict[tuple[str, str], _Installed] = {}  # a folder twice on sys.path counts once
    for dist in metadata.distributions():
        eps = tuple(ep for ep in dist.entry_points if ep.group == GROUP)
        if eps:
            item = _Installed(_normalized(dist.metadata["Name"] or ""), _location(dist), dist, eps)
            found.setdefault((item.name, item.location), item)
    named = [i for i in found.values() if i.name == BUILTIN_DISTRIBUTION]
    own = (next((i for i in named if _installed_this_package(i.dist)), None) or
           next((i for i in named if _plugins_beside_this_package(i.eps)), None) or
           next(iter(named), None))  # core and plugins from different trees: as importlib would
    ours = {(ep.name, ep.value) for ep in own.eps} if own else set()
    ordered = []
    for item in found.values():
        refuse = item.name == BUILTIN_DISTRIBUTION and item is not own
        if refuse and {(ep.name, ep.value) for ep in item.eps} <= ours:
            continue  # this metalr installed again: nothing of its own
        ordered += [((item is not own, item.name, ep.name), ep,
                     RefusedPlugin(ep.name, f"{_dist_name(ep)}:{ep.name}", item.location)
                     if refuse else None) for ep in item.eps]
    ordered.sort(key=lambda entry: entry[0])
    return [(ep, refusal) for _, ep, refusal in ordered]


def _normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``MetaLR`` and ``metalr`` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _location(dist: metadata.Distribution) -> str:
    """The folder a distribution's metadata lives in (its dist-info or egg-info)."""
    path = getattr(dist, "_path", None)  # PathDistribution's; other finders may lack it
    try:
        return str(Path(path).resolve()) if path is not None else str(dist.locate_file(""))
    except (OSError, TypeError, ValueError):
        return str(path)


def _installed_this_package(dist: metadata.Distribution) -> bool:
    """Whether ``dist`` installed the ``metalr`` package this module belongs to: its file list
    names this package's ``__init__.py``, or its editable-install record points at the folder
    that holds it."""
    init = _OWN_PACKAGE / "__init__.py"
    try:
        for file in dist.files or ():
            if file.parts[-2:] == ("metalr", "__init__.py") and \
                    Path(dist.locate_file(file)).resolve() == init:
                return True
        record = json.loads(dist.read_text("direct_url.json") or "{}")
        url = urlparse(record.get("url", ""))
        return bool(record.get("dir_info", {}).get("editable")) and url.scheme == "file" and \
            _OWN_PACKAGE.is_relative_to(Path(unquote(url.path)).resolve())
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def _plugins_beside_this_package(eps: Iterable[metadata.EntryPoint]) -> bool:
    """Whether every module the entry points name lives beside this ``metalr`` package (its
    ``plugins/`` in a source tree, ``site-packages`` in an install): metalr run from sources
    whose installed record points elsewhere. Modules are found, not imported."""
    import importlib.util

    root = _OWN_PACKAGE.parent
    for ep in eps:
        try:
            spec = importlib.util.find_spec(ep.module.split(".")[0])
        except (ImportError, ValueError, AttributeError):
            return False
        where = spec and (spec.origin or next(iter(spec.submodule_search_locations or ()), None))
        if not where or not Path(where).resolve().is_relative_to(root):
            return False
    return True


def _is_builtin(source: str) -> bool:
    return source.split(":", 1)[0] == BUILTIN_DISTRIBUTION


def _outranks(source: str, holder: str) -> bool:
    """Whether a built-in ``source`` takes a name back from a third-party ``holder``."""
    return _is_builtin(source) and not _is_builtin(holder)


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
