"""``noisy-labels``: a share of the training labels replaced by another class at random.

Exactly ``round(noise * n)`` labels of the training split are flipped, each to one of the other
nine classes uniformly (symmetric noise). The test split stays clean: it measures what was
learned. The meta split is noisy too by default (``noisy_meta``), at the same rate: a
practitioner who has noisy training labels has noisy validation labels as well, and a clean
meta set would hand tuning and MLR-SNet information nobody has. Symmetric noise keeps the
ranking of models in expectation (noisy accuracy = (1 - noise) acc + noise (1 - acc) / 9), so
the noisy meta split still points the right way, only with less contrast.

Why it breaks LR heuristics: early training fits the clean majority and the loss falls fast at
large LRs; the damage (memorising the flipped labels) comes late. A short-horizon probe rewards
the LR that drops the loss quickest, which is far too large for the end of the run.

Flips are drawn per run seed (like the meta split), so seeds average over noise patterns.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from metalr.engine.data import Batch, TensorClassificationTask

from .bases import NUM_CLASSES, Base, load_base

NOISE_SEED_OFFSET = 7919  # keeps the flips' draws apart from the meta split's (same run seed)


class NoisyLabelsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: Base = Field("mnist1d", description="the clean dataset: mnist1d or digits")
    noise: float = Field(0.3, ge=0.0, lt=0.9, description="share of labels flipped")
    noisy_meta: bool = Field(True, description="flip the meta split's labels too (realistic)")
    meta_size: int = Field(500, ge=0, description="training samples held out as the meta set")
    num_samples: int = Field(5000, ge=100, le=1_000_000,
                             description="mnist1d only: samples generated")
    data_seed: int = Field(42, ge=0, le=2**32 - 1,
                           description="seed of the base data (mnist1d: 42)")


def flip_labels(y: torch.Tensor, noise: float, classes: int,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noisy labels, flipped indices)``: exactly ``round(noise * len(y))`` flipped, each to
    another class drawn uniformly."""
    n_flip = round(noise * len(y))
    idx = torch.randperm(len(y), generator=gen)[:n_flip]
    noisy = y.clone()
    noisy[idx] = (y[idx] + torch.randint(1, classes, (n_flip,), generator=gen)) % classes
    return noisy, idx


class NoisyLabels(TensorClassificationTask):
    def __init__(self, **options: Any):
        """Options: see :class:`NoisyLabelsOptions` (validated here; an unknown one fails)."""
        o = NoisyLabelsOptions(**options)
        super().__init__(o.meta_size)
        self.base, self.noise, self.noisy_meta = o.base, o.noise, o.noisy_meta
        self.num_samples, self.data_seed = o.num_samples, o.data_seed
        self.spec, self._train, self._test = load_base(o.base, o.num_samples, o.data_seed)

    def load(self) -> tuple[Batch, Batch]:
        return self._train, self._test

    def setup(self, seed: int, device: torch.device) -> None:
        super().setup(seed, device)
        gen = torch.Generator().manual_seed(seed + NOISE_SEED_OFFSET)
        self.clean_labels: dict[str, torch.Tensor] = {}
        self.flipped: dict[str, torch.Tensor] = {}
        for split in ("train", "meta") if self.noisy_meta else ("train",):
            x, y = self.splits[split]
            self.clean_labels[split] = y.cpu()
            noisy, self.flipped[split] = flip_labels(y.cpu(), self.noise, NUM_CLASSES, gen)
            self.splits[split] = (x, noisy.to(y.device))
