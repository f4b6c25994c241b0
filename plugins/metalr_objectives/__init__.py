"""Meta-objectives: what a meta-update of MLR-SNet minimises, as a function of the LR.

``one-step`` is Algorithm 1's (the engine's own :class:`metalr.engine.objectives.OneStep`, named
here); ``unroll`` looks K steps ahead (truncated backpropagation through K steps of the real
optimizer, made by higher's differentiable optimizers); ``averaged`` judges the step at a running
average of the weights; ``mean-step`` along the expected step, the batch noise's curvature
cancelled by a second batch.
"""

from metalr import hookimpl
from metalr.engine.objectives import OneStep

from .averaged import Averaged, AveragedOptions
from .mean_step import MeanStep
from .unroll import Unroll, UnrollOptions

__all__ = ["Averaged", "AveragedOptions", "MeanStep", "OneStep", "Unroll", "UnrollOptions"]


@hookimpl
def register_meta_objectives(register):
    register("one-step", OneStep,  # no options: the schema derived from OneStep() refuses any
             summary="the meta loss one step ahead (Algorithm 1, Eqs. 9-10)")
    register("unroll", Unroll, options=UnrollOptions,
             summary="the meta loss K steps ahead at one LR, differentiated through all K")
    register("averaged", Averaged, options=AveragedOptions,
             summary="the meta loss one step ahead at a running average of the weights")
    register("mean-step", MeanStep,
             summary="the meta loss one step ahead along the expected step (the batch noise's "
                     "curvature cancelled by a second batch)")
