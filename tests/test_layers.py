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
    """module -> layer, layer -> the layers it may import (its own included)."""
    text = (ROOT / "docs" / "design.md").read_text()
    table = text[text.index("| layer | modules | may import |"):].split("\n\n")[0]
    of, may = {}, {}
    for row in table.splitlines()[2:]:
        layer, modules, allowed = (c.strip() for c in row.strip("|").split("|"))
        for module in re.findall(r"`([\w.]+)`", modules):
            assert module not in of, f"{module} is in two layers of the map"
            of[module] = layer
        may[layer] = ({layer} | {a.strip() for a in allowed.split(",")}
                      - {"nothing of metalr", "every layer"})
        if allowed == "every layer":
            may[layer] = {"*"}
    return of, may


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
    of, _ = layers()
    assert set(modules()) == set(of), (
        f"not on the map of docs/design.md: {sorted(set(modules()) - set(of))}; "
        f"on it but gone: {sorted(set(of) - set(modules()))}")


def test_no_module_imports_a_layer_above_its_own():
    of, may = layers()
    found = modules()
    wrong = []
    for name, path in sorted(found.items()):
        allowed = may[of[name]]
        for dep in imported(path, set(found)):
            if "*" not in allowed and of[dep] not in allowed:
                wrong.append(f"{name} ({of[name]}) imports {dep} ({of[dep]})")
    assert not wrong, "imports against the map of docs/design.md:\n" + "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path):
    """The scan reads imports inside functions too (so the check above can fail)."""
    probe = tmp_path / "x.py"
    probe.write_text("def f():\n    from metalr.report import render\n")
    assert imported(probe, {"report"}) == {"report"}
