"""Meta-objectives: what a meta-update of MLR-SNet minimises, as a function of the LR.

``one-step`` is Algorithm 1's (the engine's own :class:`metalr.engine.objectives.OneStep`, named
here); ``unroll`` looks K steps ahead (truncated backpropagation through K steps of the real
optimizer, made by higher's differentiable optimizers).
"""

from metalr import hookimpl
from metalr.engine.objectives import OneStep

from .averaged import Averaged, AveragedOptions
from .unroll import Unroll, UnrollOptions

__all__ = ["Averaged", "AveragedOptions", "OneStep", "Unroll", "UnrollOptions"]


@hookimpl
def register_meta_objectives(register):
    register("one-step", OneStep,  # no options: the schema derived from OneStep() refuses any
             summary="the meta loss one step ahead (Algorithm 1, Eqs. 9-10)")
    register("unroll", Unroll, options=UnrollOptions,
             summary="the meta loss K steps ahead at one LR, differentiated through all K")
    register("averaged", Averaged, options=AveragedOptions,
             summary="the meta loss one step ahead at a running average of the weights")
