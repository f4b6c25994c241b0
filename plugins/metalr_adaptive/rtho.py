"""RTHO (Franceschi et al. 2017) for the LR: forward-mode hypergradients in real time.

The tangent ``Z_t = dw_t/d eta`` is carried forward through the real SGD dynamics (one
Hessian-vector product per step) and the LR takes a hyper-step
``eta <- max(0, eta - beta * <grad E_val(w_t), Z_t>)``. With heavy-ball or Nesterov momentum the
dynamics have two state vectors, so two tangents are tracked (``dw/d eta`` and
``dbuf/d eta``); the variant follows the base optimizer (``momentum > 0``), because a tangent
that ignored the buffer would differentiate a different trajectory. Weight decay and dampening
are part of the dynamics too. The tangent is never reset, as in the paper's real-time version.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from metalr.contracts.protocols import RunInfo, StepContext
from metalr.engine.run_state import SavedAttributes

from .directions import UnsupportedOptimizerError, dot, optimizer_kind, optimizer_slots


class MissingMetaSplitError(RuntimeError):
    """The rule needs validation gradients and the run provides none."""


class RTHOOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(0.1, gt=0, description="initial LR eta_0")
    hyper_lr: float = Field(
        1e-5, ge=0, description="hyper-step size beta (no paper default for this setting; tune "
        "on a log grid); 0 keeps the LR fixed and only tracks the hypergradient",
    )
    max_lr: float | None = Field(None, gt=0, description="optional cap on the LR")
    update_every: int = Field(
        1, ge=1, description="steps between hyper-steps (each costs one meta-batch gradient)"
    )


def hessian_vector_product(
    loss_fn: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    params: Sequence[torch.Tensor],
    vectors: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """``H v`` of ``loss_fn`` at ``params`` by double backward.

    Double backward rather than forward-over-reverse: it works for every op with a backward
    (cuDNN RNNs, fused kernels) and needs nothing from the task beyond a differentiable loss.
    """
    leaves = [p.detach().requires_grad_(True) for p in params]
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(leaves), leaves, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        out = [torch.zeros_like(p) for p in leaves]
        if live:
            hv = torch.autograd.grad(
                [grads[i] for i in live], leaves,
                grad_outputs=[vectors[i].to(grads[i].dtype) for i in live], allow_unused=True,
            )
            out = [h.detach() if h is not None else o for h, o in zip(hv, out)]
    return out


class RTHO(SavedAttributes):
    """An LR policy that needs ``ctx.meta_grads`` (a meta split) and a torch SGD optimizer.
    Options: see :class:`RTHOOptions` (``RTHO(lr=0.1, hyper_lr=1e-5)``)."""

    # the carried LR, the last hypergradient, the call count (when to hyper-step) and the
    # tangents dw/d eta and d buf/d eta
    run_state_attributes = ("current_lr", "hypergradient", "_calls", "_z", "_z_buf")

    def __init__(self, **options: Any):
        self.options = RTHOOptions(**options)
        self._reset()
        self._checked = False

    def _reset(self) -> None:
        self.current_lr = self.options.lr
        self.hypergradient: float | None = None
        self._calls = 0
        self._z: list[torch.Tensor] | None = None  # dw/d eta
        self._z_buf: list[torch.Tensor | None] | None = None  # d momentum_buffer / d eta

    def start(self, run: RunInfo) -> None:
        self._check(run.optimizer)
        self._reset()

    def _check(self, optimizer: torch.optim.Optimizer) -> None:
        if optimizer_kind(optimizer, "rtho") == "adam":
            raise UnsupportedOptimizerError("rtho differentiates SGD dynamics; use torch.optim.SGD")
        self._checked = True

    def lr(self, ctx: StepContext) -> float:
        if not self._checked:
            self._check(ctx.optimizer)
        if ctx.meta_grads is None:
            raise MissingMetaSplitError(
                "rtho needs gradients of a validation loss, but this run has no meta split "
                "(ctx.meta_grads is None); run it with a task and config that provide one"
            )
        o = self.options
        if self._z is not None and self._calls % o.update_every == 0:
            self.hypergradient = dot(ctx.meta_grads(), self._z)
            if not math.isfinite(self.hypergradient):
                raise FloatingPointError(
                    f"rtho: the hypergradient is {self.hypergradient} at step {ctx.step}"
                )
            eta = max(self.current_lr - o.hyper_lr * self.hypergradient, 0.0)
            self.current_lr = eta if o.max_lr is None else min(eta, o.max_lr)
        self._advance(ctx, self.current_lr)
        self._calls += 1
        return self.current_lr

    @torch.no_grad()
    def _advance(self, ctx: StepContext, eta: float) -> None:
        """Carry the tangents through the step ``optimizer.step()`` is about to take at ``eta``."""
        params = [p.detach() for p in ctx.params]
        z = self._z
        hz = hessian_vector_product(ctx.batch_loss, params, z) if z is not None else None
        z_buf = self._z_buf or [None] * len(params)
        new_z, new_z_buf = [], []
        slots = optimizer_slots(ctx.optimizer, params)
        for i, (p, g, slot) in enumerate(zip(params, ctx.grads, slots, strict=True)):
            zi = z[i] if z is not None else torch.zeros_like(p)
            if slot is None or g is None:  # not stepped: w, and so dw/d eta, stay put
                new_z.append(zi)
                new_z_buf.append(z_buf[i])
                continue
            q, group = slot
            wd, mu = group["weight_decay"], group["momentum"]
            g = g.detach() + wd * p  # the gradient the optimizer uses ...
            dg = hz[i] + wd * zi if hz is not None else torch.zeros_like(p)  # ... and its tangent
            d, dd, db = g, dg, None
            if mu:
                buf = ctx.optimizer.state.get(q, {}).get("momentum_buffer")
                if buf is None:  # torch's first momentum step copies the gradient
                    buf, db = g, dg
                else:
                    damp = 1 - group["dampening"]
                    prev_db = z_buf[i] if z_buf[i] is not None else torch.zeros_like(p)
                    buf, db = mu * buf + damp * g, mu * prev_db + damp * dg
                d, dd = (g + mu * buf, dg + mu * db) if group["nesterov"] else (buf, db)
            # w_{t+1} = w_t - eta d(w_t)  =>  Z_{t+1} = Z_t - d - eta dd/d eta
            new_z.append(zi - d - eta * dd)
            new_z_buf.append(db)
        self._z, self._z_buf = new_z, new_z_buf

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        pass
