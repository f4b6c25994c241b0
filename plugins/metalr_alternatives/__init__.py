"""Today's alternatives to a tuned schedule: Schedule-Free, Prodigy, D-Adaptation and DoG.

Optional: the packages come with ``pip install metalr[alternatives]`` and are imported only when
one of these optimizers is built. Pair each with the ``fixed`` policy at the method's own LR
(:data:`RECOMMENDED_LR`: 1.0, or 0.0025 for Schedule-Free AdamW).
"""

from metalr import hookimpl

from .optimizers import (
    RECOMMENDED_LR,
    AdamWScheduleFreeOptions,
    DAdaptAdamOptions,
    DAdaptSGDOptions,
    DoGOptions,
    MissingExtraError,
    ProdigyOptions,
    SGDScheduleFreeOptions,
    build_adamw_schedulefree,
    build_dadapt_adam,
    build_dadapt_sgd,
    build_dog,
    build_prodigy,
    build_sgd_schedulefree,
)

__all__ = ["RECOMMENDED_LR", "MissingExtraError"]


@hookimpl
def register_optimizers(register):
    register("sgd-schedulefree", build_sgd_schedulefree, options=SGDScheduleFreeOptions,
             summary="Schedule-Free SGD (schedulefree); fixed lr 1.0")
    register("adamw-schedulefree", build_adamw_schedulefree, options=AdamWScheduleFreeOptions,
             summary="Schedule-Free AdamW (schedulefree); fixed lr 0.0025")
    register("prodigy", build_prodigy, options=ProdigyOptions,
             summary="Prodigy (prodigyopt); fixed lr 1.0")
    register("dadapt-sgd", build_dadapt_sgd, options=DAdaptSGDOptions,
             summary="D-Adaptation SGD (dadaptation); fixed lr 1.0")
    register("dadapt-adam", build_dadapt_adam, options=DAdaptAdamOptions,
             summary="D-Adaptation Adam (dadaptation); fixed lr 1.0")
    register("dog", build_dog, options=DoGOptions,
             summary="DoG evaluated at its polynomial-decay average (dog-optimizer); fixed lr 1.0")
