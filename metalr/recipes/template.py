"""``metalr new-plugin NAME``: a plugin package that installs, registers and passes its tests.

A third-party author starts from working code rather than from prose: a task on the helper base
class the built-in tasks use, a model factory, an LR policy, the entry point that makes metalr
find them, an example recipe, and a test that holds each component to ``metalr.testing``'s
conformance checks. Every file is plain text to edit; nothing here is imported by the package.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*([-_][A-Za-z0-9]+)*")


class TemplateError(ValueError):
    """A name that cannot become a package, or a folder that is already there."""


def names(name: str) -> dict[str, str]:
    """The distribution, module and component-name prefix made from ``name``.

    ``metalr-acme`` gives distribution ``metalr-acme``, module ``metalr_acme`` and components
    ``acme-blobs``, ``acme-mlp``, ``acme-warmup``; a name without the ``metalr-`` prefix keeps
    the whole name as the prefix.
    """
    if not NAME_RE.fullmatch(name):
        raise TemplateError(f"{name!r}: a plugin name is letters and digits joined by - or _, "
                            "starting with a letter (e.g. metalr-acme)")
    module = name.lower().replace("-", "_")
    if keyword.iskeyword(module) or module == "metalr":
        raise TemplateError(f"{name!r}: the module would be {module!r}; pick another name, "
                            "e.g. metalr-acme")
    prefix = re.sub(r"^metalr[-_]", "", name.lower()).replace("_", "-")
    return {"dist": name, "module": module, "prefix": prefix}


def new_plugin(name: str, out: str | Path = ".") -> Path:
    """Write the package ``<out>/<name>/`` and return its folder; refuse an existing folder."""
    values = names(name)
    folder = Path(out) / name
    if folder.exists():
        raise TemplateError(f"{folder} already exists; pass another --out or remove it")
    for rel, text in FILES.items():
        path = folder / Template(rel).substitute(values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(text).substitute(values))
    return folder


PYPROJECT = '''\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "metalr components: a task, a model and an LR policy"
requires-python = ">=3.10"
dependencies = ["metalr"]

[project.optional-dependencies]
test = ["pytest>=7.4"]

# This is what makes metalr find the components: one entry point in the `metalr` group, naming
# the module whose hook functions register them. Reinstall after changing it.
[project.entry-points.metalr]
$prefix = "$module"

[tool.setuptools.packages.find]
include = ["$module*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

README = '''\
# $dist

metalr components: task `$prefix-blobs`, model `$prefix-mlp`, LR policy `$prefix-warmup`.

```sh
pip install -e .            # registers the `metalr` entry point
metalr plugins              # lists the three components, source $dist:$prefix
pytest                      # metalr.testing's conformance checks
metalr run examples/recipe.yaml
```

See metalr's docs/plugins.md for what each hook receives and what the engine calls.
'''

INIT = '''\
"""Hook implementations: metalr calls these once, when it first needs a component."""

from metalr import hookimpl

from .model import MLPOptions, build_mlp
from .policy import WarmupDecay, WarmupOptions
from .task import Blobs, BlobsOptions


@hookimpl
def register_tasks(register):
    register("$prefix-blobs", Blobs, options=BlobsOptions, summary="Gaussian blobs (generated)")


@hookimpl
def register_models(register):
    register("$prefix-mlp", build_mlp, options=MLPOptions, summary="an MLP over flat inputs")


@hookimpl
def register_lr_policies(register):
    register("$prefix-warmup", WarmupDecay, options=WarmupOptions,
             summary="linear warm-up, then linear decay to 0")
'''

TASK = '''\
"""A task on metalr's in-memory helper: implement ``load()`` and set ``spec``; the base class
gives the seeded, disjoint train/meta split, batches, the loss and ``evaluate``."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from metalr.contracts.protocols import ModelSpec
from metalr.engine.data import TensorClassificationTask


class BlobsOptions(BaseModel):
    """What a recipe may write under `task.options`; `metalr validate` checks it."""

    model_config = ConfigDict(extra="forbid")
    meta_size: int = Field(100, ge=0, description="training samples held out as the meta set")
    samples: int = Field(1000, ge=50, description="training + meta samples")
    data_seed: int = Field(0, ge=0, description="seed of the dataset itself (fixed across runs)")


