"""scikit-learn's 8x8 digits: a real image task that ships with scikit-learn, no download."""

from metalr import hookimpl

from .model import CNNDigitsOptions, build_cnn_digits
from .task import Digits, DigitsOptions


@hookimpl
def register_tasks(register):
    register("digits", Digits, options=DigitsOptions, summary="sklearn digits, 8x8, 10 classes")


@hookimpl
def register_models(register):
    register("cnn-digits", build_cnn_digits, options=CNNDigitsOptions, summary="small 2D CNN")
