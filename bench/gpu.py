"""Meta-training throughput against plain training for ResNet-18 on CIFAR-shaped data, with and
without mixed precision: the ratios a GPU run of the paper's tables depends on.

    python bench/gpu.py                          # one GPU, about 1-2 minutes (< 5 with margin)
    python bench/gpu.py --device cpu --steps small   # smoke test: prints the same lines

Data: synthetic 3x32x32 images in 10 classes held on the device (50,000 = 49,000 train + the
paper's 1,000 meta images), so the numbers measure the engine, not a data loader. Model:
torchvision's ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool). SGD momentum 0.9,
weight decay 5e-4, batch 128. For each precision (fp32; AMP bf16 with channels_last) and each of
``--repeats`` rounds, one epoch each, alternated so drift hits all alike:

- ``loop``: plain training written by hand (the floor);
- ``plain``: the engine with a fixed LR;
- ``meta``: the engine meta-training MLR-SNet, meta-updates twice per epoch (the paper's T_val).

Printed: steps/s (median over rounds), meta/plain and meta/loop, AMP over fp32, the cost of one
meta-update in plain steps, and on CUDA the peak of ``torch.cuda.max_memory_allocated`` above
the data for meta and plain training (bench/memory.py: meta/plain <= 1.5).
**Target: meta/plain >= 0.95** with meta-updates twice per epoch
(each meta-update costs a few plain steps; ~2 per ~390-step epoch is ~2%; the rest is what the
engine adds per step: MLR-SNet's LR of step t needs that step's loss on the host, one scalar
copy per step, which is inherent to a loss-driven schedule).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from metalr.contracts.protocols import ModelSpec
from metalr.contracts.registry import get_registry
from metalr.engine.algorithm import Engine, EngineConfig
from metalr.engine.data import TensorClassificationTask
from metalr.engine.device import Precision, channels_last, device_settings

PRESETS = {  # train images, meta images, image side, batch size, rounds
    "full": {"train": 49_000, "meta": 1000, "side": 32, "batch": 128, "repeats": 3},
    "small": {"train": 4, "meta": 4, "side": 8, "batch": 4, "repeats": 1},  # smoke: 1 step of 8x8
}
TARGET = 0.95


class SyntheticCIFAR(TensorClassificationTask):
    """CIFAR-shaped random images; labels learnable from a fixed random projection."""

    def __init__(self, train: int, meta: int = 1000, side: int = 32):
        super().__init__(meta_size=meta)
        self.train_size, self.side = train, side
        self.spec = ModelSpec(input_shape=(3, side, side), num_outputs=10)

    def load(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.train_size + self.meta_size + 16, 3, self.side, self.side, generator=g)
        y = (x.flatten(1) @ torch.randn(x[0].numel(), 10, generator=g)).argmax(1)
        return (x[16:], y[16:]), (x[:16], y[:16])


def resnet18_cifar() -> nn.Module:
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine(task, device, policy, amp: bool, batch: int) -> tuple[float, int | None]:
    """Steps per second of one engine epoch, and on CUDA its peak allocated bytes above the data
    (``max_memory_allocated``: weights, gradients, optimizer state, activations, meta-update)."""
    gc.collect()  # the previous run's graph, if a cycle holds it
    sync(device)
    cuda = device.type == "cuda"
    base = torch.cuda.memory_allocated(device) if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = resnet18_cifar().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    steps = task.num_train_batches(batch)
    cfg = EngineConfig(epochs=1, batch_size=batch, device=device, t_val=max(1, steps // 2),
                       eval_splits=(), amp=amp, channels_last=amp)
    engine = Engine(task, model, opt, policy, cfg)
    sync(device)
    start = time.perf_counter()
    engine.fit()
    sync(device)
    rate = steps / (time.perf_counter() - start)
    return rate, (torch.cuda.max_memory_allocated(device) - base) if cuda else None


def run_loop(task, device, amp: bool, batch: int) -> float:
    """Steps per second of one epoch of plain training written by hand."""
    torch.manual_seed(0)
    model = resnet18_cifar().to(device)
    precision = Precision(device, amp)
    if amp:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = task.splits["train"]
    order = torch.randperm(len(y)).to(device)
    sync(device)
    start = time.perf_counter()
    steps = 0
    for idx in order.split(batch):
        xb = channels_last(x[idx]) if amp else x[idx]
        opt.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = F.cross_entropy(model(xb), y[idx])
        precision.backward(loss, opt)
        precision.step(opt)
        steps += 1
    sync(device)
    return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", choices=sorted(PRESETS), default="full",
                        help="full: one CIFAR epoch per measurement; small: a CPU smoke test")
    parser.add_argument("--repeats", type=int, help="rounds (default: 3 full, 1 small)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.steps]
    batch, repeats = preset["batch"], args.repeats or preset["repeats"]
    device = torch.device(args.device)
    registry = get_registry()
    task = SyntheticCIFAR(preset["train"], preset["meta"], preset["side"])
    task.setup(0, device)
    steps = task.num_train_batches(batch)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, ResNet-18 (CIFAR stem), "
          f"{preset['side']}x{preset['side']} images, batch {batch}, "
          f"{steps} steps/epoch, meta-updates every {max(1, steps // 2)} steps, {repeats} rounds")
    rates: dict[str, float] = {}
    with device_settings(device):  # cuDNN autotuning on CUDA, as a run gets it
        for amp in (False, True):
            label = "amp-bf16+channels_last" if amp else "fp32"
            if device.type == "cuda":  # warm-up: cuDNN autotuning and allocator
                run_loop(task, device, amp, batch)
            samples: dict[str, list[float]] = {"loop": [], "plain": [], "meta": []}
            peaks: dict[str, list[int]] = {"plain": [], "meta": []}
            for _ in range(repeats):
                samples["loop"].append(run_loop(task, device, amp, batch))
                for key, policy in (
                        ("plain", registry.get("lr_policy", "fixed").build(lr=0.1)),
                        ("meta", registry.get("lr_policy", "mlrsnet").build(preset="paper",
                                                                             gamma=0.2))):
                    rate, peak = run_engine(task, device, policy, amp, batch)
                    samples[key].append(rate)
                    if peak is not None:
                        peaks[key].append(peak)
            r = {k: statistics.median(v) for k, v in samples.items()}
            rates |= {f"{label}/{k}": v for k, v in r.items()}
            print(f"{label}: steps/s loop {r['loop']:.2f}, plain {r['plain']:.2f}, "
                  f"meta {r['meta']:.2f}")
            ratio = r["meta"] / r["plain"]
            rates[f"{label}/ratio"] = ratio
            # per epoch: meta time = plain time + 2 meta-updates -> one update in plain steps
            update = (steps / r["meta"] - steps / r["plain"]) * r["plain"] / 2
            print(f"{label}: ratio meta/plain {ratio:.3f}, meta/loop {r['meta'] / r['loop']:.3f}, "
                  f"plain/loop {r['plain'] / r['loop']:.3f}, one meta-update = {update:.1f} plain "
                  f"steps; target meta/plain >= {TARGET}: {'met' if ratio >= TARGET else 'NOT met'}")
            if peaks["plain"]:  # the largest over rounds: a peak that grows shows here
                p = {k: max(v) for k, v in peaks.items()}
                rates |= {f"{label}/peak_{k}": float(v) for k, v in p.items()}
                rates[f"{label}/peak_ratio"] = p["meta"] / p["plain"]
                print(f"{label}: peak memory (max_memory_allocated above the data) plain "
                      f"{p['plain'] / 2**20:.0f} MiB, meta {p['meta'] / 2**20:.0f} MiB, ratio "
                      f"meta/plain {p['meta'] / p['plain']:.3f} (bench/memory.py: target <= 1.5)")
            else:
                print(f"{label}: peak memory: CUDA only (bench/memory.py measures it on CPU)")
    print(f"ratio amp/fp32 plain {rates['amp-bf16+channels_last/plain'] / rates['fp32/plain']:.2f}, "
          f"meta {rates['amp-bf16+channels_last/meta'] / rates['fp32/meta']:.2f}")
    return rates


if __name__ == "__main__":
    main()
