"""An MLflow tracker that keeps logging off the training loop's critical path.

Metrics are queued and sent with ``log_batch(synchronous=False)`` in chunks (MLflow's own
asynchronous logging); a run is only marked terminated after its queued metrics have landed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from metalr.protocols import RunStatus

_CHUNK = 1000  # MLflow's limit of metrics per log_batch call
_PARAMS_CHUNK = 100


class MLflowOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tracking_uri: str | None = Field(
        None, description="unset: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )


class MLflowTracker:
    def __init__(self, tracking_uri: str | None = None):
        import mlflow  # imported here: `metalr plugins` should not pay for it
        from mlflow.tracking import MlflowClient

        self._mlflow = mlflow
        self.uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
        self.client = MlflowClient(tracking_uri=self.uri)
        self._pending: dict[str, list[Any]] = {}
        self._ops: dict[str, list[Any]] = {}

    def start_run(self, experiment: str, name: str, params: Mapping[str, Any],
                  parent: str | None = None) -> str:
        from mlflow.entities import Param

        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        tags = {"mlflow.parentRunId": parent} if parent else {}
        run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), _PARAMS_CHUNK):
            self.client.log_batch(run_id, params=items[i : i + _PARAMS_CHUNK])
        return run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        pending = self._pending.setdefault(run_id, [])
        pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if len(pending) >= _CHUNK:
            self._flush(run_id)

    def _flush(self, run_id: str) -> None:
        pending = self._pending.pop(run_id, [])
        for i in range(0, len(pending), _CHUNK):
            op = self.client.log_batch(run_id, metrics=pending[i : i + _CHUNK], synchronous=False)
            if op is not None:
                self._ops.setdefault(run_id, []).append(op)

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def end_run(self, run_id: str, status: RunStatus) -> None:
        self._flush(run_id)
        for op in self._ops.pop(run_id, []):
            op.wait()
        self.client.set_terminated(run_id, status)

    def close(self) -> None:
        for run_id in list(self._pending):
            self._flush(run_id)
        for run_id in list(self._ops):
            for op in self._ops.pop(run_id):
                op.wait()
