"""Small models for the CPU tasks: an MLP and a 1D CNN."""

from metalr import hookimpl

from .cnn1d import CNN1DOptions, build_cnn1d
from .mlp import MLPOptions, build_mlp


@hookimpl
def register_models(register):
    register("mlp", build_mlp, options=MLPOptions, summary="fully connected, ReLU")
    register("cnn1d", build_cnn1d, options=CNN1DOptions, summary="1D convolutions for sequences")
