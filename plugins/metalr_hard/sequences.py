"""``seq-recall``: recall marked tokens from early in a long random sequence (a GRU/LSTM task).

Each sample is ``length`` random tokens (one-hot, ``vocab`` symbols) with a marker channel
that flags ``keys`` positions drawn from the first ``key_span`` of the sequence; the label is
the sum of the marked tokens modulo ``vocab``. Most answers lie tens of steps back, so a
recurrent net with PyTorch's default init starts on a loss plateau at ln(vocab): its gradient
through that many steps is almost nil, a short LR probe sees no difference between its LRs, and
SGD momentum sits at chance for hundreds of steps before it escapes. ``key_span`` and ``keys``
make it harder (how long each setting stays at chance: docs/hard-tasks.md).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.nn import functional as F

from metalr.contracts.protocols import ModelSpec
from metalr.engine.data import Batch, TensorClassificationTask


class SeqRecallOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    length: int = Field(40, ge=2, le=1000, description="steps per sequence")
    vocab: int = Field(4, ge=2, le=64, description="token symbols, also the number of classes")
    keys: int = Field(1, ge=1, description="marked tokens whose sum mod vocab is the label")
    key_span: float = Field(1.0, gt=0.0, le=1.0,
                            description="keys lie in this leading share of the sequence")
    num_train: int = Field(3000, ge=10, description="generated training samples (meta included)")
    num_test: int = Field(1000, ge=1, description="generated test samples")
    meta_size: int = Field(500, ge=0, description="training samples held out as the meta set")
    data_seed: int = Field(0, ge=0, description="seed of the generated data (fixed across runs)")
    clip_grad_norm: float | None = Field(
        1.0, gt=0, description="default gradient clipping (as usual for RNNs); null: none")

    @model_validator(mode="after")
    def _keys_fit(self) -> SeqRecallOptions:
        _check_span(self.length, self.keys, self.key_span)
        return self


def _check_span(length: int, keys: int, key_span: float) -> int:
    span = int(length * key_span)
    if keys > span:
        raise ValueError(f"keys ({keys}) must fit in the first {span} steps "
                         f"(length {length} x key_span {key_span}): raise key_span or length")
    return span


def make_sequences(n: int, length: int, vocab: int, keys: int, span: int,
                   gen: torch.Generator) -> Batch:
    """``x (n, length, vocab + 1)``: one-hot tokens and a marker channel; ``y``: the label."""
    tokens = torch.randint(vocab, (n, length), generator=gen)
    positions = torch.rand(n, span, generator=gen).argsort(1)[:, :keys]  # distinct per row
    y = tokens.gather(1, positions).sum(1) % vocab
    marker = torch.zeros(n, length).scatter_(1, positions, 1.0)
    x = torch.cat([F.one_hot(tokens, vocab).float(), marker.unsqueeze(-1)], dim=-1)
    return x, y


class SeqRecall(TensorClassificationTask):
    def __init__(self, **options: Any):
        """Options: see :class:`SeqRecallOptions` (validated here; an unknown one fails)."""
        o = SeqRecallOptions(**options)
        super().__init__(o.meta_size)
        self.span = _check_span(o.length, o.keys, o.key_span)
        self.length, self.vocab, self.keys = o.length, o.vocab, o.keys
        self.num_train, self.num_test, self.data_seed = o.num_train, o.num_test, o.data_seed
        self.clip_grad_norm = o.clip_grad_norm
        self.spec = ModelSpec(input_shape=(o.length, o.vocab + 1), num_outputs=o.vocab)

    def load(self) -> tuple[Batch, Batch]:
        gen = torch.Generator().manual_seed(self.data_seed)
        args = (self.length, self.vocab, self.keys, self.span, gen)
        return make_sequences(self.num_train, *args), make_sequences(self.num_test, *args)
