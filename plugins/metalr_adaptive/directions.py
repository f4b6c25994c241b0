"""What the base optimizer will do this step, read from its state before ``optimizer.step()``.

HD and L4 both need the update direction ``d`` with ``p <- p - lr * d``; computing it from the
optimizer's own state and hyperparameters (rather than re-implementing an optimizer inside
the policy) keeps the rules true to whatever SGD / Adam configuration the recipe chose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

OptimizerKind = Literal["sgd", "sgdn", "adam"]


class UnsupportedOptimizerError(TypeError):
    """The policy cannot tell what this optimizer's step will do."""


def optimizer_kind(optimizer: torch.optim.Optimizer, policy: str) -> OptimizerKind:
    """``sgd`` (plain or heavy-ball), ``sgdn`` (Nesterov) or ``adam`` (Adam, AdamW).

    Raises for anything else, and for ``maximize`` or mixed Nesterov groups, whose update
    direction this module does not model.
    """
    if isinstance(optimizer, torch.optim.SGD):
        kinds = {"sgdn" if g["nesterov"] else "sgd" for g in optimizer.param_groups}
    elif isinstance(optimizer, torch.optim.Adam):  # AdamW subclasses Adam
        kinds = {"adam"}
    else:
        raise UnsupportedOptimizerError(
            f"{policy} needs torch.optim.SGD, Adam or AdamW as the base optimizer, "
            f"got {type(optimizer).__name__}"
        )
    if any(g.get("maximize", False) for g in optimizer.param_groups):
        raise UnsupportedOptimizerError(f"{policy} does not support maximize=True")
    if len(kinds) != 1:
        raise UnsupportedOptimizerError(f"{policy}: param groups mix Nesterov and plain SGD")
    return kinds.pop()


def optimizer_slots(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]
) -> list[tuple[torch.Tensor, dict[str, Any]] | None]:
    """For each of ``params``, the optimizer's own tensor (its state key) and its group.

    Matched by identity, then by storage (``params`` may be detached views); ``None`` for a
    tensor the optimizer does not update.
    """
    by_id: dict[int, tuple[torch.Tensor, dict[str, Any]]] = {}
    by_storage: dict[tuple[int, torch.Size], tuple[torch.Tensor, dict[str, Any]]] = {}
    for group in optimizer.param_groups:
        for q in group["params"]:
            by_id[id(q)] = (q, group)
            by_storage[(q.data_ptr(), q.shape)] = (q, group)
    return [by_id.get(id(p)) or by_storage.get((p.data_ptr(), p.shape)) for p in params]


def dot(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> float:
    """<xs, ys> over a list of tensors, accumulated in float64 with a single host sync."""
    terms = [(x.double() * y.double()).sum() for x, y in zip(xs, ys, strict=True)]
    return float(torch.stack(terms).sum()) if terms else 0.0


def update_direction(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor | None],
) -> list[torch.Tensor]:
    """``d`` such that ``optimizer.step()`` at LR ``lr`` will do ``p <- p - lr * d``.

    Must be called before the step (it reads momentum buffers / moments as they are now).
    Includes weight decay, momentum and bias correction, since all of them scale with the LR.
    Always returns fresh tensors: the engine's gradients are ``p.grad`` and get zeroed later.
    """
    kind = optimizer_kind(optimizer, "update_direction")
    out = []
    for p, g, slot in zip(params, grads, optimizer_slots(optimizer, params), strict=True):
        if g is None or slot is None:
            out.append(torch.zeros_like(p))
            continue
        q, group = slot
        state = optimizer.state.get(q, {})
        with torch.no_grad():
            g = g.detach()
            rule = _adam if kind == "adam" else _sgd
            d = rule(p.detach(), g, group, state)
            out.append(d.clone() if d is g else d)
    return out


def _sgd(
    p: torch.Tensor, g: torch.Tensor, group: dict[str, Any], state: dict[str, Any]
) -> torch.Tensor:
    wd, mu = group["weight_decay"], group["momentum"]
    if wd:
        g = g + wd * p
    if not mu:
        return g
    buf = state.get("momentum_buffer")
    buf = g if buf is None else mu * buf + (1 - group["dampening"]) * g
    return g + mu * buf if group["nesterov"] else buf


def _adam(
    p: torch.Tensor, g: torch.Tensor, group: dict[str, Any], state: dict[str, Any]
) -> torch.Tensor:
    beta1, beta2 = (float(b) for b in group["betas"])
    wd, decoupled = group["weight_decay"], group.get("decoupled_weight_decay", False)
    if wd and not decoupled:
        g = g + wd * p
    step = float(state["step"]) + 1 if "step" in state else 1.0
    m, v = state.get("exp_avg"), state.get("exp_avg_sq")
    m = (1 - beta1) * g if m is None else beta1 * m + (1 - beta1) * g
    v = (1 - beta2) * g * g if v is None else beta2 * v + (1 - beta2) * g * g
    if group.get("amsgrad", False) and state.get("max_exp_avg_sq") is not None:
        v = torch.maximum(state["max_exp_avg_sq"], v)
    denom = v.sqrt() / math.sqrt(1 - beta2**step) + group["eps"]
    d = m / (1 - beta1**step) / denom
    if wd and decoupled:
        d = d + wd * p
    return d
