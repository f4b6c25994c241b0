"""Recipes: YAML experiment descriptions, parsed into typed objects and checked as a whole.

Every problem of a recipe (and of its command-line overrides) is collected into one
:class:`RecipeError`, each with its dotted path, its line in the file, the bad value and the
nearest valid key or registered name, before any data is touched. The file is read strictly
(:mod:`metalr.contracts.yaml_loader`); the schema is :mod:`metalr.recipes.schema`; the checks that
build components are in :mod:`metalr.recipes.validation`, which this loader calls and which never
imports it.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Union

import torch
from pydantic import BaseModel, ValidationError

from metalr.contracts.problems import Problem, named_option
from metalr.contracts.registry import Registry, UnknownComponentError, get_registry
from metalr.contracts.yaml_loader import YAMLLoadError, load_yaml, read_text
from metalr.recipes.schema import (
    Recipe,
    check_name,
    type_members,
)

__all__ = ["RecipeError", "apply_overrides", "check_components", "check_semantics", "check_values",
           "load_recipe", "select_methods"]
"""The schema's names too, where the runner, the CLI and the tests have always imported them."""


class RecipeError(ValueError):
    """All problems of one recipe; the CLI prints them and exits with code 2."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source, self.problems = source, problems
        if len(problems) == 1 and not problems[0].path:  # the file itself: one line says it
            super().__init__(f"{source}: {problems[0]}")
            return
        lines = [f"{source}: {len(problems)} problem{'s' * (len(problems) != 1)}"]
        lines += [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


# -- loading -------------------------------------------------------------------------------

def load_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), registry: Registry | None = None,
    *, deep: bool = False, only: Sequence[str] = (), skip: Sequence[str] = (),
) -> Recipe:
    """Read, override, validate and resolve a recipe; raise :class:`RecipeError` listing all
    problems.

    ``deep`` also builds what the recipe names (policies, the model on torch's ``meta`` device,
    a task whose setup is cheap), opens net files and checks the tracking store and the output
    folder (:mod:`metalr.recipes.validation`): everything a run would otherwise find out after it
    had started tracking. ``metalr validate`` and ``metalr run`` ask for it.
    """
    source = str(path)
    try:
        data, lines = load_yaml(read_text(Path(path)))
    except YAMLLoadError as exc:
        raise RecipeError(source, [Problem(p.path, p.message, p.line)
                                   for p in exc.problems]) from None
    if not isinstance(data, dict):
        raise RecipeError(source, [Problem("", "a recipe is a mapping of keys (name, task, ...)")])
    _paths_next_to(data, Path(path).parent)
    problems, overridden = apply_overrides(data, overrides)
    problems += select_methods(data, only, skip)
    values = check_values(data)
    recipe, schema = None, []
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        schema += _pydantic_problems(exc, Recipe)
    registry = registry or get_registry()
    schema += check_components(data, registry)
    said = {p.path for p in values}  # pydantic's "should be finite" would repeat them
    problems += values + [p for p in schema if p.path not in said]
    if recipe is not None:
        problems += check_semantics(recipe, registry)
    if recipe is not None and deep:
        from metalr.recipes.validation import (
            check_deep,  # builds components: only once the shape is right
        )

        said = {p.path for p in problems}
        problems += [p for p in check_deep(recipe, data, registry)
                     if not any(_related(p.path, q) for q in said)]  # one message per problem
    if problems:
        raise RecipeError(source, [_with_line(p, lines, overridden) for p in problems])
    return recipe


def select_methods(data: dict[str, Any], only: Sequence[str] = (),
                   skip: Sequence[str] = ()) -> list[Problem]:
    """Keep the methods named by ``only`` (all when empty), then drop those of ``skip``: the
    command line's ``--only a,b`` / ``--skip c``. Done on the raw recipe, before validation, so a
    left-out method is neither checked nor run, and the resolved recipe lists what ran."""
    if not only and not skip:
        return []
    methods = data.get("methods")
    if not isinstance(methods, dict):
        return []  # the structural check reports it
    known = ", ".join(map(str, methods))
    problems = []
    for flag, names in (("--only", only), ("--skip", skip)):
        for name in names:
            if name not in methods:
                close = difflib.get_close_matches(name, list(map(str, methods)), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                problems.append(Problem("methods", f"{flag} {name!r} is not a method of this "
                                        f"recipe; {hint}its methods: {known}", 0))
    if problems:
        return problems
    kept = {k: v for k, v in methods.items() if (not only or k in only) and k not in skip}
    if not kept:
        return [Problem("methods", f"--only/--skip leave no method to run; its methods: {known}",
                        0)]
    data["methods"] = kept
    return []


def _paths_next_to(data: dict[str, Any], folder: Path) -> None:
    """Relative paths written in a recipe file mean the file or folder next to the recipe when
    there is one there (so a recipe runs from any folder); otherwise, like a path given as an
    override, they are relative to the working directory. Paths: ``meta.weights``, and strings
    of ``lr_policy.options`` (or their list items) with a ``/`` or a net file's suffix."""
    methods = data.get("methods")

    def beside(value: Any, any_string: bool) -> Any:
        if isinstance(value, list):
            return [beside(v, any_string) for v in value]
        if not isinstance(value, str) or Path(value).is_absolute():
            return value
        if not (any_string or "/" in value or value.endswith((".safetensors", ".pth"))):
            return value
        there = folder / value
        return str(there) if there.exists() else value

    for method in methods.values() if isinstance(methods, dict) else ():
        if not isinstance(method, dict):
            continue
        meta, policy = method.get("meta"), method.get("lr_policy")
        if isinstance(meta, dict) and "weights" in meta:
            meta["weights"] = beside(meta["weights"], True)
        options = policy.get("options") if isinstance(policy, dict) else None
        for key, value in options.items() if isinstance(options, dict) else ():
            options[key] = beside(value, False)


