"""Sweep executors: where the points of a `metalr sweep` run."""

from metalr import hookimpl

from .local import LocalExecutor, LocalOptions


@hookimpl
def register_executors(register):
    register("local", LocalExecutor, options=LocalOptions,
             summary="a process pool on this machine: N workers, one thread each")
