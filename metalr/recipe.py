"""Recipes: YAML experiment descriptions, parsed into typed objects and checked as a whole.

Every problem of a recipe (and of its command-line overrides) is collected into one
:class:`RecipeError`, each with its dotted path, the bad value and the nearest valid key or
registered name, before any data is touched.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from metalr.plugins import Registry, UnknownComponentError, get_registry


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentRef(_Strict):
    """A registered component and its options; a bare string is shorthand for ``{name: ...}``."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class MetaConfig(_Strict):
    """How a meta-learner's parameters theta are learned (ignored by policies without theta)."""

    mode: Literal["meta-train", "meta-test"] = "meta-train"
    t_val: int | None = Field(None, gt=0, description="steps between meta-updates; unset: twice per epoch")
    batch_size: int = Field(128, gt=0, description="meta batch size")
    lr: float = Field(1e-3, gt=0, description="Adam LR of the meta optimizer")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay of the meta optimizer")
    save_epochs: list[int] = Field(default_factory=list, description="epochs at which theta is saved")
    save_phases: int | None = Field(
        None, ge=2, description="save the k nets of the paper's ceiling rule for this run's "
        "epochs (k = 3 over 60 epochs: 1, 30, 60); follows train.epochs")
    weights: str | None = Field(None, description="safetensors file to start theta from")


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
    the rest is kept (see :meth:`metalr.results.RunSummary.grid_points`), then all seeds rerun.

    The choice is made on the meta (validation) split, never on the test split. One seed is not
    enough: a large LR can win on one seed and diverge on the next.
    """

    grid: list[float] = Field(
        default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0], min_length=1
    )
    seeds: list[int] | None = Field(
        None, min_length=1, description="unset: the first two of train.seeds, or [seed, seed + 1] "
        "when there is one seed"
    )
    epochs: int | None = Field(None, gt=0, description="unset: train.epochs")

    @model_validator(mode="before")
    @classmethod
    def _seed_alias(cls, data: Any) -> Any:
        """``tuning.seed: s`` (deprecated) is ``tuning.seeds: [s]``."""
        if not isinstance(data, dict) or "seed" not in data:
            return data
        data = dict(data)
        seed = data.pop("seed")
        if seed is None:
            return data
        if data.get("seeds") is not None:
            raise ValueError("give tuning.seeds only (tuning.seed is its deprecated one-seed form)")
        warnings.warn("tuning.seed is deprecated: write tuning.seeds: [seed] (tuning over one "
                      "seed can choose a value that diverges on the others)", FutureWarning,
                      stacklevel=2)
        data["seeds"] = [seed]
        return data

    @model_validator(mode="after")
    def _distinct_seeds(self) -> TuningConfig:
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"tuning.seeds {self.seeds} repeats a seed")
        return self


class TrainConfig(_Strict):
    epochs: int = Field(gt=0)
    seed: int = 0
    seeds: list[int] = Field(
        default_factory=list, description="run every method with each seed; empty: [seed]"
    )
    batch_size: int = Field(128, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads; unset: torch's default. 1 suits tiny models "
        "and shared machines, where spinning threads of several processes thrash"
    )
    eval_every: int = Field(1, gt=0, description="epochs between evaluations")
    explode_factor: float = Field(
        1e3, gt=1, description="a batch loss above this times the first one counts as divergence"
    )

    @property
    def all_seeds(self) -> list[int]:
        return list(self.seeds) or [self.seed]
    clip_grad_norm: float | None = Field(None, gt=0, description="unset: the task's default, if any")


class Recipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    task: ComponentRef
    model: ComponentRef
    train: TrainConfig
    methods: dict[str, Method] = Field(min_length=1)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    tracking: ComponentRef | None = Field(
        default_factory=lambda: ComponentRef(name="mlflow"), description="`none` runs untracked"
    )
    output_dir: str = Field("metalr-out", description="runs write their files under this folder")

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
        return data


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class RecipeError(ValueError):
    """All problems of one recipe; the CLI prints them and exits with code 2."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source, self.problems = source, problems
        lines = [f"{source}: {len(problems)} problem{'s' * (len(problems) != 1)}"]
        lines += [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


# -- loading -------------------------------------------------------------------------------

def load_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), registry: Registry | None = None
) -> Recipe:
    """Read, override, validate and resolve a recipe; raise :class:`RecipeError` listing all problems."""
    source = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise RecipeError(source, [Problem("", "no such file")]) from None
    except yaml.YAMLError as exc:
        raise RecipeError(source, [Problem("", f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise RecipeError(source, [Problem("", "a recipe is a mapping of keys (name, task, ...)")])
    problems = apply_overrides(data, overrides)
    recipe = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems += _pydantic_problems(exc, Recipe)
    registry = registry or get_registry()
    problems += check_components(data, registry)
    if recipe is not None:
        problems += check_semantics(recipe, registry)
    if problems:
        raise RecipeError(source, problems)
    return recipe


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> list[Problem]:
    """Apply ``dotted.key=value`` overrides in place; values are read as YAML (typed)."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(Problem(item, "an override is written key.path=value"))
            continue
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node, parts = data, key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None and isinstance(node, dict):
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(Problem(".".join(parts[: i + 1]),
                                        f"is {child!r}, not a mapping: cannot set {key}"))
                break
            node = child
        else:
            node[parts[-1]] = value
    return problems


def _refs(data: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """``(path, kind, raw reference)`` of every component a (possibly invalid) recipe names."""
    refs = [("task", "task", data.get("task")), ("model", "model", data.get("model"))]
    methods = data.get("methods")
    if isinstance(methods, dict):
        for name, method in methods.items():
            if isinstance(method, dict):
                refs.append((f"methods.{name}.optimizer", "optimizer", method.get("optimizer")))
                refs.append((f"methods.{name}.lr_policy", "lr_policy", method.get("lr_policy")))
    if data.get("tracking", "mlflow") not in ("none", None):
        refs.append(("tracking", "tracker", data.get("tracking", "mlflow")))
    return refs


def check_components(data: dict[str, Any], registry: Registry) -> list[Problem]:
    """Check that every named component exists and that its options fit its schema.

    Works on the raw recipe, so that these problems are reported together with structural ones.
    """
    problems = []
    for path, kind, raw in _refs(data):
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            continue  # the structural check reports it
        try:
            component = registry.get(kind, raw["name"])
        except UnknownComponentError as exc:
            problems.append(Problem(f"{path}.name", f"{raw['name']!r}: {exc}"))
            continue
        options = raw.get("options", {})
        if component.options is None or not isinstance(options, dict):
            continue
        try:
            component.options.model_validate(options)
        except ValidationError as exc:
            problems += _pydantic_problems(exc, component.options, prefix=f"{path}.options")
    return problems


def _option_fields(policy: str, registry: Registry) -> list[str] | None:
    try:
        options = registry.get("lr_policy", policy).options
    except UnknownComponentError:
        return None  # reported by check_components
    return list(options.model_fields) if options is not None else None


_METHOD_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_semantics(recipe: Recipe, registry: Registry) -> list[Problem]:
    """Checks across keys, once the recipe has the right shape."""
    problems = []
    for name, method in recipe.methods.items():
        if not _METHOD_NAME.fullmatch(name):  # it becomes a run name, a folder and param keys
            problems.append(Problem(f"methods.{name}", "a method name is letters, digits and "
                                    "`_ . -` (it names runs, folders and tracked parameters)"))
        meta = method.meta
        late = [e for e in meta.save_epochs if not 1 <= e <= recipe.train.epochs]
        if late:
            problems.append(Problem(f"methods.{name}.meta.save_epochs",
                                    f"{late} outside 1..train.epochs ({recipe.train.epochs})"))
        if method.tune is not None:
            opts = _option_fields(method.lr_policy.name, registry)
            if opts is not None and method.tune not in opts:
                close = difflib.get_close_matches(method.tune, opts, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; options: {', '.join(opts)}"
                problems.append(Problem(f"methods.{name}.tune",
                                        f"{method.tune!r} is not an option of "
                                        f"{method.lr_policy.name!r}{hint}"))
        if meta.weights is not None and not Path(meta.weights).is_file():
            problems.append(Problem(f"methods.{name}.meta.weights", f"{meta.weights!r}: no such file"))
    if recipe.train.device == "cuda" and not torch.cuda.is_available():
        problems.append(Problem("train.device", "'cuda': no CUDA device here; use auto or cpu"))
    return problems


def _pydantic_problems(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        path = ".".join([prefix] + loc if prefix else loc)
        if err["type"] == "extra_forbidden":
            known = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            problems.append(Problem(path, f"unknown key{hint}"))
        elif err["type"] == "missing":
            problems.append(Problem(path, "required key is missing"))
        else:
            problems.append(Problem(path, f"{err['input']!r}: {err['msg']}"))
    return problems


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the member type's name to the location of errors inside a Union
    return isinstance(part, str) and ("[" in part or part in _TYPE_TAGS)


_TYPE_TAGS = {"ComponentRef", "MetaConfig", "TuningConfig", "str", "int", "float", "bool", "none", "list", "dict"}


def _fields_at(model: Any, loc: list[str]) -> list[str]:
    """The keys a model accepts at a location, for did-you-mean hints."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field_info = current.model_fields.get(part)
            current = field_info.annotation if field_info else None
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
        return members[0] if members else tp
    return tp


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
