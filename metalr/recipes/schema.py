"""The recipe's typed form: the pydantic models a YAML recipe is parsed into.

Kept apart from the loader (:mod:`metalr.recipes.loader`) so that the checks that build what a
recipe names (:mod:`metalr.recipes.validation`) read the schema without importing the loader that
calls them. What a field means beyond its type lives here too: the device ``auto`` stands for
(:func:`resolve_device`), the plain types an option's annotation admits (:func:`type_members`).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

INT64_MAX = 2**63 - 1
SEED_MAX = 2**32 - 1
"""Seeds stay in numpy's range, which leaves torch room for the offsets the engine adds."""

Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Count = Annotated[int, Field(gt=0, le=INT64_MAX)]
"""A positive count (epochs, batch size, steps) that torch can hold in an int64."""

NAME_MAX = 100


def check_name(value: str) -> str:
    """A name that becomes a folder, a run name and a tracked key: not ``.``/``..``, not long."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ValueError("a name is letters, digits and `_ . -` (it names runs, folders and "
                         "tracked parameters)")
    if set(value) == {"."}:
        raise ValueError("a name of only dots would name the folder above; use letters")
    if len(value) > NAME_MAX:
        raise ValueError(f"a name is at most {NAME_MAX} characters (it becomes a folder name)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ComponentRef(_Strict):
    """A registered component and its options; a bare string is shorthand for ``{name: ...}``."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class EpisodeTask(_Strict):
    """A task whose whole runs an episodic meta-learner trains on (``meta.episode_tasks``), so that
    it meta-trains once over a set of tasks instead of on the recipe's own."""

    task: ComponentRef
    model: ComponentRef
    epochs: Count = Field(description="each episode's length on this task")
    batch_size: Count | None = Field(None, description="unset: train.batch_size")
    optimizer: ComponentRef | None = Field(None, description="unset: the method's optimizer")


class MetaConfig(_Strict):
    """How a meta-learner's parameters theta are learned (an error on a policy without theta)."""

    mode: Literal["meta-train", "meta-test"] = "meta-train"
    t_val: Count | None = Field(None, description="steps between meta-updates; unset: twice per "
                                "epoch")
    batch_size: Count = Field(128, description="meta batch size")
    lr: float = Field(1e-3, gt=0, description="Adam LR of the meta optimizer")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay of the meta optimizer")
    save_epochs: list[int] = Field(default_factory=list,
                                   description="epochs at which theta is saved")
    save_phases: int | None = Field(
        None, ge=2, description="save the k nets of the paper's ceiling rule for this run's "
        "epochs (k = 3 over 60 epochs: 1, 30, 60); follows train.epochs")
    weights: str | None = Field(None, description="safetensors file to start theta from")
    objective: ComponentRef = Field(
        default_factory=lambda: ComponentRef(name="one-step"),
        description="what a meta-update minimises (a meta_objective component): one-step "
        "(Algorithm 1), averaged (one step ahead at a running average of the weights) or "
        "unroll (k steps ahead)")
    episode_tasks: list[EpisodeTask] = Field(
        default_factory=list, description="episodic meta-learners (mlrsnet-es, lr-controller): "
        "the tasks their episodes run, in turn, two episodes each (an antithetic pair shares its "
        "task and seed); empty: the recipe's own task, model and epochs")


class Method(_Strict):
    """One way of training: a base optimizer and the policy that sets its LR."""

    optimizer: ComponentRef
    lr_policy: ComponentRef
    meta: MetaConfig = Field(default_factory=MetaConfig)
    tune: str | None = Field(
        None, description="an lr_policy option (e.g. lr) chosen on the meta split from tuning.grid"
    )
    tune_grid: list[float] | None = Field(None, min_length=1, description="unset: tuning.grid")


class TuningConfig(_Strict):
    """The DeepOBS protocol over several seeds: each grid value runs with every tuning seed on the
    meta split; values that diverged or ended at chance on any seed are rejected, the best mean of
    the rest is kept (see :meth:`metalr.running.results.RunSummary.grid_points`), then all seeds
    rerun.

    The choice is made on the meta (validation) split, never on the test split. One seed is not
    enough: a large LR can win on one seed and diverge on the next.
    """

    grid: list[float] = Field(
        default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0], min_length=1
    )
    seeds: list[Seed] | None = Field(
        None, min_length=1, description="unset: the first two of train.seeds, or [seed, seed + 1] "
        "when there is one seed"
    )
    epochs: Count | None = Field(None, description="unset: train.epochs")

    @model_validator(mode="after")
    def _distinct_seeds(self) -> TuningConfig:
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"tuning.seeds {self.seeds} repeats a seed")
        return self


