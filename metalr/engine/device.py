"""How a run uses its device: mixed precision, memory format, cuDNN autotuning, determinism.

- **AMP** (``train.amp``): the model's forward passes run under ``torch.autocast`` -- the
  training batch, and the meta batch at the virtual weights -- while everything a hypergradient
  flows through outside the model stays in fp32: the policy's net, the LR, and the virtual
  optimizer step (weights, momentum and the batch gradient are fp32 tensors). bfloat16 (the
  default) needs no loss scaling and adds no host sync; float16 uses a ``GradScaler`` for the
  base step (whose overflow check is one host sync per step: torch's), and the meta loss is
  scaled by the same factor, its gradient with respect to the LR unscaled and a non-finite one
  skipped (the engine chains that scalar into theta's gradient).
- **channels_last** (``train.channels_last``): the model's 4D weights and every 4D input batch
  in NHWC order, which tensor cores and cuDNN prefer for convnets.
- **cuDNN autotuning** on CUDA, unless ``train.deterministic``, which instead asks torch for
  deterministic algorithms everywhere (and sets ``CUBLAS_WORKSPACE_CONFIG``, which cuBLAS needs
  for them). Both are process-wide, so :func:`device_settings` restores them afterwards.
- **Freed memory kept for reuse on the CPU** (``train.keep_freed_memory``, on by default): see
  :func:`keep_freed_memory`.
- **Random draws set aside** (:func:`rng_aside`): what is not the run's own training (the LR
  probe, a meta-update's forward passes, building the policy) draws from a fork of torch's
  global generators, so a method's dropout masks do not depend on what its policy does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import nn

AmpDtype = Literal["bfloat16", "float16"]
CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"


class Precision:
    """Autocast and loss scaling for one engine (disabled: plain fp32, the same ops as without)."""

    def __init__(self, device: torch.device, enabled: bool = False, dtype: AmpDtype = "bfloat16"):
        self.device_type = torch.device(device).type
        self.enabled = bool(enabled)
        self.dtype = getattr(torch, dtype)
        self.scaler = torch.amp.GradScaler(
            self.device_type, enabled=self.enabled and self.dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``loss.backward()``, scaled under float16 and unscaled again: ``.grad`` is g_t."""
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The real optimizer step (skipped by the scaler when g_t overflowed in float16)."""
        self.scaler.step(optimizer)
        self.scaler.update()

    def lr_grad(self, meta_loss: torch.Tensor, lr: torch.Tensor,
                reduce: Callable[[torch.Tensor], torch.Tensor] = lambda g: g,
                ) -> torch.Tensor | None:
        """d meta_loss / d lr for the LR leaf of the virtual step, passed through ``reduce``
        (the mean over ranks under torchrun); ``None`` when float16 overflowed on any rank
        (then every rank skips this meta-update: the reduced value is non-finite everywhere).

        The engine chains it into theta's gradient (``autograd.grad(lr_t, theta, g)``); that
        part runs outside autocast in fp32, so the loss scale only concerns this scalar.
        """
        if not self.scaler.is_enabled():
            return reduce(torch.autograd.grad(meta_loss, lr)[0])
        scale = self.scaler.get_scale()  # one host sync, once per meta-update
        grad = reduce(torch.autograd.grad(meta_loss * scale, lr)[0] / scale)
        return grad if bool(torch.isfinite(grad)) else None


def channels_last(batch: Any) -> Any:
    """A batch whose 4D tensors are in channels_last order (others unchanged)."""
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(channels_last(b) for b in batch)
    return batch


@contextlib.contextmanager
def rng_aside(model: nn.Module, seed: int | None = None) -> Iterator[None]:
    """Run the block on a fork of torch's global generators (the CPU's and those of the CUDA
    devices ``model`` lives on), seeded with ``seed`` if given; given back as they were.

    Why: dropout draws from the global generator, so anything else that draws from it moves the
    run's masks. Without this, MLR-SNet's own initialisation and its meta-updates' forward
    passes (dropout on, as in the paper) shifted the training run's masks, and on a dropout model
    the learned schedule and its control (same seed, same data) were not a paired comparison:
    on the pydoc LM that alone moved single seeds by up to 18 perplexity (docs/design.md, "One
    stream of dropout draws for a seed").
    """
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        if seed is not None:  # only the generators given back: no device's stream moves
            torch.random.default_generator.manual_seed(seed)
            for index in devices:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
        yield


@contextlib.contextmanager
def device_settings(device: torch.device, deterministic: bool = False) -> Iterator[None]:
    """cuDNN autotuning on CUDA, or deterministic algorithms; restored on exit."""
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              torch.are_deterministic_algorithms_enabled(), os.environ.get(CUBLAS_ENV))
    try:
        if deterministic:
            os.environ.setdefault(CUBLAS_ENV, ":4096:8")  # read when cuBLAS starts
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        elif torch.device(device).type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[:2]
        torch.use_deterministic_algorithms(before[2])
        if before[3] is None:
            os.environ.pop(CUBLAS_ENV, None)
        else:
            os.environ[CUBLAS_ENV] = before[3]


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEEP = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 256 << 20, _M_TOP_PAD: 64 << 20}


def keep_freed_memory() -> bool:
    """Let glibc keep the memory that CPU tensors free, for the next step to reuse.

    Why: by default glibc gives every allocation above its mmap threshold (128 KiB, adapting up
    to 32 MiB) its own mapping and returns heap tops above 128 KiB to the kernel, so a step's
    activations and gradients are mapped, page-faulted in and unmapped again on every step.
    A meta-update allocates and frees a second forward/backward's worth, so it pays twice.
    Measured on the 2-core CPU machine (``bench/overhead.py``): the 128-channel 1D CNN's plain
    step 25.4 -> 23.2 ms, its meta-update step 54.4 -> 48.9 ms; the 2.3 M-parameter MLP's
    meta-update step 83 -> 61 ms. Tensors above 32 MiB still get their own mapping, and at
    most 256 MiB of free heap top is kept.

    Process-wide and one-way (glibc cannot report the settings it had), so only the runner
    calls it, for runs on the CPU. Returns False where there is no glibc (macOS, musl,
    Windows): nothing is changed there.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return all(mallopt(param, value) == 1 for param, value in _KEEP.items())
