"""How a run uses its device (metalr/engine/device.py): AMP against fp32, channels_last, settings,
syncs.

CPU autocast runs the same code path as CUDA autocast (bfloat16, and float16 with a
GradScaler), so the hypergradient under AMP is checked here on every machine; the same checks
on a GPU are in tests/test_gpu.py.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from metalr.contracts.protocols import ModelSpec, RunInfo
from metalr.engine.algorithm import Engine, EngineConfig
from metalr.engine.data import TensorClassificationTask
from metalr.engine.device import device_settings


class TinyImages(TensorClassificationTask):
    """Random 3x8x8 images with learnable labels: conv2d inputs without loading a data set."""

    spec = ModelSpec(input_shape=(3, 8, 8), num_outputs=10)

    def load(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(700, 3, 8, 8, generator=g)
        y = (x.flatten(1) @ torch.randn(192, 10, generator=g)).argmax(1)
        return (x[:600], y[:600]), (x[600:], y[600:])


@pytest.fixture(scope="module")
def digits():
    task = TinyImages(meta_size=200)
    task.setup(0, torch.device("cpu"))
    return task


def meta_step(registry, task, device="cpu", **config):
    """Two engine steps (the second with a momentum buffer) with a meta-update each."""
    torch.manual_seed(0)
    model = registry.get("model", "cnn-digits").build(task.spec, channels=[8, 16]).to(device)
    model.seen = set()  # the dtypes the first conv computed in
    model[0].register_forward_hook(lambda mod, args, out: model.seen.add(out.dtype))
    opt = registry.get("optimizer", "sgd").build(model.parameters(), momentum=0.9,
                                                 weight_decay=5e-4)
    policy = registry.get("lr_policy", "mlrsnet").build(gamma=0.2, cell="official")
    cfg = EngineConfig(epochs=1, batch_size=64, device=torch.device(device), **config)
    engine = Engine(task, model, opt, policy, cfg)
    policy.start(RunInfo(1, 10, opt, cfg.device, 0, task))
    data, meta = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    batches = iter(task.train_batches(64, data))
    grads, out = [], []
    for step in range(2):
        result = engine.step(next(batches), task.meta_batch(128, meta), step, 0)
        grads.append(torch.cat([p.grad.flatten() for p in policy.cells.parameters()]).cpu())
        out.append(result)
    weights = torch.cat([p.detach().flatten().cpu() for p in model.parameters()])
    return grads, out, weights, model


def close(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(cosine, norm ratio) of two hypergradients.

    theta's gradient is ``d meta_loss / d lr * d lr / d theta``: the second factor is the
    policy's, in fp32 either way, so AMP can only change the scalar first factor, which the norm
    ratio measures; the cosine checks that nothing else moved.
    """
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0)), float(a.norm() / b.norm())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_amp_meta_step_matches_fp32(registry, digits, dtype):
    ref_grads, ref, ref_w, _ = meta_step(registry, digits)
    grads, res, w, model = meta_step(registry, digits, amp=True, amp_dtype=dtype)
    assert model.seen == {getattr(torch, dtype)}  # the model really ran in low precision
    for g, r in zip(grads, ref_grads):
        cosine, ratio = close(g, r)
        print(f"{dtype}: hypergradient cosine {cosine:.5f}, norm ratio {ratio:.5f}")
        assert cosine > 0.99 and ratio == pytest.approx(1, abs=0.05)
    for a, b in zip(res, ref):
        assert a.lr == pytest.approx(b.lr, rel=1e-2)
        assert float(a.meta_loss) == pytest.approx(float(b.meta_loss), rel=2e-2)
        assert a.loss.dtype == torch.float32
    assert (w - ref_w).norm() / ref_w.norm() < 1e-2


def test_channels_last_gives_the_same_step(registry, digits):
    ref_grads, _, ref_w, _ = meta_step(registry, digits)
    grads, _, w, model = meta_step(registry, digits, channels_last=True)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-7)
    assert torch.allclose(w, ref_w, rtol=1e-5, atol=1e-7)


