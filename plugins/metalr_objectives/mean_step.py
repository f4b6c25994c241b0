"""The meta loss one step ahead along the expected step: the one-step objective with the batch
noise's curvature cancelled by a second batch.

On a noisy quadratic, one step ahead, a smaller LR wins because of the curvature the batch
noise pays for: to second order, ``L(w - lr d) = L - lr grad.d + lr^2/2 d'Hd``, and
``E[d'Hd]`` holds the noise's ``tr(H Sigma)`` besides the expected step's curvature (Wu et al.
2018). A cool-down removes that noise at the end of the run anyway, so the stable phase should
be judged without it. This objective tests how much of the one-step pull that is. With the
steps ``d1`` (this batch's, the real step's) and ``d2`` (a further batch's, from the same
weights and optimizer state), ``d1'Hd2`` is the expected step's curvature alone, and

    L(w - lr (d1 + d2)/2) - [L(w - lr (d1 - d2)/2) + L(w + lr (d1 - d2)/2)] / 2 + L(w)
      = L - lr grad.(d1 + d2)/2 + lr^2/2 d1'Hd2          (exactly, on a quadratic)

so its expectation is the meta loss after the mean step ``w - lr E[d]``. It holds for any
optimizer whose step is linear in the LR (SGD, momentum, Adam, AdamW: ``d`` is the step
direction each would take). What is left is the deterministic greedy LR: "how far can the
expected step go?". It cannot cancel the noise that a momentum buffer (or Adam's first moment)
carries from earlier batches into both steps. Measured (docs/design.md, "Is the pull the batch
noise?"): with plain SGD the pull halves but stays, with momentum it is nearly one-step's, so
most of it is the step's own curvature, not the noise. Cost per meta-update: one more training
gradient and three more meta-loss forwards and backwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from metalr.contracts.protocols import Lookahead


class MeanStep:
    """``L(w_bar) - (L(w + delta) + L(w - delta)) / 2 + L(w)``, with ``w_bar`` the mean of this
    batch's virtual step and a further batch's and ``delta`` half their difference (module
    docstring): no options."""

    def meta_loss(self, look: Lookahead, lr: torch.Tensor) -> torch.Tensor:
        ours = look.steps(lr)
        here = list(ours.weights)  # the real weights, detached
        first = ours.first()
        # a further batch's step from the same weights and optimizer state: a second set of
        # virtual steps whose first step takes the gradient of that batch's loss
        batch = look.train_batch(1)
        other = look.steps(lr).next(lambda w: look.train_loss(w, batch), look.clip_grad_norm)
        mean = [(a + b) / 2 for a, b in zip(first, other)]
        half = [(a - b) / 2 for a, b in zip(first, other)]
        plus = look.meta_loss([w + h for w, h in zip(here, half)])
        minus = look.meta_loss([w - h for w, h in zip(here, half)])
        with torch.no_grad():
            base = look.meta_loss(here)
        return look.meta_loss(mean) - (plus + minus) / 2 + base

    def run_state(self) -> dict[str, Any]:
        """Nothing carries from one meta-update to the next."""
        return {}

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        pass
