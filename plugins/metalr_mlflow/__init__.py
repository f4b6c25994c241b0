"""MLflow tracking: runs, batched asynchronous metrics, artifacts; and the store read back
without a run (`metalr report`, `metalr runs`, ``runs:/`` nets) through the factory's
:class:`metalr.contracts.protocols.TrackerStore` side."""

from metalr import hookimpl

from .tracker import MLflowOptions, MLflowTracker


@hookimpl
def register_trackers(register):
    register("mlflow", MLflowTracker, options=MLflowOptions,
             summary="MLflow; MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
