"""MNIST-1D (Greydanus 2020): generated offline by the `mnist1d` package, no download."""

from metalr import hookimpl

from .task import MNIST1D, MNIST1DOptions


@hookimpl
def register_tasks(register):
    register("mnist1d", MNIST1D, options=MNIST1DOptions, summary="MNIST-1D, 10 classes, length 40")
