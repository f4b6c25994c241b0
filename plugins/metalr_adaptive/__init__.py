"""Online adaptive LR baselines of the paper's comparison: HD, L4 and RTHO.

Registered LR policies (options are the pydantic models next to each rule):

- ``hd``: hypergradient descent (Baydin et al. 2018). ``variant`` auto | sgd | sgdn | adam
  (auto: from the base optimizer), ``lr`` 1e-3, ``hyper_lr`` None (1e-3 for SGD / SGDN,
  1e-7 for Adam), ``max_lr`` 1.0.
- ``l4``: L4 (Rolinek & Martius 2018) over the base optimizer's own direction. ``alpha`` 0.15,
  ``gamma`` 0.9, ``init_factor`` 0.75, ``forget_time`` 1000, ``eps`` 1e-12, ``max_lr`` None.
- ``rtho``: real-time forward-mode hypergradients (Franceschi et al. 2017); heavy-ball when the
  SGD base optimizer has momentum. Needs a meta split. ``lr`` 0.1, ``hyper_lr`` 1e-5,
  ``max_lr`` None, ``update_every`` 1.
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
