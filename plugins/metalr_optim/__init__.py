"""Base optimizers whose LR a policy sets every step: SGD (momentum, Nesterov) and Adam."""

from metalr import hookimpl

from .optimizers import AdamOptions, SGDOptions, build_adam, build_sgd


@hookimpl
def register_optimizers(register):
    register("sgd", build_sgd, options=SGDOptions, summary="torch.optim.SGD: momentum, nesterov, weight decay")
    register("adam", build_adam, options=AdamOptions, summary="torch.optim.Adam with the LR on top")
