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

System metrics (CPU, memory, disk, network; GPU utilisation and memory with ``nvidia-ml-py``)
come from MLflow's own monitor, on the suite's (parent) run, whenever ``psutil`` is installed
(``pip install 'metalr[gpu]'``): one sampling thread per suite, never in the training loop.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from metalr.protocols import RecordedRun, RunStatus

_CHUNK = 1000  # MLflow's limit of metrics per log_batch call
_PARAMS_CHUNK = 100
_LOCK_TIMEOUT = 600.0  # seconds to wait for another process creating the store (minutes, at worst)


class MLflowOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tracking_uri: str | None = Field(
        None, description="unset: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    flush_seconds: float = Field(0.5, gt=0, description="how often queued metrics are sent")
    system_metrics: bool | None = Field(
        None, description="MLflow's system metrics (CPU, memory; GPU with nvidia-ml-py) on the "
        "suite's run; unset: on when psutil is installed")


def system_metrics_available() -> bool:
    """MLflow's monitor needs psutil (and, for GPUs, nvidia-ml-py, which it checks itself)."""
    return importlib.util.find_spec("psutil") is not None


def _system_monitor(run_id: str, tracking_uri: str) -> Any:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    return SystemMetricsMonitor(run_id, tracking_uri=tracking_uri)


class MLflowTracker:
    def __init__(self, tracking_uri: str | None = None, flush_seconds: float = 0.5,
                 system_metrics: bool | None = None):
        from mlflow.tracking import MlflowClient  # imported here: `metalr plugins` needn't pay

        if system_metrics and not system_metrics_available():
            raise ValueError("system_metrics needs psutil (and nvidia-ml-py for GPUs): "
                             "pip install 'metalr[gpu]', or leave system_metrics unset")
        self.system_metrics = (system_metrics_available() if system_metrics is None
                               else system_metrics)
        self._monitors: dict[str, Any] = {}

        self.uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
        with self._store_lock():  # a new store is created and migrated here, by one process
            self.client = MlflowClient(tracking_uri=self.uri)
            self.client.search_experiments(max_results=1)  # (by MLflow versions that wait)
        self.flush_seconds = flush_seconds
        self._pending: dict[str, list[Any]] = {}
        self._lock = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self._busy = False
        self._worker = threading.Thread(target=self._send_loop, name="metalr-mlflow", daemon=True)
        self._worker.start()

    def start_run(self, experiment: str, name: str, params: Mapping[str, Any],
                  parent: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        from mlflow.entities import Param

        exp_id = self._experiment_id(experiment)
        run_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent:
            run_tags["mlflow.parentRunId"] = parent
        run_id = self.client.create_run(exp_id, run_name=name, tags=run_tags).info.run_id
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), _PARAMS_CHUNK):
            self.client.log_batch(run_id, params=items[i : i + _PARAMS_CHUNK])
        if parent is None and self.system_metrics:
            self._monitors[run_id] = _system_monitor(run_id, self.uri)
            self._monitors[run_id].start()
        return run_id

    def _experiment_id(self, experiment: str) -> str:
        """The experiment's id, creating it if no process has yet."""
        from mlflow.exceptions import MlflowException

        with self._store_lock():
            exp = self.client.get_experiment_by_name(experiment)
            if exp is not None:
                return exp.experiment_id
            try:
                return self.client.create_experiment(
                    experiment, artifact_location=self._artifact_location(experiment))
            except MlflowException:  # created meanwhile, by a process the lock can't see
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                return exp.experiment_id

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        """Hold ``<db>.lock`` for a SQLite store; other stores (servers) serialise themselves."""
        db = self._sqlite_path()
        if db is None:
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
        try:
            yield
        finally:
            lock.release()

    def _sqlite_path(self) -> Path | None:
        if not self.uri.startswith("sqlite:///"):
            return None  # a server, or an in-memory database
        return Path(self.uri[len("sqlite:///"):].split("?", 1)[0]).resolve()

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
            raise RuntimeError(f"MLflow logging to {self.uri} failed: {error}") from error

    def _drain(self) -> None:
        with self._lock:
            self._lock.notify_all()
            while any(self._pending.values()) or self._busy:
                self._lock.wait(0.05)
                self._lock.notify_all()
            self._raise_worker_error()

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Params known only once the run has started (the LR probe's choice)."""
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def read_run(self, run_id: str) -> RecordedRun:
        """What the store holds for ``run_id`` (after :meth:`end_run`, every queued metric)."""
        run = self.client.get_run(run_id)
        metrics = {key: sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))
                   for key in run.data.metrics}
        artifacts, folders = [], [None]
        while folders:
            for item in self.client.list_artifacts(run_id, folders.pop()):
                (folders if item.is_dir else artifacts).append(item.path)
        tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
        return RecordedRun(run.info.run_name, run.info.status, dict(run.data.params), tags,
                           metrics, sorted(artifacts), run.data.tags.get("mlflow.parentRunId"))

    def end_run(self, run_id: str, status: RunStatus) -> None:
        monitor = self._monitors.pop(run_id, None)
        if monitor is not None:
            monitor.finish()
        try:
            self._drain()
        finally:
            self.client.set_terminated(run_id, status)

    def close(self) -> None:
        for run_id in list(self._monitors):
            self._monitors.pop(run_id).finish()
        self._drain()
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._worker.join()

    # -- resume and clean-up (metalr resume, metalr runs --clean) ----------------------------
    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which metric ``key`` has landed in the store (what a kill spared)."""
        self._drain()
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    def resume_run(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def running_runs(self) -> list[tuple[str, dict[str, str]]]:
        """``(run_id, tags)`` of every RUNNING run in the store."""
        from mlflow.entities import ViewType

        ids = [e.experiment_id for e in self.client.search_experiments(view_type=ViewType.ALL)]
        out, token = [], None
        while ids:
            page = self.client.search_runs(ids, "attributes.status = 'RUNNING'",
                                           run_view_type=ViewType.ALL, max_results=1000,
                                           page_token=token)
            out += [(r.info.run_id, dict(r.data.tags)) for r in page]
            token = page.token
            if not token:
                break
        return out
