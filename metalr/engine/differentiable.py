"""Virtual steps: differentiable steps of the real optimizer, made by `higher`.

:class:`VirtualSteps` is the look-ahead of a meta-update: its first step is Algorithm 1's
(Eq. 10; :func:`virtual_step`), further ones are an ``unroll`` objective's. It lives for one
meta-update: the differentiable optimizer, its state and the weights it returns are dropped
when the caller drops them, so nothing of one meta-update survives into the next
(``higher.monkeypatch`` with ``track_higher_grads`` keeps every set of fast weights it was ever
given, about five copies of the model per meta-update). It moves exactly the parameters the real
``optimizer.step()`` moves: those the optimizer holds that have a gradient.

`higher` ships a differentiable Adam whose epsilon sits inside the bias correction
(``sqrt(v) + eps`` scaled by ``sqrt(1 - beta2^t)``), unlike ``torch.optim.Adam``
(``sqrt(v) / sqrt(1 - beta2^t) + eps``). Early in training, when ``1 - beta2^t`` is small, the
two differ by far more than rounding, so the virtual step would not be the step the real
optimizer takes. This module registers an exact copy with higher.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from higher.optim import DifferentiableOptimizer, get_diff_optim, register_optim


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


class _Slot:
    """Stands for one parameter in the view of the optimizer that higher copies: higher
    deep-copies ``param_groups`` (every parameter with them) and clones the whole state on each
    call; a slot copies as itself, and the state is handed over afterwards uncopied (the
    differentiable step never writes into a state tensor, it builds new ones from it)."""

    __slots__ = ()

    def __deepcopy__(self, memo) -> _Slot:
        return self


class VirtualSteps:
    """Differentiable steps of the real optimizer from its current weights and state, at one LR
    ``lr`` for every step: :meth:`first` takes the batch gradient already known (the real step's
    g_t), :meth:`next` the loss of a further batch at the virtual weights, whose gradient then
    depends on ``lr`` through them (second order; ``unroll`` meta-objectives). The optimizer's
    state (momentum, Adam's moments) moves with the steps, differentiably; the real optimizer
    and weights are never touched. Everything lives as long as this object."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                 grads: Sequence[torch.Tensor | None], lr: torch.Tensor):
        index = {id(p): i for i, p in enumerate(params)}
        self.moving: list[int] = []  # into params, in the optimizer's order
        view = torch.optim.Optimizer.__new__(type(optimizer))  # its class picks higher's copy
        view.param_groups, view.state = [], {}
        for group in optimizer.param_groups:
            members = [index[id(p)] for p in group["params"]
                       if id(p) in index and grads[index[id(p)]] is not None]
            view.param_groups.append({**group, "params": [_Slot() for _ in members]})
            self.moving.extend(members)
        self.grads = grads
        self.weights = [p.detach() for p in params]
        self.diffopt: DifferentiableOptimizer | None = None
        if not self.moving:
            return
        slots = [slot for group in view.param_groups for slot in group["params"]]
        self.diffopt = get_diff_optim(view, slots, track_higher_grads=True,
                                      override={"lr": [lr]})
        position = 0
        for group_index, group in enumerate(view.param_groups):
            for slot_index in range(len(group["params"])):
                real = optimizer.state.get(params[self.moving[position]])
                if real:
                    self.diffopt.state[group_index][slot_index] = dict(real)  # new dict
                position += 1

    def first(self) -> list[torch.Tensor]:
        """``w_hat``: one step with the batch gradient given at construction."""
        # higher asks autograd for the gradient of a loss; the batch gradient is known, so it
        # gets a loss that depends on nothing and the gradient through its callback. The
        # weights do not require grad: the step's graph reaches the LR only.
        anchor = torch.zeros((), requires_grad=True)
        return self._step(anchor, lambda _: [self.grads[i] for i in self.moving])

    def next(self, loss: Callable[[list[torch.Tensor]], torch.Tensor],
             clip_grad_norm: float | None = None) -> list[torch.Tensor]:
        """One more step, on the gradient of ``loss(weights)`` at the current virtual weights
        (differentiable: it depends on the LR through them), clipped like the real step."""
        for i in self.moving:  # an LR that takes no gradient: plain weights, still differentiable
            if not self.weights[i].requires_grad:
                self.weights[i] = self.weights[i].detach().requires_grad_()
        value = loss(self.weights)
        moving = [self.weights[i] for i in self.moving]
        grads = torch.autograd.grad(value, moving, create_graph=True, allow_unused=True)
        full = [torch.zeros_like(w) if g is None else g for w, g in zip(moving, grads)]
        if clip_grad_norm:
            norm = torch.sqrt(sum((g * g).sum() for g in full))
            factor = torch.clamp(clip_grad_norm / (norm + 1e-6), max=1.0)
            full = [g * factor for g in full]
        anchor = torch.zeros((), requires_grad=True)
        return self._step(anchor, lambda _: full)

    def _step(self, anchor: torch.Tensor, grads) -> list[torch.Tensor]:
        if self.diffopt is None:
            return list(self.weights)
        moved = self.diffopt.step(anchor, params=[self.weights[i] for i in self.moving],
                                  grad_callback=grads)
        for i, new in zip(self.moving, moved):
            self.weights[i] = new
        return list(self.weights)


def virtual_step(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                 grads: Sequence[torch.Tensor | None], lr: torch.Tensor) -> list[torch.Tensor]:
    """``w_hat``: the weights after one step of ``optimizer`` from ``params`` with ``grads`` at
    LR ``lr``, differentiable in ``lr`` (momentum buffers, Adam's moments, weight decay included).

    ``params`` are the real parameters and ``grads[i]`` the batch gradient of ``params[i]``
    (None: it has none). Like ``optimizer.step()``, the step moves the parameters the optimizer
    holds that have a gradient; every other one comes back as it is (detached).
    """
    return VirtualSteps(optimizer, params, grads, lr).first()
