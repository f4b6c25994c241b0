"""An MLflow tracker that keeps logging off the training loop's critical path.

Metrics are queued in memory and a background thread sends them with ``log_batch`` in chunks of
up to 1,000 (MLflow's limit), at most every ``flush_seconds``. A run is only marked terminated
after its queued metrics have landed. (MLflow's own ``synchronous=False`` logging was measured
here to add about one second to every run's end, which is why this thread exists.)

Several processes may share one SQLite store (a sweep, or a user starting runs side by side).
MLflow migrates a new store's schema without a lock, so two processes meeting an empty file
both migrate and all but one die; and two creating the same experiment meet a UNIQUE error.
Both happen here under a file lock beside the database (``<db>.lock``), and an experiment
that another process created first is looked up again (docs/design.md, Parallel runs).

A store that cannot be used (its disk full, the database damaged, a server gone) raises
:class:`metalr.running.rundir.StoreError`, one line naming the store, instead of MLflow's
tracebacks: it stops the command, not one run. Every run this tracker started is ended on
:meth:`close` (retried there when the store refused it); those the store still refuses are in
``unclosed``.

A relative SQLite path (the default ``sqlite:///mlflow.db``) is made absolute when the tracker
starts, so that a run folder records where its runs are and ``metalr resume`` finds them from
any folder.

System metrics (CPU, memory, disk, network; GPU utilisation and memory with ``nvidia-ml-py``)
come from MLflow's own monitor, on the suite's (parent) run, whenever ``psutil`` is installed
(``pip install 'metalr[gpu]'``): one sampling thread per suite, never in the training loop.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from metalr.contracts.protocols import RecordedRun, RunStatus
from metalr.running.rundir import StoreError
from metalr.running.stores import sqlite_file

from .reading import MLflowReader, fetch_artifact
from .store import (
    DEFAULT_URI,
    has_default_experiment,
    mlflow_tables,
    sqlite_tables,
    unfinished_store,
)

_CHUNK = 1000  # MLflow's limit of metrics per log_batch call
_PARAMS_CHUNK = 100
_LOCK_TIMEOUT = 600.0  # seconds to wait for another process creating the store (minutes, at worst)
_CLOSE_TRIES = 3  # attempts to end a run the store refused, at close (0.5 s apart)
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}
T = TypeVar("T")


class MLflowOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tracking_uri: str | None = Field(
        None, description="unset: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    flush_seconds: float = Field(0.5, gt=0, description="how often queued metrics are sent")
    system_metrics: bool | None = Field(
        None, description="MLflow's system metrics (CPU, memory; GPU with nvidia-ml-py) on the "
        "suite's run; unset: on when a GPU is there to watch and psutil is installed")


def system_metrics_available() -> bool:
    """MLflow's monitor needs psutil (and, for GPUs, nvidia-ml-py, which it checks itself)."""
    return importlib.util.find_spec("psutil") is not None


def system_metrics_by_default() -> bool:
    """On a GPU machine the monitor shows what the run cannot (GPU memory and utilisation); on
    a CPU one it adds a thread and a chart of the load the run itself causes, so it waits to
    be asked."""
    import torch

    return system_metrics_available() and torch.cuda.is_available()


def follow_metalr_verbosity() -> None:
    """MLflow's own INFO lines (database creation and migration, the system-metrics monitor
    starting and stopping) only when metalr's logger shows INFO (``metalr run -v``): they
    say nothing about the run, and ``-q`` could not silence them. Warnings always pass."""
    level = logging.getLogger("metalr").getEffectiveLevel()
    logging.getLogger("mlflow").setLevel(max(level, logging.DEBUG) if level <= logging.INFO
                                         else logging.WARNING)


def _system_monitor(run_id: str, tracking_uri: str) -> Any:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    return SystemMetricsMonitor(run_id, tracking_uri=tracking_uri)


def resolve_uri(uri: str) -> str:
    """``uri`` with a relative SQLite file (or store folder) made absolute, from the working
    directory now: the form a run folder records, valid from any folder later."""
    if uri.startswith("sqlite:///"):
        path, sep, query = uri[len("sqlite:///"):].partition("?")
        if not path or path == ":memory:" or path.startswith("file:") or os.path.isabs(path):
            return uri
        return f"sqlite:///{Path(path).resolve()}{sep}{query}"
    if "://" not in uri and ":" not in uri and not uri.startswith("databricks"):
        return str(Path(uri).resolve())  # a plain folder: MLflow's file store
    return uri


