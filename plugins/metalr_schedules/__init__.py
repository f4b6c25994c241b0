"""Hand-designed LR policies: a fixed LR (more schedules join in the comparison suite)."""

from metalr import hookimpl

from .fixed import FixedLR, FixedOptions


@hookimpl
def register_lr_policies(register):
    register("fixed", FixedLR, options=FixedOptions, summary="the same LR at every step")
