"""Peak memory of meta-training against plain training, and whether it grows with the run.

    python bench/memory.py [--steps 28] [--device cpu|cuda] [--models cnn128 mlp1500] [--jobs 1]
                           [--unroll 2 5 20]

For each model, plain training (fixed LR) and meta-training (MLR-SNet, the paper's preset with a
fixed gamma so that no LR probe runs, ``t_val=1``: a meta-update every step) run for N and for
4N steps, each in a fresh process so that no peak leaks from one measurement into the next.
A step is ``Engine.step`` as ``Engine.fit`` calls it (SGD momentum 0.9, weight decay 5e-4,
batch and meta batch 128), without the evaluation, whose large batches would set the peak.

Printed per measurement: the peak bytes training held above a baseline. Then per model the
ratios, each against its target: ``meta/plain`` (<= 1.5) at N and at 4N, and ``peak(4N)/peak(N)``
(<= 1.05) for meta-training (plain training's is printed for comparison). A ratio above 1.05
there means something of each meta-update outlives it. ``--unroll K ...`` adds meta-training with
the ``unroll`` meta-objective (K steps ahead) at N steps: its peak and time against plain
training and against the one-step objective (issue 19: memory bounded by K, measured).

What is measured. The baseline is taken after imports, data, and a warm-up (a few steps of a
throw-away copy of the same configuration, then freed), so that the libraries' one-time set-up
(thread pools, kernel caches) is not counted; the measured model, its optimizer and the policy
are built after it. The peak therefore holds everything training needs: weights, gradients,
momentum buffers, activations, and for meta-training the virtual step's weights and state, as
CUDA's allocator counter does.

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the baseline,
  minus ``memory_allocated`` there (the data on the device is not counted). Exact, in bytes of
  tensors; the caching allocator's reserve is not counted.
- CPU: there is no allocator counter, so the kernel's: writing ``5`` to /proc/self/clear_refs
  resets the process's peak resident set (VmHWM) to the current one (VmRSS, the baseline);
  VmHWM at the end minus that baseline is the peak. The child runs with glibc's mmap threshold
  fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so that every tensor above it is its own mapping,
  returned to the kernel when freed: resident memory then follows live tensors (to the page)
  instead of what glibc keeps for reuse, and the warm-up's freed memory is not in the baseline.
  Limits: Linux only; it counts every byte of the process (Python objects, graph nodes, small
  allocations kept by glibc), the kernel updates the counter in batches (tens of KiB), and
  memory other libraries map lazily after the warm-up counts too. Good to about a MiB, which is
  why the models here hold tens of MiB.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import os
import re
import subprocess
import sys
import time

SEED = 0
BATCH = 128
PAPER = {"preset": "paper", "gamma": 0.5}  # fixed gamma: no probe; t_val set by the bench
MODELS = {  # name: (model, options, MNIST-1D options)
    "cnn128": ("cnn1d", {"channels": 128}, {}),  # 3 conv layers x 128 channels, 0.2 M parameters
    "mlp1500": ("mlp", {"hidden": [1500, 1500]}, {}),  # 40-1500-1500-10, 2.3 M parameters
    # a quick check (the test): 0.27 M parameters and a smaller data set to generate
    "mlp500": ("mlp", {"hidden": [500, 500]}, {"num_samples": 1000, "meta_size": 200}),
}
TARGETS = {"meta/plain": 1.5, "4N/N": 1.05}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _train(reg, task, model_name, model_opts, meta: bool, steps: int, device,
           unroll: int = 1) -> None:
    """``steps`` steps as Engine.fit makes them, a meta-update every step when ``meta`` (with
    the ``unroll`` objective ``unroll`` steps ahead when above 1)."""
    import torch

    from metalr.contracts.protocols import RunInfo
    from metalr.engine.algorithm import Engine, EngineConfig

    torch.manual_seed(SEED)
    model = reg.get("model", model_name).build(task.spec, **model_opts).to(device)
    opt = reg.get("optimizer", "sgd").build(model.parameters(), momentum=0.9, weight_decay=5e-4)
    policy = (reg.get("lr_policy", "mlrsnet").build(**PAPER) if meta
              else reg.get("lr_policy", "fixed").build(lr=0.1))
    cfg = EngineConfig(epochs=1, batch_size=BATCH, seed=SEED, device=device, t_val=1,
                       meta_batch_size=BATCH, eval_splits=())
    objective = (reg.get("meta_objective", "unroll").build(k=unroll) if unroll > 1 else None)
    engine = Engine(task, model, opt, policy, cfg, objective)
    per_epoch = task.num_train_batches(BATCH)
    policy.start(RunInfo(-(-steps // per_epoch), per_epoch, opt, device, SEED, task))
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    step = 0
    while step < steps:
        for batch in task.train_batches(BATCH, generator):
            meta_batch = task.meta_batch(BATCH, engine.meta_generator) if meta else None
            engine.step(batch, meta_batch, step, step // per_epoch)
            step += 1
            if step == steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_key: str, meta: bool, steps: int, device_name: str, threads: int,
            unroll: int = 1) -> dict:
    """One measurement, in this process: meant to run in a fresh one (see the module docstring)."""
    import torch

    from metalr.contracts.registry import get_registry

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    model_name, model_opts, task_opts = MODELS[model_key]
    reg = get_registry()
    task = reg.get("task", "mnist1d").build(**task_opts)
    task.setup(SEED, device)
    _train(reg, task, model_name, model_opts, meta, 2, device, unroll)  # warm-up, freed below
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        base = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    _train(reg, task, model_name, model_opts, meta, steps, device, unroll)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = _status_kib("VmHWM") * 1024 - base
    return {"peak": peak, "baseline": base, "seconds": seconds}


def _run_child(model_key: str, meta: bool, steps: int, device: str, threads: int,
               unroll: int = 1) -> dict:
    """:func:`measure` in a fresh interpreter with this one's import path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
               MALLOC_MMAP_THRESHOLD_="65536")
    arg = json.dumps({"model_key": model_key, "meta": meta, "steps": steps,
                      "device_name": device, "threads": threads, "unroll": unroll})
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", arg], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {arg} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio <= target else "FAIL"


