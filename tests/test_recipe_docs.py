"""docs/recipes.md documents every key the shipped recipes use, so it cannot fall behind them.

Each recipe under recipes/ is walked along the recipe schema (``metalr.recipes.loader.Recipe``):
every dotted key path it writes (a method's name generalised to ``<name>``, the keys of a sweep grid
included) must appear in backticks in docs/recipes.md, and every option it gives a component
must be listed in that component's row of the "Component options" table, whose rows must in
turn match the components' schemas (names and defaults).
"""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from metalr.contracts.registry import UnknownComponentError
from metalr.contracts.yaml_loader import load_yaml, read_text
from metalr.recipes.schema import ComponentRef, Recipe

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "recipes.md").read_text()
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
KIND = {"task": "task", "model": "model", "tracking": "tracker", "optimizer": "optimizer",
        "lr_policy": "lr_policy", "executor": "executor", "objective": "meta_objective"}


def _unwrap(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return _unwrap(members[0]) if len(members) == 1 else tp
    return tp


def _walk(data: Any, model: Any, path: str, keys: set[str],
          options: set[tuple[str, str, str, str]]) -> None:
    """Collect schema key paths into ``keys`` and (path, kind, component, option) into
    ``options``; a component reference ends the path (its options are the component's)."""
    tp = _unwrap(model)
    if tp is ComponentRef:
        ref = {"name": data} if isinstance(data, str) else data
        for option in (ref.get("options") or {}) if isinstance(ref, dict) else ():
            options.add((path, KIND[path.rsplit(".", 1)[-1]], ref["name"], option))
        return
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(data, dict):
        for key, value in data.items():
            sub = f"{path}.{key}" if path else key
            keys.add(sub)
            _walk(value, tp.model_fields[key].annotation, sub, keys, options)
    elif path == "methods" and isinstance(data, dict):
        for value in data.values():
            _walk(value, typing.get_args(tp)[1], "methods.<name>", keys, options)
    elif path == "sweep.grid" and isinstance(data, dict):
        for key in data:  # a grid key is a recipe key path: documented like any other
            parts = key.split(".")
            if parts[0] == "methods" and len(parts) > 1:
                parts[1] = "<name>"
            cut = parts.index("options") if "options" in parts else len(parts)
            keys.add(".".join(parts[:cut]))


def used() -> tuple[dict[str, set[Path]], dict[tuple[str, str, str], set[Path]]]:
    keys: dict[str, set[Path]] = {}
    options: dict[tuple[str, str, str], set[Path]] = {}
    for path in RECIPES:
        found, opts = set(), set()
        _walk(load_yaml(read_text(path))[0], Recipe, "", found, opts)
        for key in found:
            keys.setdefault(key, set()).add(path)
        for _, kind, name, option in opts:
            options.setdefault((kind, name, option), set()).add(path)
    return keys, options


def documented_rows() -> dict[tuple[str, str], str]:
    """The "Component options" table: (kind, name) -> its options cell."""
    section = DOC.split("## Component options", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\w+) \| `([^`]+)` \| (.*) \|$", section, re.MULTILINE)
    return {(kind, name): cell for kind, name, cell in rows}


def render_default(field: Any) -> str:
    """A default as the table writes it: JSON, ``required`` when there is none."""
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "required"
    return json.dumps(value)


def test_the_recipes_are_found():
    assert len(RECIPES) > 30 and any("sweep" in p.read_text() for p in RECIPES)


def test_every_key_a_recipe_uses_is_in_recipes_md():
    keys, _ = used()
    missing = {k: sorted(str(p.relative_to(REPO)) for p in paths)[:2]
               for k, paths in keys.items() if f"`{k}`" not in DOC}
    assert not missing, ("docs/recipes.md lacks these keys (add a row to its key table): "
                         + "; ".join(f"`{k}` (used in {', '.join(p)})"
                                     for k, p in sorted(missing.items())))


def test_every_option_a_recipe_gives_a_component_is_in_its_row():
    _, options = used()
    rows = documented_rows()
    missing = sorted(f"{kind} `{name}` option `{option}` ({min(paths).name})"
                     for (kind, name, option), paths in options.items()
                     if f"`{option}`" not in rows.get((kind, name), ""))
    assert not missing, ("docs/recipes.md, Component options: add to the rows: "
                         + "; ".join(missing))


def test_the_component_options_table_matches_the_schemas(registry):
    rows = documented_rows()
    assert len(rows) > 30
    wrong = []
    for (kind, name), cell in rows.items():
        try:
            schema = registry.get(kind, name).options
        except UnknownComponentError:
            continue  # an optional plugin not installed here
        written = dict(re.findall(r"`([^`]+)` ((?:\[[^\]]*\]|\"[^\"]*\"|[^,\[\"]+?))(?:, |$)",
                                  cell))
        actual = {k: render_default(f) for k, f in schema.model_fields.items()}
        if written != actual:
            wrong.append(f"{kind} `{name}`: table {written}, schema {actual}")
    assert not wrong, "docs/recipes.md, Component options, stale rows: " + "; ".join(wrong)
