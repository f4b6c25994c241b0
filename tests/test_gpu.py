"""CUDA checks: run with `tox -e gpu` (or `pytest -m gpu`) on a machine with a GPU."""

from __future__ import annotations

import pytest
import torch

from metalr.engine.algorithm import Engine, EngineConfig

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device; run them where there is one")
    return torch.device("cuda")


@pytest.mark.parametrize("opt_name,opt_options", [("sgd", {"momentum": 0.9}), ("adam", {})])
def test_meta_training_on_cuda_matches_cpu(registry, cuda, opt_name, opt_options):
    """The same run on CPU and GPU gives close LRs: no CPU-only or CUDA-only path."""
    lrs = {}
    for device in (torch.device("cpu"), cuda):
        task = registry.get("task", "mnist1d").build(meta_size=100, num_samples=600)
        task.setup(0, device)
        torch.manual_seed(0)
        model = registry.get("model", "mlp").build(task.spec, hidden=[32]).to(device)
        opt = registry.get("optimizer", opt_name).build(model.parameters(), **opt_options)
        policy = registry.get("lr_policy", "mlrsnet").build(gamma=0.1 if opt_name == "sgd" else 0.01)
        history = Engine(task, model, opt, policy,
                         EngineConfig(epochs=2, batch_size=64, t_val=3, device=device)).fit()
        lrs[device.type] = history.lrs
    assert lrs["cpu"] == pytest.approx(lrs["cuda"], rel=1e-3)


def test_a_cuda_run_is_tagged_with_the_gpu_it_used(cuda, tmp_path):
    """Tags and params say which GPU, CUDA and cuDNN ran it, never `device: auto`."""
    from mlflow.tracking import MlflowClient

    from metalr.recipes.schema import Recipe
    from metalr.running.runner import Runner

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = Recipe.model_validate({
        "name": "gpu-tags", "output_dir": str(tmp_path / "out"),
        "task": {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "train": {"epochs": 1, "batch_size": 64, "device": "auto", "amp": True},
        "methods": {"m": {"optimizer": {"name": "sgd"},
                          "lr_policy": {"name": "mlrsnet", "options": {"gamma": 0.1}}}},
        "tracking": {"name": "mlflow", "options": {"tracking_uri": uri}}})
    summary = Runner(recipe, progress=False).run()
    assert summary.ok
    run = MlflowClient(uri).get_run(summary.run_id)
    tags, params = run.data.tags, run.data.params
    assert tags["metalr.device"] == f"cuda:{torch.cuda.current_device()}"
    assert params["train.device"] == tags["metalr.device"]
    assert tags["metalr.gpu"] == torch.cuda.get_device_name()
    assert tags["metalr.cuda_version"] == str(torch.version.cuda)
    assert tags["metalr.cudnn_version"] == str(torch.backends.cudnn.version())
