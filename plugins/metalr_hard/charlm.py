"""``char-lm``: character-level language modelling of CPython's ``pydoc_data`` text.

It is ``pydoc-lm`` (metalr_text) with characters for words: the same contiguous
train / meta / test split, truncated-BPTT windows with the carried state, evaluation and
perplexity, all inherited; only the corpus differs. The vocabulary (~100 characters, case
kept) comes from the training part; a character first seen later becomes ``<unk>``. The metric
is bits per character (``bpc = loss / ln 2``), lower is better; ``loss_scale`` is ln(vocab).

Why it is hard for LR heuristics: the loss drops from ln(vocab) ~ 4.6 to the unigram entropy
(~3.2 nats) in a few dozen steps at almost any LR, then progress becomes slow and
LR-sensitive. A short probe sees that first easy drop, and plain SGD needs LRs of order 1-10
where Adam needs 1e-3: a schedule read off the early loss is read off the wrong phase.
Use it with the ``lstm-lm`` model (``emb_size == hidden_size`` for tied weights).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from metalr_text.task import UNK, Corpus, PydocLM, pydoc_text
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from metalr.contracts.protocols import ModelSpec


class CharLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bptt: int = Field(64, ge=1, description="characters per truncated-BPTT window")
    max_chars: int = Field(0, ge=0, description="use the first N characters only (0: all)")
    meta_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="character share of meta")
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="character share of test")
    eval_batch_size: int = Field(10, ge=1, description="columns when evaluating a split")
    max_train_eval_tokens: int = Field(
        50_000, ge=0, description="evaluate 'train' on its first N characters only (0: all)")

    @model_validator(mode="after")
    def _leaves_training_data(self) -> CharLMOptions:
        if self.meta_fraction + self.test_fraction >= 0.9:
            raise ValueError("meta_fraction + test_fraction must leave at least 10% for training")
        return self


@functools.lru_cache(maxsize=4)
def build_char_corpus(max_chars: int, meta_fraction: float, test_fraction: float) -> Corpus:
    text = pydoc_text()
    if max_chars:
        text = text[:max_chars]
    n = len(text)
    n_meta, n_test = int(n * meta_fraction), int(n * test_fraction)
    n_train = n - n_meta - n_test
    bounds = {"train": (0, n_train), "meta": (n_train, n_train + n_meta),
              "test": (n_train + n_meta, n)}
    vocab = (UNK, *sorted(set(text[:n_train])))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index.get(c, 0) for c in text], dtype=torch.long)
    return Corpus(ids, vocab, bounds)


class CharLM(PydocLM):
    metric: str = "bpc"
    metrics: tuple[str, ...] = ("loss", "perplexity", "bpc")

    def __init__(self, **options: Any):
        """Options: see :class:`CharLMOptions` (validated here; an unknown one fails)."""
        o = CharLMOptions(**options)
        # The parent sets up the batching state (its word corpus is cached and cheap); the
        # corpus and everything sized from it are then replaced by the character ones.
        super().__init__(bptt=o.bptt, meta_fraction=o.meta_fraction,
                         test_fraction=o.test_fraction, eval_batch_size=o.eval_batch_size,
                         max_train_eval_tokens=o.max_train_eval_tokens)
        self.max_chars = o.max_chars
        self.corpus = build_char_corpus(o.max_chars, o.meta_fraction, o.test_fraction)
        self.vocab = self.corpus.vocab
        self.word_to_id = {c: i for i, c in enumerate(self.vocab)}
        self.spec = ModelSpec(input_shape=(o.bptt,), num_outputs=len(self.vocab),
                              kind="language-model")
        self.loss_scale = math.log(len(self.vocab))

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        metrics = super().evaluate(model, split)
        if metrics:
            metrics["bpc"] = metrics["loss"] / math.log(2)
        return metrics
