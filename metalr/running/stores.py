"""A tracker's store outside any run, reached through the registry and the declared contract.

`metalr report` reads suites back and a ``runs:/`` net is fetched from a store without a run
being tracked; both go through the tracker component's factory
(:class:`metalr.contracts.protocols.TrackerStore`), as the runner builds its tracker, so the core
imports no tracking library. Which tracker: the one named (``mlflow``, the recipes' default,
unless told otherwise).
"""

from __future__ import annotations

from pathlib import Path

from metalr.contracts.protocols import StoreReader, TrackerStore
from metalr.contracts.registry import Registry, UnknownComponentError, get_registry
from metalr.running.rundir import StoreError

DEFAULT_TRACKER = "mlflow"
"""The tracker a recipe uses when it names none; its store is the one read when none is named."""


def tracker_store(tracker: str = DEFAULT_TRACKER, registry: Registry | None = None
                  ) -> TrackerStore:
    """The factory of the tracker component ``tracker``, which opens its store for reading.
    :class:`StoreError` (one line) for an unknown tracker or one that cannot read back."""
    try:
        factory = (registry or get_registry()).get("tracker", tracker).factory
    except UnknownComponentError as exc:
        raise StoreError(str(exc), tracker) from None
    if not isinstance(factory, TrackerStore):
        raise StoreError(f"the tracker {tracker!r} cannot read its store back: its factory has "
                         "no open_reader/fetch_artifact "
                         "(metalr.contracts.protocols.TrackerStore); use "
                         "a tracker that has", tracker)
    return factory


def open_store(location: str | None = None, tracker: str = DEFAULT_TRACKER,
               registry: Registry | None = None) -> StoreReader:
    """The store at ``location`` (None: the tracker's default) opened read-only; a store that
    is missing, damaged or not the tracker's is a one-line :class:`StoreError`."""
    return tracker_store(tracker, registry).open_reader(location)


def fetch_artifact(uri: str, tracker: str = DEFAULT_TRACKER,
                   registry: Registry | None = None) -> Path:
    """A local copy of the artifact ``uri`` (``runs:/<run id>/<path>``), valid until the process
    exits; ``FileNotFoundError`` saying why when it cannot be had."""
    try:
        store = tracker_store(tracker, registry)
    except StoreError as exc:
        raise FileNotFoundError(f"{uri!r} cannot be read: {exc}") from None
    return store.fetch_artifact(uri)


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None: a server, or an in-memory database)."""
    if not uri.startswith("sqlite:///"):
        return None  # a server (it checks itself), or an in-memory database
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path.removeprefix("file:")) if path and path != ":memory:" else None
