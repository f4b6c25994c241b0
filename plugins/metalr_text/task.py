"""``pydoc-lm``: PTB-style word-level language modelling on CPython's own documentation.

The text is ``pydoc_data.topics.topics`` (a dict of str -> str shipped with CPython), its
values joined in sorted key order, so every machine has the same corpus without a download.
The token stream is split contiguously into train / meta (validation) / test, and the
vocabulary comes from the training part only: words first seen later become ``<unk>``, as
they would for a model that never saw them.

Training windows are yielded in order and the task itself carries the LSTM state from one
window to the next (detached), because the engine's model may be a functional copy that it
cannot ask for state. Meta windows always start from zeros, so a virtual (functional) step
never depends on the training state.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.nn import functional as F

from metalr.contracts.protocols import ModelSpec

UNK, EOS = "<unk>", "<eos>"
Hidden = tuple[torch.Tensor, torch.Tensor]
SPLITS = ("train", "meta", "test")


class PydocLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bptt: int = Field(35, ge=1, description="tokens per truncated-BPTT window")
    min_count: int = Field(1, ge=1, description="training-part count a word needs to get an id")
    lowercase: bool = Field(True, description="lowercase the text before tokenising (as PTB is)")
    meta_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="token share of meta (valid)")
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="token share of test (the tail)")
    eval_batch_size: int = Field(10, ge=1, description="columns when evaluating a split")
    max_train_eval_tokens: int = Field(
        20_000, ge=0, description="evaluate 'train' on its first N tokens only (0: all)"
    )

    @model_validator(mode="after")
    def _leaves_training_data(self) -> PydocLMOptions:
        if self.meta_fraction + self.test_fraction >= 0.9:
            raise ValueError("meta_fraction + test_fraction must leave at least 10% for training")
        return self


@dataclass(eq=False)
class LMBatch:
    """One bptt window: ``x`` and its next-token targets ``y``, both ``(seq_len, batch)``.

    ``hidden`` is the (detached) state the window starts from, ``None`` meaning zeros; it is
    fixed when the window is made, so evaluating the same batch twice (a virtual step, a
    Hessian-vector product) sees the same start. ``train`` tells training windows, whose
    final state the task carries to the next window, from meta windows, which carry nothing.
    """

    x: torch.Tensor
    y: torch.Tensor
    hidden: Hidden | None
    train: bool


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Whitespace words, ``<eos>`` after every non-blank line (blank lines carry no words)."""
    if lowercase:
        text = text.lower()
    tokens: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words:
            tokens += words + [EOS]
    return tokens


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


@dataclass(frozen=True)
class Corpus:
    ids: torch.Tensor  # the whole token stream as ids, on the CPU
    vocab: tuple[str, ...]
    bounds: dict[str, tuple[int, int]]  # split -> [start, stop) in the stream


