"""Word-level language modelling: CPython's own text (``pydoc-lm``, offline) and Penn Treebank
(``ptb``, from its files)."""

from metalr import hookimpl

from .model import LSTMLMOptions, build_lstm_lm
from .ptb import PTB, PTBOptions
from .task import PydocLM, PydocLMOptions


@hookimpl
def register_tasks(register):
    register(
        "pydoc-lm",
        PydocLM,
        options=PydocLMOptions,
        summary="word-level LM on CPython's pydoc topics (PTB-style, offline)",
    )
    register("ptb", PTB, options=PTBOptions,
             summary="Penn Treebank word LM from ptb.*.txt; meta split = its validation file")


@hookimpl
def register_models(register):
    register("lstm-lm", build_lstm_lm, options=LSTMLMOptions, summary="LSTM LM, tied embeddings")