class TrainConfig(_Strict):
    epochs: Count
    seed: Seed = 0
    seeds: list[Seed] = Field(
        default_factory=list, description="run every method with each seed; empty: [seed]"
    )
    split_seed: Seed | None = Field(
        None, description="seed of the data split (task.setup) for every run; unset: the run's "
        "seed. Fixes the split while train.seeds vary the rest (a published protocol)")
    order_seed: Seed | None = Field(
        None, description="seed of the batch order and meta-batch draws for every run; unset: "
        "the run's seed (which still decides initial weights)")
    batch_size: Count = 128
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(
        None, ge=1, le=4096, description="torch CPU threads; unset: torch's default. 1 suits tiny "
        "models and shared machines, where spinning threads of several processes thrash"
    )
    eval_every: Count = Field(1, description="epochs between evaluations")
    explode_factor: float = Field(
        1e3, gt=1, description="a batch loss above this times the first one counts as divergence"
    )

    @property
    def all_seeds(self) -> list[int]:
        return list(self.seeds) or [self.seed]
    clip_grad_norm: float | None = Field(None, gt=0,
                                         description="unset: the task's default, if any")
    amp: bool = Field(False, description="mixed precision: model forwards under autocast "
                      "(base step, meta loss); the LR, the policy and the virtual step stay fp32")
    amp_dtype: Literal["bfloat16", "float16"] = Field(
        "bfloat16", description="autocast dtype; float16 adds a GradScaler (older GPUs)")
    channels_last: bool = Field(False, description="NHWC weights and image batches (convnets "
                                "on tensor-core GPUs)")
    deterministic: bool = Field(
        False, description="deterministic algorithms (and CUBLAS_WORKSPACE_CONFIG) instead of "
        "cuDNN autotuning; slower on GPU")
    keep_freed_memory: bool = Field(
        True, description="CPU runs on Linux (glibc): keep memory that tensors free for the "
        "next step instead of returning it to the kernel (faster steps; process-wide)")


SWEEP_FIXED = ("name", "output_dir", "tracking", "sweep")
"""Keys a sweep may not vary: they decide where the sweep's points and runs are kept."""


def check_varied_key(key: str, what: str, example: str, block: str, fixed: Sequence[str],
                     kept: str) -> None:
    """A key a sweep's grid or a search's space varies: a dotted recipe key, and none of those
    that name where the block's points or trials are kept."""
    if not key or any(not p.strip() for p in key.split(".")):
        raise ValueError(f"{key!r}: {what} is a dotted recipe key, e.g. {example}")
    if key.split(".")[0] in fixed:
        raise ValueError(f"{key!r}: a {block} cannot vary {', '.join(fixed)} "
                         f"(they name where its {kept} are kept)")


def check_seeds_apart(seeds: Sequence[int], keys: Iterable[str], block: str, where: str) -> None:
    """A block's own seeds: distinct, and not given twice (as seeds and as a varied key)."""
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{block}.seeds {seeds} repeats a seed")
    if seeds and any(k in ("train.seed", "train.seeds") for k in keys):
        raise ValueError(f"give the seeds either as {block}.seeds or in {block}.{where}, not both")


class SweepConfig(_Strict):
    """A grid over dotted recipe keys, each point run with every seed (:mod:`metalr.running.sweep`)."""

    grid: dict[str, list[Any]] = Field(min_length=1, description="dotted.key: [values, ...]")
    seeds: list[Seed] = Field(default_factory=list, description="each point runs once per seed "
                              "(train.seed); empty: the recipe's train.seeds inside every point")
    executor: ComponentRef = Field(default_factory=lambda: ComponentRef(name="local"))

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            check_varied_key(key, "a grid key", "train.epochs", "sweep", SWEEP_FIXED, "points")
            if not values:
                raise ValueError(f"{key!r}: give at least one value")
            if len({repr(v) for v in values}) != len(values):
                raise ValueError(f"{key!r}: {values} repeats a value")
        return grid

    @model_validator(mode="after")
    def _seeds(self) -> SweepConfig:
        check_seeds_apart(self.seeds, self.grid, "sweep", "grid")
        return self


SEARCH_FIXED = (*SWEEP_FIXED, "search")
"""Keys a search may not vary: where its trials are kept, and the blocks that plan runs."""

Scalar = Union[bool, int, float, str, None]
"""What an Optuna categorical holds (and what a recipe key set to a choice can take)."""


class Distribution(_Strict):
    """A searched key's values: ``{low, high}`` (ints when both are ints; ``log`` for a log
    scale, as an LR wants) or ``{choices: [...]}``."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = Field(False, description="sample on a log scale (low > 0)")
    choices: list[Scalar] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("give either {low, high[, log]} or {choices: [...]}, not both")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"choices {self.choices} repeat a value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give {low, high} (a range, log: true for a log scale) or "
                             "{choices: [...]}")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high}); one value is "
                             "{choices: [value]}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got {self.low})")
        return self

    @property
    def integer(self) -> bool:
        return self.choices is None and isinstance(self.low, int) and isinstance(self.high, int)

    def values(self) -> list[Any]:
        """The values that bound the space: the range's ends, or every choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