def store_failure(exc: BaseException) -> str | None:
    """Why ``exc`` means the store itself cannot be used (its disk full or read-only, the
    database damaged or locked, the server unreachable), in one line; None for an error of one
    call (a rejected value, an unknown run), which fails that call only."""
    import sqlite3

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        for e in (cause, getattr(cause, "orig", None)):  # orig: SQLAlchemy's DBAPI error
            if isinstance(e, sqlite3.OperationalError) or type(e) is sqlite3.DatabaseError:
                return " ".join(str(e).split())
            if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
                return e.strerror or str(e)
            if isinstance(e, OSError) and type(e).__module__.startswith(("requests", "urllib3")):
                return f"cannot reach the server ({type(e).__name__})"
        cause = cause.__cause__ or cause.__context__
    return None


def standard_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """MLflow's own tags, which fill the UI's User and Source columns and its git link: the
    user, the command that ran (the ``metalr.command`` tag, else ``metalr``) and the commit
    of the checkout metalr ran from (``metalr.git_commit``), where known."""
    import getpass

    from mlflow.utils import mlflow_tags

    out = {mlflow_tags.MLFLOW_SOURCE_TYPE: "LOCAL",
           mlflow_tags.MLFLOW_SOURCE_NAME: str(tags.get("metalr.command") or "metalr")}
    with contextlib.suppress(Exception):  # no user name in some containers
        out[mlflow_tags.MLFLOW_USER] = getpass.getuser()
    if tags.get("metalr.git_commit"):
        out[mlflow_tags.MLFLOW_GIT_COMMIT] = str(tags["metalr.git_commit"])
    return out


_FAILED_STORES: set[str] = set()  # stores a tracker of this process found unusable


