"""Factories and option models of the optimizers practitioners pick instead of a schedule.

The third-party packages are optional (the ``alternatives`` extra) and imported only when a
factory runs, so a missing one fails that run with :class:`MissingExtraError`, not the loading
of every plugin. As with every metalr optimizer the policy sets the LR each step; here that LR
is the method's own LR multiplier, so use the ``fixed`` policy with :data:`RECOMMENDED_LR`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

EXTRA = "metalr[alternatives]"

RECOMMENDED_LR: dict[str, float] = {
    "sgd-schedulefree": 1.0,
    "adamw-schedulefree": 0.0025,
    "prodigy": 1.0,
    "dadapt-sgd": 1.0,
    "dadapt-adam": 1.0,
    "dog": 1.0,
}
"""The LR (multiplier) each method is meant to run with: the ``lr`` of the ``fixed`` policy.

The optimizers are also built with it, as a placeholder: the policy overwrites it before the
first step (and Prodigy / D-Adaptation reject the zero placeholder the core optimizers use)."""


class MissingExtraError(ImportError):
    """An optional package of the ``alternatives`` extra is not installed."""


def _require(module: str, distribution: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise  # the package is there but broken: show its own error
        raise MissingExtraError(
            f"optimizer {name!r} needs the package {distribution!r}: "
            f"pip install '{EXTRA}' (or pip install {distribution})"
        ) from exc


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (the package's default 0)")


class _AdamLike(_Options):
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)

    @model_validator(mode="after")
    def _betas_in_range(self):
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        return self


class _ScheduleFree(BaseModel):
    warmup_steps: int = Field(0, ge=0, description="linear LR warmup, the only schedule it needs")
    r: float = Field(0.0, ge=0, description="polynomial weighting power of the average")
    weight_lr_power: float = Field(2.0, ge=0, description="average weights ~ lr**power in warmup")


class SGDScheduleFreeOptions(_Options, _ScheduleFree):
    momentum: float = Field(0.9, gt=0, lt=1, description="interpolation between x and z")


class AdamWScheduleFreeOptions(_AdamLike, _ScheduleFree):
    @model_validator(mode="after")
    def _beta1_positive(self):
        if self.betas[0] <= 0:  # eval() divides by beta1 to recover the averaged weights
            raise ValueError("schedule-free AdamW needs betas[0] > 0")
        return self


class ProdigyOptions(_AdamLike):
    beta3: float | None = Field(None, gt=0, lt=1, description="None: sqrt(beta2)")
    decouple: bool = Field(True, description="AdamW-style decoupled weight decay")
    use_bias_correction: bool = False
    safeguard_warmup: bool = False
    d0: float = Field(1e-6, gt=0, description="initial distance estimate")
    d_coef: float = Field(1.0, gt=0, description="scales the estimate; the preferred knob to tune")
    growth_rate: float = Field(float("inf"), gt=1, description="cap on the estimate's growth")


class DAdaptSGDOptions(_Options):
    momentum: float = Field(
        0.0, ge=0, lt=1,
        description="the package's default 0; 0.9 diverged on small CPU tasks here",
    )
    d0: float = Field(1e-6, gt=0)
    growth_rate: float = Field(float("inf"), gt=1)


class DAdaptAdamOptions(_AdamLike):
    decouple: bool = Field(False, description="AdamW-style decoupled weight decay")
    use_bias_correction: bool = False
    d0: float = Field(1e-6, gt=0)
    growth_rate: float = Field(float("inf"), gt=1)


class DoGOptions(_Options):
    reps_rel: float = Field(
        1e-6, gt=0, description="first step's relative size; the authors suggest 1e-4 with BN")
    eps: float = Field(1e-8, gt=0)
    init_eta: float | None = Field(None, gt=0, description="explicit first step size")
    layerwise: bool = Field(False, description="L-DoG: one step size per tensor")
    averager_gamma: float = Field(8.0, ge=0, description="polynomial-decay averaging power")


Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


def build_sgd_schedulefree(params: Params, **options: Any) -> torch.optim.Optimizer:
    """Schedule-Free SGD; evaluate in ``optimizer.eval()`` mode (the engine does)."""
    sf = _require("schedulefree", "schedulefree", "sgd-schedulefree")
    return sf.SGDScheduleFree(params, lr=RECOMMENDED_LR["sgd-schedulefree"], **options)


def build_adamw_schedulefree(params: Params, **options: Any) -> torch.optim.Optimizer:
    """Schedule-Free AdamW, the AlgoPerf 2024 self-tuning winner."""
    sf = _require("schedulefree", "schedulefree", "adamw-schedulefree")
    return sf.AdamWScheduleFree(params, lr=RECOMMENDED_LR["adamw-schedulefree"], **options)


def build_prodigy(params: Params, **options: Any) -> torch.optim.Optimizer:
    """Prodigy: Adam with a learned distance-to-solution step size."""
    prodigyopt = _require("prodigyopt", "prodigyopt", "prodigy")
    return prodigyopt.Prodigy(params, lr=RECOMMENDED_LR["prodigy"], **options)


def build_dadapt_sgd(params: Params, **options: Any) -> torch.optim.Optimizer:
    dadaptation = _require("dadaptation", "dadaptation", "dadapt-sgd")
    return dadaptation.DAdaptSGD(params, lr=RECOMMENDED_LR["dadapt-sgd"], **options)


def build_dadapt_adam(params: Params, **options: Any) -> torch.optim.Optimizer:
    dadaptation = _require("dadaptation", "dadaptation", "dadapt-adam")
    return dadaptation.DAdaptAdam(params, lr=RECOMMENDED_LR["dadapt-adam"], **options)


def build_dog(params: Params, **options: Any) -> torch.optim.Optimizer:
    """DoG with polynomial-decay averaging; ``eval()`` swaps the average in. Options: see
    :class:`DoGOptions` (``layerwise`` picks L-DoG; the rest go to the optimizer)."""
    o = DoGOptions(**options)
    _require("dog", "dog-optimizer", "dog")
    from .averaging import AveragedDoG, AveragedLDoG

    cls = AveragedLDoG if o.layerwise else AveragedDoG
    return cls(params, lr=RECOMMENDED_LR["dog"], **o.model_dump(exclude={"layerwise"}))
