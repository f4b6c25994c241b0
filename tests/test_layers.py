"""The map of docs/design.md held against the code: every module of metalr/ is in one layer of
its table, and no module imports one of a layer above its own (imports inside functions
included: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "metalr"


def layers() -> tuple[dict[str, str], dict[str, set[str]]]:
    """place -> layer (a folder as ``name/``, a top-level module by name), layer -> the layers it
    may import (its own included)."""
    text = (ROOT / "docs" / "design.md").read_text()
    table = text[text.index("| layer | where | owns | may import |"):].split("\n\n")[0]
    of, may = {}, {}
    for row in table.splitlines()[2:]:
        layer, places, _, allowed = (c.strip() for c in row.strip("|").split("|"))
        for place in re.findall(r"`([\w./]+)`", places):
            assert place not in of, f"{place} is in two layers of the map"
            of[place] = layer
        may[layer] = ({layer} | {a.strip() for a in allowed.split(",")}
                      - {"nothing of metalr", "every layer"})
        if allowed == "every layer":
            may[layer] = {"*"}
    return of, may


def layer_of(module: str, of: dict[str, str]) -> str | None:
    """The layer of a module: its folder's (``engine.probe`` is in ``engine/``) or its own."""
    folder = module.split(".")[0] + "/"
    return of.get(folder) if "." in module or folder in of else of.get(module)


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if name != "__init__":
            found[name.removesuffix(".__init__")] = path
    return found


def imported(path: Path, known: set[str]) -> set[str]:
    """The metalr modules a file imports (``from metalr import x`` counts as module x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("metalr."):
                short = name.removeprefix("metalr.")
                if short in known:
                    out.add(short)
    return out


def test_every_module_is_on_the_map():
    """Each module is in a layer's folder or is a top-level module the map names; each place the
    map names exists."""
    of, _ = layers()
    found = modules()
    assert not [m for m in found if layer_of(m, of) is None], (
        f"not on the map of docs/design.md: {[m for m in found if layer_of(m, of) is None]}")
    places = {m.split(".")[0] + "/" if "." in m or (PACKAGE / m).is_dir() else m for m in found}
    assert set(of) <= places, f"on the map but gone: {sorted(set(of) - places)}"


def test_no_module_imports_a_layer_above_its_own():
    of, may = layers()
    found = modules()
    wrong = []
    for name, path in sorted(found.items()):
        mine = layer_of(name, of)
        for dep in imported(path, set(found)):
            theirs = layer_of(dep, of)
            if "*" not in may[mine] and theirs not in may[mine]:
                wrong.append(f"{name} ({mine}) imports {dep} ({theirs})")
    assert not wrong, "imports against the map of docs/design.md:\n" + "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path):
    """The scan reads imports inside functions too, by module and by package (so the check above
    can fail), and places a module by its folder."""
    probe = tmp_path / "x.py"
    probe.write_text("def f():\n    from metalr.reporting.html import render\n"
                     "    from metalr.engine import probe\n")
    known = {"reporting.html", "engine", "engine.probe"}
    assert imported(probe, known) == known
    of, _ = layers()
    assert layer_of("engine.probe", of) == "engine" and layer_of("cli", of) == "top"
    assert layer_of("integrations.timm", of) == "scheduler" and layer_of("nowhere", of) is None