class _QuietStoreErrors(logging.Filter):
    """MLflow logs every database error with its traceback before raising it, and its system
    metrics monitor logs each failed send; the tracker raises the error as one line instead
    (the traceback goes to the run folder's error.txt), so those records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "mlflow.store.db.utils":
            return not (record.exc_info and record.levelno >= logging.ERROR)
        return not (_FAILED_STORES and record.levelno >= logging.WARNING)


def _quiet_mlflow_store_errors() -> None:
    for name in ("mlflow.store.db.utils", "mlflow.system_metrics.system_metrics_monitor"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietStoreErrors) for f in logger.filters):
            logger.addFilter(_QuietStoreErrors())


class MLflowTracker:
    # -- the store outside any run (metalr.contracts.protocols.TrackerStore, found through the
    # registry) --
    @staticmethod
    def open_reader(location: str | None = None) -> MLflowReader:
        """The store at ``location`` (unset: ``$MLFLOW_TRACKING_URI``, else
        ``sqlite:///mlflow.db``) read-only, for `metalr report` and `metalr runs`."""
        return MLflowReader(location)

    @staticmethod
    def fetch_artifact(uri: str) -> Path:
        """A ``runs:/<run id>/<path>`` artifact, copied read-only into a temporary folder."""
        return fetch_artifact(uri)

    def __init__(self, **options: Any):
        """Options: see :class:`MLflowOptions` (validated here: a bad or unknown one fails)."""
        from mlflow.tracking import MlflowClient  # imported here: `metalr plugins` needn't pay

        o = MLflowOptions(**options)
        tracking_uri, system_metrics = o.tracking_uri, o.system_metrics
        if system_metrics and not system_metrics_available():
            raise ValueError("system_metrics needs psutil (and nvidia-ml-py for GPUs): "
                             "pip install 'metalr[gpu]', or leave system_metrics unset")
        self.system_metrics = (system_metrics_by_default() if system_metrics is None
                               else system_metrics)
        self._monitors: dict[str, Any] = {}
        self._open: dict[str, RunStatus] = {}  # started or reopened here, not ended yet
        self.failure: StoreError | None = None  # the first time the store could not be used
        self.unclosed: list[str] = []  # after close: runs the store would not mark ended

        self.uri = resolve_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                               or DEFAULT_URI)
        follow_metalr_verbosity()
        _quiet_mlflow_store_errors()
        self._refuse_foreign_file()
        with self._store_lock(new_only=True):  # a new store is created and migrated here
            self._make_store_whole()
            self.client = self._call(MlflowClient, tracking_uri=self.uri)
            self._call(self.client.search_experiments, max_results=1)  # (MLflow versions that wait)
        self.flush_seconds = o.flush_seconds
        self._pending: dict[str, list[Any]] = {}
        self._lock = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self._busy = False
        self._worker = threading.Thread(target=self._send_loop, name="metalr-mlflow", daemon=True)
        self._worker.start()

    # -- the store and its failures --------------------------------------------------------
    @property
    def store(self) -> str:
        """The store as a person finds it: a SQLite file's path, else the URI."""
        db = self._sqlite_path()
        return str(db) if db is not None else self.uri

    def _failed(self, reason: str) -> StoreError:
        error = StoreError(f"MLflow store {self.store}: {reason}", self.store)
        if self.failure is None:
            self.failure = error
        _FAILED_STORES.add(self.store)
        return error

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(...)``, a store failure raised as one :class:`StoreError` line."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            reason = store_failure(exc)
            if reason is None:
                raise
            raise self._failed(reason) from exc

    def _refuse_foreign_file(self) -> None:
        """An existing SQLite file must be empty (a new store) or MLflow's: MLflow would add its
        tables to any other database, and fails on a damaged one with pages of traceback."""
        import sqlite3

        db = self._sqlite_path()
        if db is None or not db.is_file() or db.stat().st_size == 0:
            return
        try:
            tables = sqlite_tables(db)
        except sqlite3.Error as exc:
            raise StoreError(f"MLflow store {db}: not a readable SQLite database ({exc}); "
                             "restore it from a copy, or point tracking_uri (or "
                             "MLFLOW_TRACKING_URI) at another file", str(db)) from None
        if tables and not tables & {"experiments", "alembic_version"} and not (
                tables <= mlflow_tables()):  # only MLflow's: one whose creation was killed
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise StoreError(f"MLflow store {db}: an SQLite database of something else (tables "
                             f"{shown}), not an MLflow store; point tracking_uri (or "
                             "MLFLOW_TRACKING_URI) at a new file", str(db))

    def _make_store_whole(self) -> None:
        """A new SQLite store (no file, an empty one, or one a killed process left half-made and
        without a run) is made beside its path and moved into place once complete: MLflow
        makes it in place, table by table, and a kill in between left a file that every later
        run failed on ("table ... already exists", "no such table"). Called under the store's
        lock, so no other process makes it at the same time; a store that holds runs is left
        to MLflow (it migrates one of an older MLflow)."""
        from mlflow.tracking import MlflowClient

        db = self._sqlite_path()
        if db is None or self._store_complete() or not (
                not db.exists() or db.stat().st_size == 0 or unfinished_store(db)):
            return
        made = db.with_name(db.name + ".creating")
        made.unlink(missing_ok=True)  # what a creator killed before the move left
        client = self._call(MlflowClient, tracking_uri=f"sqlite:///{made}")
        self._call(client.search_experiments, max_results=1)  # made: tables, default experiment
        os.replace(made, db)

    def _store_complete(self) -> bool:
        """Whether the SQLite store exists with all of MLflow's tables and its default
        experiment: MLflow opens it without writing (no migration), so no lock is needed."""
        import sqlite3

        db = self._sqlite_path()
        if db is None or not db.is_file():
            return False
        try:
            return mlflow_tables() <= sqlite_tables(db) and has_default_experiment(db)
        except sqlite3.Error:
            return False

    # -- runs --------------------------------------------------------------------------------
    def start_run(self, experiment: str, name: str, params: Mapping[str, Any],
                  parent: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        from mlflow.entities import Param

        self._raise_if_failed()
        exp_id = self._experiment_id(experiment)
        run_tags = {**standard_tags(tags or {}), **{k: str(v) for k, v in (tags or {}).items()}}
        if parent:
            run_tags["mlflow.parentRunId"] = parent
        run_id = self._call(self.client.create_run, exp_id, run_name=name,
                            tags=run_tags).info.run_id
        self._open[run_id] = "FAILED"  # ended FAILED at close if nobody ends it before
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), _PARAMS_CHUNK):
            self._call(self.client.log_batch, run_id, params=items[i : i + _PARAMS_CHUNK])
        if parent is None and self.system_metrics:
            self._monitors[run_id] = _system_monitor(run_id, self.uri)
            self._monitors[run_id].start()
        return run_id

    def _experiment_id(self, experiment: str) -> str:
        """The experiment's id, creating it if no process has yet."""
        from mlflow.exceptions import MlflowException

        with self._store_lock():
            exp = self._call(self.client.get_experiment_by_name, experiment)
            if exp is not None:
                return exp.experiment_id
            try:
                return self._call(self.client.create_experiment, experiment,
                                  artifact_location=self._artifact_location(experiment))
            except MlflowException:  # created meanwhile, by a process the lock can't see
                exp = self._call(self.client.get_experiment_by_name, experiment)
                if exp is None:
                    raise
                return exp.experiment_id

    @contextlib.contextmanager
    def _store_lock(self, new_only: bool = False) -> Iterator[None]:
        """Hold ``<db>.lock`` for a SQLite store; other stores (servers) serialise themselves.
        ``new_only``: only while the store may still be created or migrated (a complete one is
        opened without the lock, and without writing a lock file beside it)."""
        db = self._sqlite_path()
        if db is None or (new_only and self._store_complete()):
            yield
            return
        from filelock import FileLock, Timeout

        lock = FileLock(f"{db}.lock", timeout=_LOCK_TIMEOUT)
        try:
            lock.acquire()
        except Timeout:
            raise RuntimeError(
                f"{db}.lock: another process has held the MLflow store's lock for "
                f"{_LOCK_TIMEOUT:.0f} s; is a `metalr run` stuck on that store?") from None
        except OSError as exc:  # a full or read-only disk: the lock file cannot be made
            reason = store_failure(exc)
            if reason is None:
                raise
            raise self._failed(reason) from exc
        try:
            yield
        finally:
            lock.release()

    def _sqlite_path(self) -> Path | None:
        db = sqlite_file(self.uri)
        return None if db is None else db.resolve()

    def _artifact_location(self, experiment: str) -> str | None:
        """Artifacts beside a SQLite store, not in ./mlruns of whatever folder we run from."""
        db = self._sqlite_path()
        if db is None:
            return None  # the server or store decides
        return (db.parent / "mlruns" / experiment).as_uri()

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with self._lock:
            self._raise_worker_error()
            self._raise_if_failed()
            pending = self._pending.setdefault(run_id, [])
            pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
            if len(pending) >= _CHUNK:
                self._lock.notify()

    def _send_loop(self) -> None:
        while True:
            with self._lock:
                if not any(self._pending.values()):
                    if self._closed:
                        return
                    self._lock.wait(self.flush_seconds)
                batches, self._pending = self._pending, {}
                self._busy = True
            try:
                for run_id, metrics in batches.items():
                    for i in range(0, len(metrics), _CHUNK):
                        self.client.log_batch(run_id, metrics=metrics[i : i + _CHUNK])
            except BaseException as exc:  # surfaced on the training thread's next call
                with self._lock:
                    self._error = exc
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            reason = store_failure(error)
            if reason is not None:
                raise self._failed(reason) from error
            raise RuntimeError(f"MLflow logging to {self.uri} failed: {error}") from error

    def _raise_if_failed(self) -> None:
        """Once the store has failed, nothing more is queued or sent: the command stops."""
        if self.failure is not None:
            raise StoreError(str(self.failure), self.failure.store)

    def _drain(self) -> None:
        with self._lock:
            self._lock.notify_all()
            while any(self._pending.values()) or self._busy:
                self._lock.wait(0.05)
                self._lock.notify_all()
            self._raise_worker_error()

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self._raise_if_failed()
        self._call(self.client.log_artifact, run_id, str(path), artifact_path)

    def log_model(self, run_id: str, path: str, name: str, params: Mapping[str, Any],
                  card: str) -> str | None:
        """A meta-learned net as an MLflow logged model (MLflow 3's Models view): its file and a
        ``card.md``, the run as its source, its options as params. Returns its
        ``models:/<model id>`` URI (``LearnedLR.from_pretrained`` loads it), or None for an
        MLflow without logged models (2.x: the run's ``theta/`` artifact is the net there)."""
        import shutil
        import tempfile

        create = getattr(self.client, "create_logged_model", None)
        if create is None:
            return None
        self._raise_if_failed()
        run = self._call(self.client.get_run, run_id)
        try:
            model = self._call(create, run.info.experiment_id, name=name, source_run_id=run_id,
                               params={k: str(v)[:6000] for k, v in params.items()},
                               model_type="metalr-net")
        except StoreError:
            raise
        except Exception as exc:  # a store without logged models: the run's theta/ has the net
            warnings.warn(f"MLflow store {self.store}: the net of run {run_id} is not logged as "
                          f"a model ({type(exc).__name__}); its run's theta/ artifact has it",
                          stacklevel=2)
            return None
        with tempfile.TemporaryDirectory(prefix="metalr-model-") as folder:
            shutil.copy2(path, folder)
            Path(folder, "card.md").write_text(card)
            self._call(self.client.log_model_artifacts, model.model_id, folder)
        self._call(self.client.finalize_logged_model, model.model_id, "READY")
        return f"models:/{model.model_id}"

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Params known only once the run has started (the LR probe's choice)."""
        from mlflow.entities import Param

        self._raise_if_failed()
        self._call(self.client.log_batch, run_id,
                   params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def read_run(self, run_id: str) -> RecordedRun:
        """What the store holds for ``run_id`` (after :meth:`end_run`, every queued metric)."""
        run = self._call(self.client.get_run, run_id)
        metrics = {key: sorted((m.step, m.value)
                               for m in self._call(self.client.get_metric_history, run_id, key))
                   for key in run.data.metrics}
        artifacts, folders = [], [None]
        while folders:
            for item in self._call(self.client.list_artifacts, run_id, folders.pop()):
                (folders if item.is_dir else artifacts).append(item.path)
        tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
        return RecordedRun(run.info.run_name, run.info.status, dict(run.data.params), tags,
                           metrics, sorted(artifacts), run.data.tags.get("mlflow.parentRunId"))

    def _finish_monitor(self, run_id: str) -> None:
        monitor = self._monitors.pop(run_id, None)
        if monitor is not None:
            with contextlib.suppress(Exception):  # its sends are MLflow's; never fail a run
                monitor.finish()

    def end_run(self, run_id: str, status: RunStatus) -> None:
        """Mark the run ended once its queued metrics have landed; a run whose metrics did not
        all land (or ended after the store failed) did not finish: FAILED. A store that
        refuses the end keeps the run for :meth:`close` to try again, and raises."""
        self._finish_monitor(run_id)
        error: BaseException | None = None
        try:
            self._drain()
        except Exception as exc:
            error = exc
        if status == "FINISHED" and (error is not None or self.failure is not None):
            status = "FAILED"  # some of what it logged may be missing
        self._open[run_id] = status
        try:
            self._call(self.client.set_terminated, run_id, status)
        except StoreError as exc:
            error = error or exc
        except Exception:
            self._open.pop(run_id, None)  # (an unknown run): nothing to end later either
            raise
        else:
            self._open.pop(run_id, None)
        if error is not None:
            raise error

    def close(self) -> None:
        """Stop sending, then end every run started or reopened here that nobody ended (at
        exit, on any path), trying again where the store refused: a full disk may have room
        again a moment later. Runs it still refuses stay RUNNING, listed in ``unclosed``;
        the store failure itself is in ``failure`` (not raised: the caller says it)."""
        for run_id in list(self._monitors):
            self._finish_monitor(run_id)
        error: BaseException | None = None
        try:
            self._drain()
        except StoreError:
            pass  # in self.failure
        except Exception as exc:
            error = exc
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._worker.join()
        for attempt in range(_CLOSE_TRIES):
            if attempt:
                time.sleep(0.5)
            for run_id, status in list(self._open.items()):
                try:
                    self._call(self.client.set_terminated, run_id, status)
                except StoreError:
                    continue
                except Exception:  # noqa: S110  (a run the store does not know: nothing to end)
                    pass
                self._open.pop(run_id, None)
            if not self._open:
                break
        self.unclosed = list(self._open)
        if error is not None:
            raise error

    # -- resume and clean-up (metalr resume, metalr runs --clean) ----------------------------
    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which metric ``key`` has landed in the store (what a kill spared)."""
        self._drain()
        return {m.step for m in self._call(self.client.get_metric_history, run_id, key)}

    def resume_run(self, run_id: str) -> None:
        self._raise_if_failed()
        self._call(self.client.update_run, run_id, status="RUNNING")
        self._open[run_id] = "FAILED"

    def running_runs(self) -> list[tuple[str, dict[str, str]]]:
        """``(run_id, tags)`` of every RUNNING run in the store."""
        from mlflow.entities import ViewType

        ids = [e.experiment_id
               for e in self._call(self.client.search_experiments, view_type=ViewType.ALL)]
        out, token = [], None
        while ids:
            page = self._call(self.client.search_runs, ids, "attributes.status = 'RUNNING'",
                              run_view_type=ViewType.ALL, max_results=1000, page_token=token)
            out += [(r.info.run_id, dict(r.data.tags)) for r in page]
            token = page.token
            if not token:
                break
        return out
