"""Word-level language modelling on text that ships with CPython (``pydoc_data.topics``)."""

from metalr import hookimpl

from .model import LSTMLMOptions, build_lstm_lm
from .task import PydocLM, PydocLMOptions


@hookimpl
def register_tasks(register):
    register(
        "pydoc-lm",
        PydocLM,
        options=PydocLMOptions,
        summary="word-level LM on CPython's pydoc topics (PTB-style, offline)",
    )


@hookimpl
def register_models(register):
    register("lstm-lm", build_lstm_lm, options=LSTMLMOptions, summary="LSTM LM, tied embeddings")
