"""Differentiable copies of optimizers whose arithmetic matches torch's own, step for step.

`higher` ships a differentiable Adam whose epsilon sits inside the bias correction
(``sqrt(v) + eps`` scaled by ``sqrt(1 - beta2^t)``), unlike ``torch.optim.Adam``
(``sqrt(v) / sqrt(1 - beta2^t) + eps``). Early in training, when ``1 - beta2^t`` is small, the
two differ by far more than rounding, so the virtual step would not be the step the real
optimizer takes. This module registers an exact copy with higher.
"""

from __future__ import annotations

import math

import torch
from higher.optim import DifferentiableOptimizer, register_optim


class TorchAdam(DifferentiableOptimizer):
    """``torch.optim.Adam`` (no amsgrad, no maximize) as a differentiable step."""

    decoupled = False  # AdamW: weight decay shrinks the weights instead of joining the gradient

    def _update(self, grouped_grads, **kwargs) -> None:
        for group_idx, (group, grads) in enumerate(zip(self.param_groups, grouped_grads)):
            if group.get("amsgrad") or group.get("maximize"):
                raise ValueError("metalr's virtual step supports Adam without amsgrad and maximize")
            beta1, beta2 = group["betas"]
            for p_idx, (p, g) in enumerate(zip(group["params"], grads)):
                if g is None:
                    continue
                state = self.state[group_idx][p_idx]
                if not state:
                    state.update(step=0.0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                # torch keeps the step count in a tensor but does this arithmetic in Python floats
                step = state["step"] = float(state["step"]) + 1
                if group["weight_decay"] != 0:
                    if self.decoupled:
                        p = p * (1 - group["lr"] * group["weight_decay"])
                    else:
                        g = g + group["weight_decay"] * p
                m = state["exp_avg"] = state["exp_avg"] * beta1 + (1 - beta1) * g
                v = state["exp_avg_sq"] = state["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
                bias1 = 1 - beta1**step
                bias2_sqrt = math.sqrt(1 - beta2**step)
                # sqrt of v: guard the zero entries whose gradient would be infinite
                denom = v.clamp_min(torch.finfo(v.dtype).tiny).sqrt() / bias2_sqrt + group["eps"]
                group["params"][p_idx] = p - (group["lr"] / bias1) * m / denom


class TorchAdamW(TorchAdam):
    """``torch.optim.AdamW``: Adam with decoupled weight decay, ``w *= 1 - lr * wd`` first."""

    decoupled = True


register_optim(torch.optim.Adam, TorchAdam)
register_optim(torch.optim.AdamW, TorchAdamW)
