"""The LSTM language model of PyTorch's word_language_model example, with tied weights."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from metalr.contracts.protocols import ModelSpec

Hidden = tuple[torch.Tensor, torch.Tensor]


class LSTMLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    emb_size: int = Field(200, ge=1, description="word embedding width")
    hidden_size: int = Field(200, ge=1, description="LSTM hidden width")
    num_layers: int = Field(2, ge=1, description="stacked LSTM layers")
    dropout: float = Field(
        0.2, ge=0.0, lt=1.0, description="dropout on embeddings, between layers and on outputs"
    )
    tie_weights: bool = Field(True, description="decoder shares the embedding matrix")

    @model_validator(mode="after")
    def _tie_needs_equal_sizes(self) -> LSTMLMOptions:
        _check_tie(self.tie_weights, self.emb_size, self.hidden_size)
        return self


def _check_tie(tie: bool, emb_size: int, hidden_size: int) -> None:
    if tie and emb_size != hidden_size:
        raise ValueError(
            f"tie_weights needs emb_size == hidden_size (got {emb_size} and {hidden_size}): "
            "the decoder reuses the embedding matrix"
        )


class LSTMLanguageModel(nn.Module):
    """``forward(x, hidden=None) -> (logits, hidden)``; ``hidden=None`` starts from zeros.

    ``x`` is ``(seq_len, batch)`` token ids; logits are ``(seq_len, batch, vocab)``. With tied
    weights ``decoder.weight`` *is* ``encoder.weight`` (one Parameter), so ``parameters()``
    lists it once and a functional copy (``higher``) keeps the two in step. The sizes are
    :class:`LSTMLMOptions`' fields (their defaults are there: :func:`build_lstm_lm`).
    """

    def __init__(
        self,
        vocab_size: int,
        emb_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        tie_weights: bool,
    ):
        super().__init__()
        _check_tie(tie_weights, emb_size, hidden_size)
        self.encoder = nn.Embedding(vocab_size, emb_size)
        self.drop = nn.Dropout(dropout)
        between = dropout if num_layers > 1 else 0.0  # LSTM warns about dropout with one layer
        self.rnn = nn.LSTM(emb_size, hidden_size, num_layers, dropout=between)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        # The example's init: small uniform embeddings make the initial loss ~ ln(vocab).
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, x: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        out, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(out)), hidden


def build_lstm_lm(spec: ModelSpec, **options: Any) -> nn.Module:
    """The registered ``lstm-lm`` factory; options: see :class:`LSTMLMOptions`."""
    if spec.kind != "language-model":
        raise ValueError(f"lstm-lm needs a language-model task, got a {spec.kind} task")
    o = LSTMLMOptions(**options)
    return LSTMLanguageModel(
        spec.num_outputs, o.emb_size, o.hidden_size, o.num_layers, o.dropout, o.tie_weights
    )
