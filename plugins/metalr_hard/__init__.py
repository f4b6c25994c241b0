"""Hard tasks for LR schedules: each breaks a heuristic that works on the CPU suite.

``seq-recall`` (with the ``gru`` and ``lstm`` models) starts on a loss plateau;
``noisy-labels`` punishes late in the run what a short probe rewards early; ``deep-mlp`` is a
plain deep net whose usable LR moves as it trains; ``char-lm`` has an easy first phase and a
hard second one; ``shifted`` tests on another distribution than the meta split shows;
``regression`` has a loss in the units of its targets. docs/hard-tasks.md has the details.
"""

from metalr import hookimpl

from .charlm import CharLM, CharLMOptions
from .deep import DeepMLPOptions, build_deep_mlp
from .noisy import NoisyLabels, NoisyLabelsOptions
from .recurrent import RecurrentOptions, build_gru, build_lstm
from .regression import Regression, RegressionOptions
from .sequences import SeqRecall, SeqRecallOptions
from .shifted import Shifted, ShiftedOptions


@hookimpl
def register_tasks(register):
    register("seq-recall", SeqRecall, options=SeqRecallOptions,
             summary="recall marked tokens from early in a 40-step sequence (RNN plateau)")
    register("noisy-labels", NoisyLabels, options=NoisyLabelsOptions,
             summary="mnist1d or digits with 30% of training labels flipped; clean test")
    register("shifted", Shifted, options=ShiftedOptions,
             summary="long-tailed (or translated) training data, balanced clean test")
    register("regression", Regression, options=RegressionOptions,
             summary="Friedman #1, MSE in target units, metric RMSE")
    register("char-lm", CharLM, options=CharLMOptions,
             summary="character LM on CPython's pydoc text, metric bits per char")


@hookimpl
def register_models(register):
    register("gru", build_gru, options=RecurrentOptions, summary="GRU sequence classifier")
    register("lstm", build_lstm, options=RecurrentOptions, summary="LSTM sequence classifier")
    register("deep-mlp", build_deep_mlp, options=DeepMLPOptions,
             summary="deep plain MLP: no normalisation, no residuals, default init")