class _Named(_Strict):
    """A named choice: ``tpe`` is shorthand for ``{name: tpe}``, null for ``{name: none}``."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if value is None:
            return {"name": "none"}
        return {"name": value} if isinstance(value, str) else value


class SamplerConfig(_Named):
    """Optuna's sampler: TPE, or random; seeded, so that a search asks the same values again."""

    name: Literal["tpe", "random"] = "tpe"
    seed: Seed = Field(0, description="the sampler's seed (a resumed search adds the number of "
                       "trials it holds, so it does not ask the first trials' values again)")
    startup_trials: int = Field(10, ge=0, le=100_000,
                                description="tpe: random trials before TPE models the results")


class PrunerConfig(_Named):
    """Optuna's pruner on the per-epoch metric: median (a trial below the median of the trials
    before it at the same step stops), or none."""

    name: Literal["median", "none"] = "median"
    startup_trials: int = Field(5, ge=0, le=100_000,
                                description="trials finished before any is pruned")
    warmup_steps: int = Field(0, ge=0, le=INT64_MAX,
                              description="evaluations of a trial before it can be pruned")


class SearchConfig(_Strict):
    """An Optuna search over dotted recipe keys (:mod:`metalr.running.search`): each trial runs
    with every seed, its objective the mean final metric of ``method`` over them."""

    space: dict[str, Distribution] = Field(min_length=1, description="dotted.key: distribution")
    trials: Count = Field(description="trials in all; a search run again adds the missing ones")
    seeds: list[Seed] = Field(default_factory=list, description="every trial runs with these "
                              "seeds (train.seeds); empty: the recipe's train.seeds")
    method: str | None = Field(None, description="the method whose metric is the objective; "
                               "unset: the recipe's only method")
    split: Literal["meta", "test"] = Field(
        "meta", description="the split whose final metric is the objective (and is pruned on): "
        "the held-out meta split, as tuning chooses; test only to reproduce a protocol that did")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    executor: ComponentRef = Field(default_factory=lambda: ComponentRef(name="local"))
    parallel: int | None = Field(None, ge=1, le=1024, description="trials asked and run at "
                                 "once; unset: the local executor's workers, else 1")

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        for key in space:
            check_varied_key(key, "a searched key", "methods.fixed.lr_policy.options.lr",
                             "search", SEARCH_FIXED, "trials")
        return space

    @model_validator(mode="after")
    def _seeds(self) -> SearchConfig:
        check_seeds_apart(self.seeds, self.space, "search", "space")
        return self


class Recipe(_Strict):
    name: str
    description: str = ""
    task: ComponentRef
    model: ComponentRef
    train: TrainConfig
    methods: dict[str, Method] = Field(min_length=1)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    tracking: ComponentRef | None = Field(
        default_factory=lambda: ComponentRef(name="mlflow"), description="`none` runs untracked"
    )
    output_dir: str = Field("metalr-out", min_length=1,
                            description="runs write their files under this folder")
    sweep: SweepConfig | None = Field(None, description="`metalr sweep` runs each grid point")
    search: SearchConfig | None = Field(None, description="`metalr search` runs Optuna trials")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @model_validator(mode="before")
    @classmethod
    def _tracking_none(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("tracking") in ("none", None) and "tracking" in data:
            data = {**data, "tracking": None}
        return data

    @model_validator(mode="after")
    def _default_tuning_seeds(self) -> Recipe:
        """Fill in tuning.seeds, so that the resolved recipe says which seeds tuning used."""
        if self.tuning.seeds is None:
            seeds = self.train.all_seeds
            self.tuning.seeds = seeds[:2] if len(seeds) > 1 else [seeds[0], seeds[0] + 1]
        return self

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default filled in: what is logged as the run's parameters."""
        data = self.model_dump(mode="json")
        data["tracking"] = data["tracking"] or "none"
        if data["sweep"] is None:  # a plain recipe's resolved form is as before sweeps existed
            del data["sweep"]
        if data["search"] is None:
            del data["search"]
        return data


def type_members(tp: Any) -> tuple[Any, ...]:
    """The plain types an annotation admits (``int | None`` -> ``(int, NoneType)``)."""
    if typing.get_origin(tp) is Annotated:
        return type_members(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (Union, types.UnionType):
        return tuple(m for a in typing.get_args(tp) for m in type_members(a))
    return (tp,)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