def test_device_settings_are_restored():
    before = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    with device_settings(torch.device("cpu"), deterministic=True):
        assert torch.are_deterministic_algorithms_enabled()
        import os
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()) == before


# -- the same on a GPU (`pytest -m gpu`) --------------------------------------------------------

@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a CUDA device; run them where there is one")
    return "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_amp_meta_step_matches_fp32_on_cuda(registry, cuda, dtype):
    task = TinyImages(meta_size=200)
    task.setup(0, torch.device(cuda))
    ref_grads, ref, ref_w, _ = meta_step(registry, task, cuda)
    grads, res, w, model = meta_step(registry, task, cuda, amp=True, amp_dtype=dtype,
                                     channels_last=True)
    assert model.seen == {getattr(torch, dtype)}
    for g, r in zip(grads, ref_grads):
        cosine, ratio = close(g, r)
        assert cosine > 0.99 and ratio == pytest.approx(1, abs=0.05)
    for a, b in zip(res, ref):
        assert a.lr == pytest.approx(b.lr, rel=1e-2)
        assert float(a.meta_loss) == pytest.approx(float(b.meta_loss), rel=2e-2)
    assert (w - ref_w).norm() / ref_w.norm() < 1e-2


@pytest.mark.gpu
def test_channels_last_on_cuda_gives_the_same_step(registry, cuda):
    task = TinyImages(meta_size=200)
    task.setup(0, torch.device(cuda))
    ref_grads, _, ref_w, _ = meta_step(registry, task, cuda)
    with device_settings(torch.device(cuda), deterministic=False):
        grads, _, w, model = meta_step(registry, task, cuda, channels_last=True)
    assert next(model.parameters()).is_contiguous(memory_format=torch.channels_last)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-3, atol=1e-6)
    assert torch.allclose(w, ref_w, rtol=1e-3, atol=1e-5)