def main(argv: list[str] | None = None) -> dict[str, float]:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=28,
                        help="N: the short run's steps (28 = one MNIST-1D epoch); the long one 4N")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS),
                        default=["cnn128", "mlp1500"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads in every measurement")
    parser.add_argument("--jobs", type=int, default=1,
                        help="measurements at once (each is its own process; peaks do not mix)")
    parser.add_argument("--unroll", nargs="*", type=int, default=[], metavar="K",
                        help="also meta-train with the unroll objective K steps ahead (at N)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))))
        return {}
    n = args.steps
    print(f"device {args.device}, torch {torch.__version__}, {args.threads} threads, "
          f"N = {n} steps, meta-update every step; peak bytes above the baseline "
          f"({'max_memory_allocated' if args.device.startswith('cuda') else 'VmHWM - VmRSS'})")
    # (model, mode, label, steps, unroll k: 1 is the one-step objective)
    runs = [(key, mode, label, steps, 1) for key in args.models
            for label, steps in (("N", n), ("4N", 4 * n)) for mode in ("plain", "meta")]
    runs += [(key, f"unroll{k}", "N", n, k) for key in args.models for k in args.unroll]
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda r: _run_child(r[0], r[1] != "plain", r[3], args.device,
                                                     args.threads, r[4]), runs))
    seconds = {f"{key}/{mode}/{label}": r["seconds"] for (key, mode, label, *_), r
               in zip(runs, results)}
    out: dict[str, float] = {}
    for (key, mode, label, steps, _), r in zip(runs, results):
        out[f"{key}/{mode}/{label}"] = r["peak"]
        print(f"{key:8} {mode:8} {label:2} ({steps:4} steps): peak {r['peak']:>13,d} B "
              f"= {r['peak'] / 2**20:8.1f} MiB  ({r['seconds']:.1f} s)")
    for key in args.models:
        parts = []
        for label in ("N", "4N"):
            ratio = out[f"{key}/meta/{label}"] / out[f"{key}/plain/{label}"]
            out[f"{key}/meta/plain@{label}"] = ratio
            parts.append(f"meta/plain@{label} {ratio:.3f} "
                         f"(<= {TARGETS['meta/plain']}: {_verdict(ratio, TARGETS['meta/plain'])})")
        for mode in ("meta", "plain"):
            ratio = out[f"{key}/{mode}/4N"] / out[f"{key}/{mode}/N"]
            out[f"{key}/{mode}/4N/N"] = ratio
            parts.append(f"{mode} 4N/N {ratio:.3f}" + (
                f" (<= {TARGETS['4N/N']}: {_verdict(ratio, TARGETS['4N/N'])})" if mode == "meta"
                else ""))
        print(f"{key}: " + ", ".join(parts))
        for k in args.unroll:
            at = f"{key}/unroll{k}/N"
            out[f"{at}/plain"] = out[at] / out[f"{key}/plain/N"]
            out[f"{at}/one-step"] = out[at] / out[f"{key}/meta/N"]
            print(f"{key}: unroll k={k}: peak/plain {out[f'{at}/plain']:.3f}, peak/one-step "
                  f"{out[f'{at}/one-step']:.3f}, time/one-step "
                  f"{seconds[at] / seconds[f'{key}/meta/N']:.2f} (info)")
    return out


if __name__ == "__main__":
    main()
