"""Base optimizers whose LR a policy sets every step: SGD (momentum, Nesterov), Adam and AdamW."""

from metalr import hookimpl

from .optimizers import AdamOptions, AdamWOptions, SGDOptions, build_adam, build_adamw, build_sgd


@hookimpl
def register_optimizers(register):
    register("sgd", build_sgd, options=SGDOptions, summary="torch.optim.SGD: momentum, nesterov, weight decay")
    register("adam", build_adam, options=AdamOptions, summary="torch.optim.Adam with the LR on top")
    register("adamw", build_adamw, options=AdamWOptions,
             summary="torch.optim.AdamW (decoupled weight decay) with the LR on top")