@functools.lru_cache(maxsize=4)
def build_corpus(
    lowercase: bool, min_count: int, meta_fraction: float, test_fraction: float
) -> Corpus:
    tokens = tokenize(pydoc_text(), lowercase)
    n = len(tokens)
    n_meta, n_test = int(n * meta_fraction), int(n * test_fraction)
    n_train = n - n_meta - n_test
    bounds = {
        "train": (0, n_train),
        "meta": (n_train, n_train + n_meta),
        "test": (n_train + n_meta, n),
    }
    counts = Counter(tokens[:n_train])
    vocab = [UNK, EOS] + [
        w for w in dict.fromkeys(tokens[:n_train]) if w not in (UNK, EOS) and counts[w] >= min_count
    ]
    index = {w: i for i, w in enumerate(vocab)}
    ids = torch.tensor([index.get(w, 0) for w in tokens], dtype=torch.long)
    return Corpus(ids, tuple(vocab), bounds)


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``(rows, batch_size)``: the stream cut into ``batch_size`` contiguous columns (tail cut)."""
    rows = ids.numel() // batch_size
    return ids[: rows * batch_size].view(batch_size, rows).t().contiguous()


def _detach(hidden: Hidden) -> Hidden:
    return tuple(h.detach() for h in hidden)  # type: ignore[return-value]


class PydocLM:
    """Language modelling task: metric perplexity, loss normalised by ln(vocab) (Appendix B)."""

    default_gamma: float = 40.0  # the paper's gamma for text (with SGD at lr 20)
    metric: str = "perplexity"
    metrics: tuple[str, ...] = ("loss", "perplexity")  # what evaluate() returns
    higher_is_better: bool = False
    cheap_setup: bool = True  # the corpus ships with CPython: `metalr validate` sets it up
    clip_grad_norm: float = 0.25  # the word_language_model recipe; applied by the engine

    def __init__(self, **options: Any):
        """Options: see :class:`PydocLMOptions` (validated here: a bad or unknown one fails)."""
        o = PydocLMOptions(**options)
        self.bptt, self.eval_batch_size = o.bptt, o.eval_batch_size
        self.max_train_eval_tokens = o.max_train_eval_tokens
        # Built here, not in setup: it does not depend on the seed, and the engine needs the
        # vocabulary size (spec, loss_scale) before it builds the model.
        self.corpus = build_corpus(o.lowercase, o.min_count, o.meta_fraction, o.test_fraction)
        self.vocab: tuple[str, ...] = self.corpus.vocab
        self.word_to_id = {w: i for i, w in enumerate(self.vocab)}
        self.spec = ModelSpec(
            input_shape=(o.bptt,), num_outputs=len(self.vocab), kind="language-model"
        )
        self.loss_scale: float = math.log(len(self.vocab))
        self.device = torch.device("cpu")
        self.ids: dict[str, torch.Tensor] = {}
        self._batched: dict[tuple[str, int], torch.Tensor] = {}
        self._current: LMBatch | None = None
        self._carry_out: Hidden | None = None

    # -- data ------------------------------------------------------------------------------

    def setup(self, seed: int, device: torch.device) -> None:
        """Move the splits to ``device``. The splits are contiguous, so ``seed`` is unused."""
        self.device = torch.device(device)
        self.ids = {
            s: self.corpus.ids[a:b].to(self.device) for s, (a, b) in self.corpus.bounds.items()
        }
        self._batched.clear()
        self._current, self._carry_out = None, None

    def _rows(self, split: str, batch_size: int) -> torch.Tensor:
        key = (split, batch_size)
        if key not in self._batched:
            if not self.ids:
                raise RuntimeError("call setup(seed, device) first")
            data = batchify(self.ids[split], batch_size)
            if data.size(0) < 2:
                raise ValueError(
                    f"batch size {batch_size} leaves under 2 rows of the {split} split "
                    f"({self.ids[split].numel()} tokens)"
                )
            self._batched[key] = data
        return self._batched[key]

    def num_train_batches(self, batch_size: int) -> int:
        return math.ceil((self._rows("train", batch_size).size(0) - 1) / self.bptt)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[LMBatch]:
        """The training windows in order (``generator`` is unused: order matters for the state).

        Each epoch (each call) starts from a zero state; every later window starts from the
        detached state left by the first :meth:`loss` evaluated on the window before it.
        """
        data = self._rows("train", batch_size)
        hidden: Hidden | None = None
        try:
            for i in range(0, data.size(0) - 1, self.bptt):
                n = min(self.bptt, data.size(0) - 1 - i)
                batch = LMBatch(data[i : i + n], data[i + 1 : i + 1 + n], hidden, train=True)
                self._current, self._carry_out = batch, None
                yield batch
                hidden = self._carry_out  # None (zeros) if no loss ran on this window
        finally:
            self._current, self._carry_out = None, None

    def meta_batch(self, batch_size: int, generator: torch.Generator) -> LMBatch:
        """A random bptt window of the meta split, ``batch_size`` columns, from a zero state."""
        data = self._rows("meta", batch_size)
        last_start = max(data.size(0) - 1 - self.bptt, 0)
        pick = torch.randint(last_start + 1, (1,), generator=generator, device=generator.device)
        start = int(pick)
        n = min(self.bptt, data.size(0) - 1 - start)
        return LMBatch(data[start : start + n], data[start + 1 : start + 1 + n], None, train=False)

    # -- loss and metrics -------------------------------------------------------------------

    def loss(
        self, model: Callable[..., tuple[torch.Tensor, Hidden]], batch: LMBatch
    ) -> torch.Tensor:
        """Mean token cross-entropy. ``model`` may be a functional copy: it is only called."""
        logits, hidden = model(batch.x, batch.hidden)
        if batch.train and batch is self._current and self._carry_out is None:
            self._carry_out = _detach(hidden)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch.y.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """Mean token cross-entropy and perplexity over ``split``, in order, carrying the state.

        For speed, ``"train"`` is evaluated on its first ``max_train_eval_tokens`` tokens only
        (0 means all of it); "meta" and "test" are always complete.
        """
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
        ids = self.ids[split]
        if split == "train" and self.max_train_eval_tokens:
            ids = ids[: self.max_train_eval_tokens]
        data = batchify(ids, min(self.eval_batch_size, max(ids.numel() // 2, 1)))
        was_training = model.training
        model.eval()
        total, count, hidden = 0.0, 0, None
        try:
            for i in range(0, data.size(0) - 1, self.bptt):
                n = min(self.bptt, data.size(0) - 1 - i)
                logits, hidden = model(data[i : i + n], hidden)
                y = data[i + 1 : i + 1 + n].reshape(-1)
                logits = logits.reshape(-1, logits.size(-1))
                total += F.cross_entropy(logits, y, reduction="sum").item()
                count += y.numel()
        finally:
            model.train(was_training)
        if count == 0:
            return {}
        loss = total / count
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