def _related(a: str, b: str) -> bool:
    """One key path is the other or lies inside it."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _with_line(problem: Problem, lines: dict[str, int], overridden: set[str]) -> Problem:
    """The problem with the line of its key (or of the nearest key above it) in the file."""
    if problem.line is not None or not problem.path:
        return problem
    parts = problem.path.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in overridden:
            return problem  # the value came from the command line, not the file
        if prefix in lines:
            return Problem(problem.path, problem.message, lines[prefix])
    return problem


def apply_overrides(
    data: dict[str, Any], overrides: list[str] | tuple[str, ...],
) -> tuple[list[Problem], set[str]]:
    """Apply ``dotted.key=value`` overrides in place; values are read as YAML (typed).

    Returns the problems and the key paths set. ``data`` must be a tree with no shared parts
    (:func:`metalr.contracts.yaml_loader.unshare`), so that an override changes exactly the key it
    names.
    """
    problems, overridden = [], set()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(Problem(item, "an override is written key.path=value", 0))
            continue
        parts = key.split(".")
        if any(not p.strip() for p in parts):
            problems.append(Problem(item, f"malformed override: {key!r} has an empty key part; "
                                          "write key.path=value, e.g. train.epochs=20", 0))
            continue
        try:
            value = load_yaml(raw)[0] if raw else ""
        except YAMLLoadError as exc:
            if not all(p.message.startswith("not valid YAML") for p in exc.problems):
                problems += [Problem(key, f"override value: {p.message}", 0) for p in exc.problems]
                continue
            value = raw  # not YAML: taken as the string it is
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None and isinstance(node, dict):
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(Problem(".".join(parts[: i + 1]),
                                        f"is {_clip(child)}, not a mapping: cannot set {key}", 0))
                break
            node = child
        else:
            node[parts[-1]] = value
            overridden.add(key)
    return problems, overridden


def _clip(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def check_values(data: Any, path: str = "") -> list[Problem]:
    """Values no key accepts: infinities and NaN (``.inf``, ``.nan``), anywhere in the recipe,
    plugin options included, and booleans where the schema asks for a number."""
    problems = []
    if isinstance(data, float) and not math.isfinite(data):
        problems.append(Problem(path, f"{data!r} is not a finite number"))
    elif isinstance(data, dict):
        for key, value in data.items():
            problems += check_values(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            problems += check_values(value, f"{path}.{i}")
    if not path:
        problems += bool_problems(data, Recipe)
    return problems


def bool_problems(data: Any, annotation: Any, path: str = "") -> list[Problem]:
    """``true``/``false`` given where ``annotation`` wants a number: pydantic would read it as
    1 or 0 (``epochs: true`` would train one epoch)."""
    tp = annotation
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if isinstance(data, bool):
        return [] if _accepts_bool(tp) else (
            [Problem(path, f"{data!r}: a number is needed here, not a boolean")]
            if _numeric(tp) else [])
    members = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    problems: list[Problem] = []
    for member in members:
        origin = typing.get_origin(member)
        if isinstance(member, type) and issubclass(member, BaseModel) and isinstance(data, dict):
            for key, value in data.items():
                field = member.model_fields.get(key)
                if field is not None:
                    problems += bool_problems(value, field.annotation,
                                              f"{path}.{key}" if path else str(key))
            return problems
        if origin is dict and isinstance(data, dict):
            value_type = typing.get_args(member)[1]
            for key, value in data.items():
                problems += bool_problems(value, value_type, f"{path}.{key}" if path else str(key))
            return problems
        if origin is list and isinstance(data, list):
            (item_type,) = typing.get_args(member)
            for i, value in enumerate(data):
                problems += bool_problems(value, item_type, f"{path}.{i}")
            return problems
    return problems


def _accepts_bool(tp: Any) -> bool:
    return any(m is bool or m is Any or m is object for m in type_members(tp))


def _numeric(tp: Any) -> bool:
    return any(m in (int, float) for m in type_members(tp))


def _refs(data: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """``(path, kind, raw reference)`` of every component a (possibly invalid) recipe names."""
    refs = [("task", "task", data.get("task")), ("model", "model", data.get("model"))]
    methods = data.get("methods")
    if isinstance(methods, dict):
        for name, method in methods.items():
            if isinstance(method, dict):
                refs.append((f"methods.{name}.optimizer", "optimizer", method.get("optimizer")))
                refs.append((f"methods.{name}.lr_policy", "lr_policy", method.get("lr_policy")))
                meta = method.get("meta")
                if isinstance(meta, dict) and "objective" in meta:
                    refs.append((f"methods.{name}.meta.objective", "meta_objective",
                                 meta["objective"]))
                episodes = meta.get("episode_tasks") if isinstance(meta, dict) else None
                for i, spec in enumerate(episodes if isinstance(episodes, list) else []):
                    if isinstance(spec, dict):
                        refs += [(f"methods.{name}.meta.episode_tasks.{i}.{kind}", kind,
                                  spec[kind]) for kind in ("task", "model", "optimizer")
                                 if kind in spec]
    sweep = data.get("sweep")
    if isinstance(sweep, dict):
        refs.append(("sweep.executor", "executor", sweep.get("executor", "local")))
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
        problems += bool_problems(options, component.options, f"{path}.options")
        try:
            component.options.model_validate(options)
        except ValidationError as exc:
            problems += _pydantic_problems(exc, component.options, prefix=f"{path}.options",
                                           owner=raw["name"], given=options)
        except Exception as exc:  # a plugin's validator that raised something else
            message = f"{type(exc).__name__}: {exc}"[:400]
            key = named_option(options, message)
            problems.append(Problem(f"{path}.options" + (f".{key}" if key else ""), message))
    return problems


def _option_fields(policy: str, registry: Registry) -> list[str] | None:
    try:
        options = registry.get("lr_policy", policy).options
    except UnknownComponentError:
        return None  # reported by check_components
    return list(options.model_fields) if options is not None else None


def check_semantics(recipe: Recipe, registry: Registry) -> list[Problem]:
    """Checks across keys, once the recipe has the right shape."""
    problems = []
    for name, method in recipe.methods.items():
        try:  # it becomes a run name, a folder and param keys
            check_name(name)
        except ValueError as exc:
            problems.append(Problem(f"methods.{name}", f"{_clip(name)}: {exc}"))
        meta = method.meta
        late = [e for e in meta.save_epochs if not 1 <= e <= recipe.train.epochs]
        if late:
            problems.append(Problem(f"methods.{name}.meta.save_epochs",
                                    f"{late} outside 1..train.epochs ({recipe.train.epochs})"))
        if method.tune is not None:
            opts = _option_fields(method.lr_policy.name, registry)
            if opts is not None and method.tune not in opts:
                close = difflib.get_close_matches(method.tune, opts, n=1)
                hint = (f"; did you mean {close[0]!r}?" if close else
                        f"; options: {', '.join(opts)}" if opts else
                        f"; {method.lr_policy.name!r} takes no options")
                problems.append(Problem(f"methods.{name}.tune",
                                        f"{method.tune!r} is not an option of "
                                        f"{method.lr_policy.name!r}{hint}"))
        if meta.weights is not None and not Path(meta.weights).is_file():
            what = ("a folder, not a file" if Path(meta.weights).is_dir() else
                    "not a regular file (a pipe or device?)" if Path(meta.weights).exists() else
                    "no such file")
            problems.append(Problem(f"methods.{name}.meta.weights", f"{meta.weights!r}: {what}"))
    problems += _search_method(recipe)
    if recipe.train.device == "cuda" and not torch.cuda.is_available():
        problems.append(Problem("train.device", "'cuda': no CUDA device here; use auto or cpu"))
    return problems


def _search_method(recipe: Recipe) -> list[Problem]:
    """The method whose metric a search optimises must be one of the recipe's (named when
    there are several)."""
    search, methods = recipe.search, list(recipe.methods)
    if search is None:
        return []
    if search.method is None and len(methods) > 1:
        return [Problem("search.method", f"the recipe has {len(methods)} methods; name the one "
                        f"whose metric is the objective (its methods: {', '.join(methods)})")]
    if search.method is not None and search.method not in methods:
        close = difflib.get_close_matches(search.method, methods, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return [Problem("search.method", f"{_clip(search.method)} is not a method of this "
                        f"recipe; {hint}its methods: {', '.join(methods)}")]
    return []


def _pydantic_problems(exc: ValidationError, model: type[BaseModel], prefix: str = "",
                       owner: str = "", given: Mapping[str, Any] | None = None) -> list[Problem]:
    """One problem per pydantic error, at its dotted path. ``owner`` names the component whose
    options ``model`` checks; ``given`` (its options as written) lets an error about the options
    as a whole be put at the key it is about (:func:`named_option`)."""
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        path = ".".join([prefix] + loc if prefix else loc)
        if err["type"] == "extra_forbidden":
            known = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.5)
            hint = (f"; did you mean {close[0]!r}?" if close else
                    f"; known keys: {', '.join(known)}" if known else
                    f"; {owner!r} takes no options" if owner and len(loc) == 1 else "")
            problems.append(Problem(path, f"unknown key{hint}"))
        elif err["type"] == "missing":
            problems.append(Problem(path, "required key is missing"))
        else:
            message = err["msg"].removeprefix("Value error, ")
            value = err["input"]
            key = named_option(given, message) if given and not loc else None
            if key is not None:
                path, value = f"{path}.{key}", given[key]
            problems.append(Problem(path, f"{_clip(value)}: {message}"))
    return problems


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the member type's name to the location of errors inside a Union
    return isinstance(part, str) and ("[" in part or part in _TYPE_TAGS)


_TYPE_TAGS = {"ComponentRef", "MetaConfig", "TuningConfig", "SweepConfig", "str", "int", "float",
              "bool", "none", "list", "dict"}


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
        members = [a for a in typing.get_args(tp)
                   if isinstance(a, type) and issubclass(a, BaseModel)]
        return members[0] if members else tp
    return tp
