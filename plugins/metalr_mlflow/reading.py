"""An MLflow store read back without a run: `metalr report`'s reader and ``runs:/`` nets.

The core reads a store only through :class:`metalr.contracts.protocols.StoreReader` and fetches an
artifact only through :class:`metalr.contracts.protocols.TrackerStore`; this is MLflow's side of
both. Nothing here writes: a SQLite store is checked first (:func:`.store.existing_store`), and
every failure of the store while it is read is one :class:`StoreError` line naming it, not
MLflow's traceback.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from metalr.contracts.protocols import StoredRun
from metalr.running.rundir import StoreError

from .store import DEFAULT_URI, existing_store

T = TypeVar("T")
_PAGE = 1000  # runs per search_runs call (MLflow's limit)


class MLflowReader:
    """An MLflow store opened read-only (:class:`metalr.contracts.protocols.StoreReader`).

    ``location`` unset: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``, kept as given
    (relative stays relative), which is how the store is named back to the user.
    """

    def __init__(self, location: str | None = None):
        self.uri = location or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
        self.path = existing_store(self.uri)  # before MLflow opens it (it would write)
        self.where = str(self.path or self.uri)
        self._opened: Any = None
        self._names: dict[str, str] | None = None  # experiment id -> name
        self._experiment_of: dict[str, str] = {}  # run id -> experiment id, as listed

    @property
    def _client(self) -> Any:
        """MLflow's client, made on first use: a store only checked (`metalr runs`) is never
        opened by MLflow here."""
        if self._opened is None:
            from mlflow.tracking import MlflowClient

            _quiet_database_errors()
            try:
                self._opened = MlflowClient(tracking_uri=self.uri)
            except Exception as exc:  # noqa: BLE001  (MLflow's many ways to refuse a store)
                raise StoreError(f"cannot read the MLflow store {self.where}: {_reason(exc)}",
                                 self.where) from exc
        return self._opened

    def _read(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call(...)``; a failure of the store (not of this code) as one StoreError line."""
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not _from_store(exc):
                raise
            raise StoreError(f"cannot read the MLflow store {self.where}: {_reason(exc)}; "
                             "restore it from a copy, or pass another with --tracking-uri",
                             self.where) from exc

    def _experiments(self) -> dict[str, str]:
        if self._names is None:
            found = self._read(self._client.search_experiments)
            self._names = {e.experiment_id: e.name for e in found}
        return self._names

    def experiments(self) -> list[str]:
        return list(self._experiments().values())

    def runs(self, experiment: str | None = None) -> list[StoredRun]:
        names = self._experiments()
        ids = [i for i, name in names.items() if experiment is None or name == experiment]
        return [self._stored(r) for r in self._search(ids)] if ids else []

    def run(self, run_id: str) -> StoredRun | None:
        from mlflow.exceptions import MlflowException

        def get() -> Any:
            try:
                return self._client.get_run(run_id)
            except MlflowException:  # no such run
                return None

        found = self._read(get)
        return None if found is None else self._stored(found)

    def children(self, run_id: str) -> list[StoredRun]:
        experiment = self._experiment_of.get(run_id)
        if experiment is None:
            experiment = self._read(self._client.get_run, run_id).info.experiment_id
        return [self._stored(r) for r in
                self._search([experiment], f"tags.`mlflow.parentRunId` = '{run_id}'")]

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        points = {m.step: m.value
                  for m in self._read(self._client.get_metric_history, run_id, key)}
        return sorted(points.items())

    def close(self) -> None:
        """Nothing to release: MLflow's client holds no connection of its own."""

    def _search(self, experiment_ids: list[str], filter_string: str = "") -> list[Any]:
        out, token = [], None
        while True:
            page = self._read(self._client.search_runs, experiment_ids, filter_string,
                              max_results=_PAGE, page_token=token)
            out += list(page)
            token = page.token
            if not token:
                return out

    def _stored(self, run: Any) -> StoredRun:
        info, data = run.info, run.data
        self._experiment_of[info.run_id] = info.experiment_id
        return StoredRun(
            info.run_id, info.run_name, self._experiments().get(info.experiment_id, "?"),
            info.status, info.start_time or 0, dict(data.params),
            {k: v for k, v in data.tags.items() if not k.startswith("mlflow.")},
            frozenset(data.metrics), data.tags.get("mlflow.parentRunId"))


_FETCHED: dict[tuple[str, str], Path] = {}


def fetch_artifact(uri: str) -> Path:
    """The artifact ``runs:/<run id>/<path>`` in a temporary folder removed when the process
    exits, fetched once per process and store. The store is the one MLflow resolves the URI
    against (``mlflow.set_tracking_uri``, ``$MLFLOW_TRACKING_URI``, its default); it is only
    read: a local one that is not there, or not MLflow's, is named, never created or migrated
    (``metalr validate`` writes nothing)."""
    import atexit
    import shutil
    import tempfile
    from urllib.parse import urlparse

    import mlflow
    from mlflow.artifacts import download_artifacts

    store = mlflow.get_tracking_uri()
    if (store, uri) in _FETCHED and _FETCHED[store, uri].exists():
        return _FETCHED[store, uri]
    try:  # of this MLflow's schema too, so that opening it migrates nothing
        existing_store(store)
    except StoreError as exc:
        raise FileNotFoundError(f"{uri!r} cannot be read: {exc}") from None
    scheme = urlparse(store).scheme.lower()
    folder_store = Path(urlparse(store).path if scheme == "file" else store)
    if scheme in ("", "file") and not folder_store.is_dir():
        raise FileNotFoundError(f"{uri!r} cannot be read: no MLflow store at {folder_store} "
                                "(set MLFLOW_TRACKING_URI)")
    folder = tempfile.mkdtemp(prefix="metalr-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    try:
        _FETCHED[store, uri] = Path(download_artifacts(artifact_uri=uri, dst_path=folder))
        return _FETCHED[store, uri]
    except Exception as exc:  # MLflow raises several types for a missing run or path
        shutil.rmtree(folder, ignore_errors=True)
        raise FileNotFoundError(f"{uri!r}: cannot download it from the tracking store: "
                                f"{exc}") from None


class _NoTraceback(logging.Filter):
    """MLflow logs a database error with its traceback before raising it; the reader says it
    in one line (:class:`StoreError`) instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.levelno >= logging.ERROR)


def _quiet_database_errors() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _NoTraceback) for f in logger.filters):
        logger.addFilter(_NoTraceback())


def _reason(exc: BaseException) -> str:
    """One line for an error from the store: SQLite's own message where there is one."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        for e in (cause, getattr(cause, "orig", None)):
            if isinstance(e, sqlite3.Error):
                return " ".join(str(e).split())
        cause = cause.__cause__ or cause.__context__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def _from_store(exc: BaseException) -> bool:
    """An error of the store (MLflow's, its database's), not a bug of the reader."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, (MlflowException, sqlite3.Error)) or type(exc).__module__.startswith(
        "sqlalchemy")
