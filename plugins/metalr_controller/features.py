"""The controller's state: what it sees of a training run every K steps (Xu et al. 2019, Sec. 3).

Every feature is computed from the engine's :class:`~metalr.contracts.protocols.StepContext`, the
same in meta-training (inside the env) and in meta-test (the frozen policy), so a trained controller
sees the same numbers wherever it runs. Predictions are the softmax of the model's outputs on this
step's training batch; their "change" is the difference between the outputs at the current
weights and at the weights of the previous observation, on the same batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from metalr.contracts.protocols import StepContext

FEATURES = ("meta_loss", "pred_logvar", "pred_change_logvar", "train_loss",
            "first_w_mean", "first_w_var", "last_w_mean", "last_w_var", "log_lr")
"""The nine features of the authors' code, in order; a recipe may pick a subset."""

EPS = 1e-8
_PREDICTIONS = {"pred_logvar", "pred_change_logvar"}


def log_variance(probs: torch.Tensor) -> float:
    """log of the variance over the batch, averaged over classes."""
    return math.log(float(probs.var(dim=0, unbiased=False).mean()) + EPS)


class Features:
    """Computes the chosen features; owns the moving averages and the previous weights."""

    def __init__(self, names: Sequence[str] = FEATURES, decay: float = 0.9):
        unknown = [n for n in names if n not in FEATURES]
        if unknown:
            raise ValueError(f"unknown controller feature(s) {unknown}; known: {list(FEATURES)}")
        self.names, self.decay = tuple(names), decay
        self.reset()

    def __len__(self) -> int:
        return len(self.names)

    def reset(self) -> None:
        self.ema: dict[str, float] = {}
        self.previous: list[torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        previous = self.previous
        return {"ema": dict(self.ema),
                "previous": None if previous is None else [p.detach().cpu().clone()
                                                           for p in previous]}

    def load_state_dict(self, state: Mapping[str, Any], params: Sequence[torch.Tensor]) -> None:
        """``params``: the weights the previous ones belong to (their device is restored)."""
        self.ema = {k: float(v) for k, v in state["ema"].items()}
        previous = state["previous"]
        self.previous = None if previous is None else [t.to(p.device)
                                                       for t, p in zip(previous, params)]

    def _average(self, key: str, value: float) -> float:
        old = self.ema.get(key)
        self.ema[key] = value if old is None else self.decay * old + (1 - self.decay) * value
        return self.ema[key]

    def __call__(self, ctx: StepContext, lr: float, meta_loss: float) -> np.ndarray:
        """The raw (unnormalised) feature vector; ``meta_loss`` is already normalised."""
        values: dict[str, float] = {"meta_loss": meta_loss,
                                    "train_loss": float(ctx.loss_input),
                                    "log_lr": math.log(max(lr, 1e-30))}
        if _PREDICTIONS & set(self.names):
            if ctx.batch_outputs is None:
                raise RuntimeError("the prediction features need StepContext.batch_outputs")
            probs = torch.softmax(ctx.batch_outputs(None).float(), dim=-1)
            values["pred_logvar"] = self._average("pred", log_variance(probs))
            change = math.log(EPS) if self.previous is None else log_variance(
                probs - torch.softmax(ctx.batch_outputs(self.previous).float(), dim=-1))
            values["pred_change_logvar"] = self._average("change", change)
            self.previous = [p.detach().clone() for p in ctx.params]
        matrices = [p for p in ctx.params if p.dim() >= 2] or list(ctx.params)
        for tag, w in (("first", matrices[0]), ("last", matrices[-1])):
            w = w.detach().float()
            values[f"{tag}_w_mean"] = float(w.mean())
            values[f"{tag}_w_var"] = float(w.var(unbiased=False))
        return np.array([values[n] for n in self.names], dtype=np.float32)
