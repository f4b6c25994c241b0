from __future__ import annotations

import pytest

from metalr.plugins import get_registry


@pytest.fixture(scope="session")
def registry():
    """The registry as a user gets it: filled from the installed distributions' entry points."""
    return get_registry()


@pytest.fixture
def float64():
    """Double precision for the test, for checks against finite differences and torch.func."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def mnist1d_64(registry):
    """A small MNIST-1D task whose splits are float64 (hypergradient checks)."""
    import torch

    task = registry.get("task", "mnist1d").build(meta_size=100, num_samples=600)
    task.setup(seed=3, device=torch.device("cpu"))
    task.splits = {k: (x.double(), y) for k, (x, y) in task.splits.items()}
    return task


@pytest.fixture
def where(tmp_path, monkeypatch):
    """A sweep's place: cwd and a SQLite MLflow store in tmp_path, and a client made when needed
    (a new store takes seconds)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tmp_path, lambda: MlflowClient(uri)
