"""The hooks a metalr plugin implements: one per component kind.

Every hook receives a ``register`` callback rather than returning its components, so that the
core owns naming, option schemas and duplicate detection (the style of simonw/llm)::

    from metalr import hookimpl

    @hookimpl
    def register_lr_policies(register):
        register("my-rule", MyRule, options=MyRuleOptions, summary="what it does")

``register(name, factory, options=None, summary="")``: ``factory`` builds the component from the
validated options (a pydantic model's fields, passed as keyword arguments); ``options`` is that
pydantic model, which is how ``metalr validate`` checks a recipe before any work is done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("metalr")
hookimpl = pluggy.HookimplMarker("metalr")

Register = Callable[..., None]


@hookspec
def register_tasks(register: Register) -> Any:
    """Register tasks: ``factory(**options)`` returns a :class:`metalr.contracts.protocols.Task`."""


@hookspec
def register_models(register: Register) -> Any:
    """Register models: ``factory(spec: ModelSpec, **options)`` returns an ``nn.Module``."""


@hookspec
def register_optimizers(register: Register) -> Any:
    """Register base optimizers: ``factory(params, **options)`` returns a ``torch.optim.Optimizer``.

    The policy sets the LR of every step, so ``lr`` is not one of the options.
    """


@hookspec
def register_lr_policies(register: Register) -> Any:
    """Register LR policies and meta-learners: ``factory(**options)`` returns an
    :class:`metalr.contracts.protocols.LRPolicy` (or
    :class:`metalr.contracts.protocols.HypergradientLearner`)."""


@hookspec
def register_trackers(register: Register) -> Any:
    """Register trackers: ``factory(**options)`` returns a
    :class:`metalr.contracts.protocols.Tracker`."""


@hookspec
def register_executors(register: Register) -> Any:
    """Register sweep executors: ``factory(**options)`` returns a
    :class:`metalr.contracts.protocols.Executor`, which runs the points of a sweep (a local process
    pool, a batch system)."""


@hookspec
def register_meta_objectives(register: Register) -> Any:
    """Register meta-objectives: ``factory(**options)`` returns a
    :class:`metalr.contracts.protocols.MetaObjective`, what a meta-update of a hypergradient learner
    minimises as a function of the LR (recipe key ``meta.objective``)."""


@hookspec
def register_net_formats(register: Register) -> Any:
    """Register net formats: ``factory(**options)`` returns a
    :class:`metalr.contracts.protocols.NetFormat`, which reads a foreign file of meta-learned nets
    (the authors' released MLR-SNet ``.pth``) wherever a net is named, and which ``metalr nets
    import`` converts to safetensors."""
