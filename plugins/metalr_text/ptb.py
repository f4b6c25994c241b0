"""``ptb``: the Penn Treebank word-level language model of Table 4 and Figure 6.

The files are the usual ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt`` (Mikolov's
preprocessed PTB: 10k words, ``<unk>`` already in the text), in ``$METALR_DATA/ptb`` or
``root``. As in PyTorch's word_language_model example, every line ends with ``<eos>``; the
vocabulary is that of the training file. The meta split is PTB's validation file (Appendix B:
"directly use the validation set in Penn Treebank as validation data"), the test split its test
file. Batching, state carrying and evaluation are :class:`~metalr_text.task.PydocLM`'s.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from metalr.contracts.protocols import ModelSpec
from metalr.engine.datafiles import data_root, require

from .task import EOS, UNK, Corpus, PydocLM, tokenize

FILES = {"train": "ptb.train.txt", "meta": "ptb.valid.txt", "test": "ptb.test.txt"}
DATASET = "ptb"


class PTBOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str | None = Field(None, description="folder of ptb.{train,valid,test}.txt; default "
                             "$METALR_DATA/ptb, else ~/metalr-data/ptb")
    bptt: int = Field(35, ge=1, description="tokens per truncated-BPTT window (35, App. B)")
    eval_batch_size: int = Field(10, ge=1, description="columns when evaluating a split")
    max_train_eval_tokens: int = Field(
        50_000, ge=0, description="evaluate 'train' on its first N tokens only (0: all 929k)")


def _data_root(root: str | None) -> Path:
    return data_root(root, DATASET)


@functools.lru_cache(maxsize=2)
def read_ptb(folder: str, stamp: tuple[float, ...]) -> Corpus:
    """The three files as one id stream; ``stamp`` (modification times) refreshes the cache."""
    tokens = {s: tokenize((Path(folder) / f).read_text(encoding="utf-8"), lowercase=False)
              for s, f in FILES.items()}
    vocab = [UNK, EOS] + [w for w in dict.fromkeys(tokens["train"]) if w not in (UNK, EOS)]
    index = {w: i for i, w in enumerate(vocab)}
    ids, bounds, start = [], {}, 0
    for split in ("train", "meta", "test"):
        ids += [index.get(w, 0) for w in tokens[split]]
        bounds[split] = (start, start + len(tokens[split]))
        start += len(tokens[split])
    return Corpus(torch.tensor(ids, dtype=torch.long), tuple(vocab), bounds)


class PTB(PydocLM):
    """Penn Treebank; loss normalised by ln(vocab) for the meta-learner, gamma 40 (paper)."""

    cheap_setup: bool = True  # 5 MB of text: `metalr validate` reads it to check batch sizes

    def __init__(self, **options: Any):
        """Options: see :class:`PTBOptions` (validated here: a bad or unknown one fails)."""
        o = PTBOptions(**options)
        # PydocLM.__init__ would build its own corpus; the files here are read in setup
        self.root = _data_root(o.root)
        self.bptt, self.eval_batch_size = o.bptt, o.eval_batch_size
        self.max_train_eval_tokens = o.max_train_eval_tokens
        self.device = torch.device("cpu")
        self.ids: dict[str, torch.Tensor] = {}
        self._batched: dict = {}
        self._current = None
        self._carry_out = None

    def check_files(self) -> None:
        """Raise a :class:`~metalr.engine.datafiles.MissingDataError` naming every missing file."""
        require(self.root, FILES.values(), "Penn Treebank",
                "ptb.*.txt from the simple-examples archive of Mikolov's RNNLM page")

    def setup(self, seed: int, device: torch.device) -> None:
        self.check_files()
        stamp = tuple((self.root / f).stat().st_mtime for f in FILES.values())
        self.corpus = read_ptb(str(self.root), stamp)
        self.vocab = self.corpus.vocab
        self.word_to_id = {w: i for i, w in enumerate(self.vocab)}
        self.spec = ModelSpec(input_shape=(self.bptt,), num_outputs=len(self.vocab),
                              kind="language-model")
        self.loss_scale = math.log(len(self.vocab))
        super().setup(seed, device)
