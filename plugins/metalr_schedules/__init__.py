"""Hand-designed LR policies: a fixed LR and torch's classic schedules (the paper's baselines)."""

from metalr import hookimpl

from .fixed import FixedLR, FixedOptions
from .torch_schedules import (
    SGDR,
    WSD,
    CosineLR,
    CosineOptions,
    ExponentialLR,
    ExponentialOptions,
    MultiStepLR,
    MultiStepOptions,
    PlateauLR,
    PlateauOptions,
    SGDROptions,
    WSDOptions,
    default_milestones,
)

__all__ = [
    "SGDR", "CosineLR", "CosineOptions", "ExponentialLR", "ExponentialOptions", "FixedLR",
    "FixedOptions", "MultiStepLR", "MultiStepOptions", "PlateauLR", "PlateauOptions",
    "SGDROptions", "WSD", "WSDOptions", "default_milestones",
]


@hookimpl
def register_lr_policies(register):
    register("fixed", FixedLR, options=FixedOptions, summary="the same LR at every step")
    register("exponential", ExponentialLR, options=ExponentialOptions,
             summary="lr * gamma**epoch (torch ExponentialLR), paper: gamma 0.95")
    register("multistep", MultiStepLR, options=MultiStepOptions,
             summary="x factor at milestone epochs (torch MultiStepLR); /10 every 30% of the run")
    register("sgdr", SGDR, options=SGDROptions,
             summary="cosine with warm restarts per iteration (torch CosineAnnealingWarmRestarts)")
    register("cosine", CosineLR, options=CosineOptions,
             summary="one cosine over the whole run, per iteration or per epoch "
                     "(torch CosineAnnealingLR)")
    register("wsd", WSD, options=WSDOptions,
             summary="warm-up, stable, decay to 0 (linear, cosine or 1-sqrt) per iteration "
                     "(torch LambdaLR); default: the last 20% linear, MLR-SNet's cool-down")
    register("plateau", PlateauLR, options=PlateauOptions,
             summary="/4 when the validation metric stalls (torch ReduceLROnPlateau)")