class Blobs(TensorClassificationTask):
    """Three Gaussian blobs in 16 dimensions.

    ``spec.input_shape`` is the shape of one sample (no batch dimension): the built-in ``mlp``
    flattens it, ``cnn1d`` wants ``(channels, length)``, image models ``(C, H, W)``.
    One task object serves every method of a run seed (``setup(seed, ...)`` once per seed), so
    keep no per-run state here; batch order comes from the generator the engine passes in.
    """

    spec = ModelSpec(input_shape=(16,), num_outputs=3)

    def __init__(self, **options: Any):  # declared once, in BlobsOptions; read here
        o = BlobsOptions(**options)
        super().__init__(o.meta_size)
        self.samples, self.data_seed = o.samples, o.data_seed

    def load(self):
        gen = torch.Generator().manual_seed(self.data_seed)
        centres = 2.5 * torch.randn(3, 16, generator=gen)

        def draw(n: int):
            y = torch.randint(3, (n,), generator=gen)
            return centres[y] + torch.randn(n, 16, generator=gen), y

        return draw(self.samples), draw(self.samples // 4)  # (train + meta), test
'''

MODEL = '''\
"""A model factory: ``factory(spec, **options) -> nn.Module``, sized from the task's spec."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from metalr.contracts.protocols import ModelSpec


class MLPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(32, ge=1, description="width of the hidden layer")


def build_mlp(spec: ModelSpec, **options: Any) -> nn.Module:
    hidden = MLPOptions(**options).hidden
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(spec.input_shape), hidden), nn.ReLU(),
                         nn.Linear(hidden, spec.num_outputs))
'''

POLICY = '''\
"""An LR policy: ``start(run)`` once, ``lr(ctx)`` every step, ``end_epoch`` after each epoch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from metalr.contracts.protocols import RunInfo, StepContext


class WarmupOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(0.1, gt=0, description="the peak LR")
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of the run spent warming up")


class WarmupDecay:
    """Linear warm-up to ``lr``, then linear decay towards 0 at the last step.

    ``start`` sets all it needs from the run, so its run state (what a checkpoint keeps of
    it: metalr.contracts.protocols.Resumable) is empty; a rule that carries a value from step to
    step returns it from ``run_state`` and sets it back in ``load_run_state``.
    """

    def __init__(self, **options: Any):
        o = WarmupOptions(**options)
        self.peak, self.warmup = o.lr, o.warmup

    def start(self, run: RunInfo) -> None:
        self.total = run.total_steps
        self.warm = max(1, round(self.warmup * self.total))

    def lr(self, ctx: StepContext) -> float:
        ramp = min(1.0, (ctx.step + 1) / self.warm)
        return self.peak * ramp * (1 - ctx.step / self.total)

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        pass

    def run_state(self) -> dict[str, Any]:
        return {}

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        pass
'''

TEST = '''\
"""metalr's conformance checks, run on this package's components through the registry (the
entry point must be installed: `pip install -e .`)."""

from pathlib import Path

from metalr import get_registry
from metalr.recipes.loader import load_recipe
from metalr.testing import check_component


def test_task_conforms():
    check_component(get_registry().get("task", "$prefix-blobs"), {"meta_size": 50})


def test_model_learns():
    check_component(get_registry().get("model", "$prefix-mlp"), {"hidden": 16})


def test_policy_steers():
    check_component(get_registry().get("lr_policy", "$prefix-warmup"), {"lr": 0.1})


def test_example_recipe_validates(tmp_path):
    recipe = Path(__file__).parents[1] / "examples" / "recipe.yaml"
    load_recipe(recipe, [f"output_dir={tmp_path}"], deep=True)
'''

RECIPE = '''\
name: $prefix-example
task: {name: $prefix-blobs, options: {meta_size: 100}}
model: {name: $prefix-mlp, options: {hidden: 32}}
train: {epochs: 5, seeds: [0, 1, 2], batch_size: 64, threads: 1}
methods:
  warmup:
    optimizer: {name: sgd, options: {momentum: 0.9}}
    lr_policy: {name: $prefix-warmup, options: {lr: 0.1}}
  fixed:
    optimizer: {name: sgd, options: {momentum: 0.9}}
    lr_policy: {name: fixed, options: {lr: 0.05}}
tracking: none
output_dir: metalr-out
'''

FILES: dict[str, str] = {
    "pyproject.toml": PYPROJECT,
    "README.md": README,
    "$module/__init__.py": INIT,
    "$module/task.py": TASK,
    "$module/model.py": MODEL,
    "$module/policy.py": POLICY,
    "tests/test_$module.py": TEST,
    "examples/recipe.yaml": RECIPE,
}
"""Relative path -> text; ``$dist``, ``$module`` and ``$prefix`` are substituted in both."""