def test_system_metrics_follow_psutil_and_a_gpu(monkeypatch):
    """MLflow's own monitor runs on the suite's run, by default only when its packages are
    there and a GPU is there to watch (on a CPU machine only when asked)."""
    import types

    import metalr_mlflow.tracker as mod
    import mlflow.tracking

    started, finished = [], []

    class FakeMonitor:
        def __init__(self, run_id, tracking_uri):
            self.run_id = run_id

        def start(self):
            started.append(self.run_id)

        def finish(self):
            finished.append(self.run_id)

    class FakeClient:  # a server store without a server: the tracker's calls, answered
        def __init__(self, tracking_uri=None):
            self.runs = 0

        def search_experiments(self, max_results=None):
            return []

        def get_experiment_by_name(self, name):
            return types.SimpleNamespace(experiment_id="1")

        def create_run(self, exp_id, run_name=None, tags=None):
            self.runs += 1
            return types.SimpleNamespace(info=types.SimpleNamespace(run_id=f"r{self.runs}"))

        def log_batch(self, *args, **kwargs): ...

        def set_terminated(self, run_id, status): ...

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", FakeClient)
    monkeypatch.setattr(mod, "_system_monitor", FakeMonitor)
    monkeypatch.setattr(mod, "system_metrics_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = mod.MLflowTracker(tracking_uri="http://store.invalid")
    assert cpu.system_metrics is False
    cpu.close()
    assert mod.MLflowTracker(tracking_uri="http://store.invalid",
                             system_metrics=True).system_metrics is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    tracker = mod.MLflowTracker(tracking_uri="http://store.invalid")
    parent = tracker.start_run("e", "suite", {})
    child = tracker.start_run("e", "job", {}, parent=parent)
    tracker.end_run(child, "FINISHED")
    tracker.end_run(parent, "FINISHED")
    tracker.close()
    assert started == finished == [parent]
    monkeypatch.setattr(mod, "system_metrics_available", lambda: False)
    with pytest.raises(ValueError, match="psutil"):
        mod.MLflowTracker(tracking_uri="http://store.invalid", system_metrics=True)
    quiet = mod.MLflowTracker(tracking_uri="http://store.invalid")
    assert quiet.system_metrics is False
    quiet.close()


def host_reads(monkeypatch, registry, batch_size: int, policy: str,
               **options) -> tuple[int, int]:
    """(Tensor -> Python reads: item, float, bool, tolist; steps) of a 2-epoch run, no eval."""
    count = [0]
    for name in ("item", "__float__", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            count[0] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    task = registry.get("task", "mnist1d").build(meta_size=100, num_samples=600)
    task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    model = registry.get("model", "mlp").build(task.spec, hidden=[16])
    opt = registry.get("optimizer", "sgd").build(model.parameters(), momentum=0.9)
    engine = Engine(task, model, opt, registry.get("lr_policy", policy).build(**options),
                    EngineConfig(epochs=2, batch_size=batch_size, eval_splits=(), t_val=1000))
    count[0] = 0
    engine.fit()
    monkeypatch.undo()
    return count[0], 2 * task.num_train_batches(batch_size)


def test_the_engine_reads_the_device_once_an_epoch_not_once_a_step(monkeypatch, registry):
    """Twice the steps, the same reads: the losses stay on the device until the epoch ends. A
    loss-driven policy adds exactly one read per step, its LR (docs/design.md, CUDA)."""
    (few, steps), (same, more_steps) = (host_reads(monkeypatch, registry, b, "fixed", lr=0.1)
                                        for b in (64, 32))
    assert more_steps == 2 * steps and few == same <= 4  # per epoch: the losses, once
    (reads, _), (more_reads, _) = (host_reads(monkeypatch, registry, b, "mlrsnet", gamma=0.1)
                                   for b in (64, 32))
    assert more_reads - reads == more_steps - steps  # one per step (the LR), nothing else


def test_a_run_records_the_device_it_used_and_runs_under_amp(tmp_path):
    """`device: auto` is logged as the device resolved (`cpu` here, `cuda:0` on a GPU)."""
    import types

    from metalr import hookimpl
    from metalr.contracts.registry import Registry
    from metalr.recipes.schema import Recipe
    from metalr.running.runner import Runner

    params: list[dict] = []

    class Recorder:
        def start_run(self, experiment, name, run_params, parent=None, tags=None):
            params.append({**run_params, "tags": tags})
            return f"run{len(params)}"

        def log_metrics(self, run_id, metrics, step): ...

        def log_artifact(self, run_id, path, artifact_path=None): ...

        def end_run(self, run_id, status): ...

        def close(self): ...

    @hookimpl
    def register_trackers(register):
        register("recorder", Recorder)

    registry = Registry(strict=False).load_entry_points()
    registry.add_plugin(types.SimpleNamespace(register_trackers=register_trackers), "tests")
    recipe = Recipe.model_validate({
        "name": "amp", "output_dir": str(tmp_path), "tracking": "recorder",
        "task": {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "train": {"epochs": 1, "batch_size": 64, "device": "auto", "amp": True,
                  "deterministic": True},
        "methods": {"m": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                          "lr_policy": {"name": "mlrsnet", "options": {"gamma": 0.1}}}}})
    summary = Runner(recipe, registry=registry, progress=False).run()
    assert summary.ok
    device = params[0]["tags"]["metalr.device"]
    assert params[0]["train.device"] == device != "auto"
    assert params[0]["train.amp"] is True and not torch.are_deterministic_algorithms_enabled()


# ------------------------------------------------------------------- freed memory kept on the CPU

_RESIDENT_AFTER_FREE = """
import sys, torch
from metalr.engine.device import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def resident():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
before = resident()
x = torch.ones(4 << 20)  # 16 MiB, written
del x
print(kept, (resident() - before) // 1024)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt")
def test_keep_freed_memory_keeps_what_a_tensor_freed_for_the_next_one():
    """glibc by default maps a 16 MiB tensor on its own and unmaps it when freed (the next step
    faults it in again); kept, the freed pages stay in the process for reuse."""
    def run(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _RESIDENT_AFTER_FREE, mode], check=True,
                             capture_output=True, text=True).stdout.split()
        return out[0], int(out[1])

    kept, kept_mib = run("keep")
    default, default_mib = run("default")
    assert (kept, default) == ("True", "False")
    assert kept_mib >= 12  # MiB still resident after the free
    assert default_mib <= 2
