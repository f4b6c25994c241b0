"""Sweep executors: where the points of a `metalr sweep` run."""

from metalr import hookimpl

from .local import LocalExecutor, LocalOptions
from .submitit_executor import MissingExtraError, SubmititExecutor, SubmititOptions

__all__ = ["MissingExtraError"]


@hookimpl
def register_executors(register):
    register("local", LocalExecutor, options=LocalOptions,
             summary="a process pool on this machine: N workers, one thread each")
    register("submitit", SubmititExecutor, options=SubmititOptions,
             summary="one job array on SLURM through submitit (cluster: local to try it here); "
                     "needs the submitit extra")
