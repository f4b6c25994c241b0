"""Online adaptive LR baselines of the paper's comparison: HD, L4 and RTHO.

Registered LR policies; each one's options are declared once, in the pydantic model next to its
rule (``metalr plugins`` lists them with their defaults):

- ``hd``: hypergradient descent (Baydin et al. 2018), its variant from the base optimizer.
- ``l4``: L4 (Rolinek & Martius 2018) over the base optimizer's own direction.
- ``rtho``: real-time forward-mode hypergradients (Franceschi et al. 2017); heavy-ball when the
  SGD base optimizer has momentum. Needs a meta split.
"""

from metalr import hookimpl

from .hd import HDOptions, HypergradientDescent
from .l4 import L4, L4Options
from .rtho import RTHO, MissingMetaSplitError, RTHOOptions

__all__ = [
    "L4",
    "RTHO",
    "HDOptions",
    "HypergradientDescent",
    "L4Options",
    "MissingMetaSplitError",
    "RTHOOptions",
]


@hookimpl
def register_lr_policies(register):
    register(
        "hd", HypergradientDescent, options=HDOptions,
        summary="hypergradient descent on the LR (SGD-HD, SGDN-HD, Adam-HD)",
    )
    register(
        "l4", L4, options=L4Options,
        summary="L4: Polyak-like step toward a forgotten minimum loss, over SGD or Adam",
    )
    register(
        "rtho", RTHO, options=RTHOOptions,
        summary="RTHO: real-time forward-mode hypergradient of a validation loss "
        "(needs a meta split)",
    )
