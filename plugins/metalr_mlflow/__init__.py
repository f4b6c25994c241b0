"""MLflow tracking: runs, batched asynchronous metrics, artifacts."""

from metalr import hookimpl

from .tracker import MLflowOptions, MLflowTracker


@hookimpl
def register_trackers(register):
    register("mlflow", MLflowTracker, options=MLflowOptions,
             summary="MLflow; MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
