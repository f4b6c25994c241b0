"""Reading a recipe's YAML strictly: duplicate keys refused, aliases bounded, anchors unshared.

PyYAML's ``safe_load`` lets the last of two equal keys win silently, expands an alias bomb into
as much memory (and error text) as it asks for, and hands back anchored mappings as one shared
object, so that an override of one method would change every method that shares the anchor.
Here the document is composed into nodes first, and the node graph is walked once with a budget
before anything is constructed; the data handed back is a tree with no shared parts, and each
key's line is kept so that errors can name it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1_000_000
"""A recipe is a page of text; anything larger is a wrong file."""

MAX_NODES = 20_000
"""Nodes after aliases are expanded. The largest shipped recipe has a few hundred; a YAML alias
bomb (each level repeating the one below ten times) passes this within five levels."""

MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class YAMLProblem:
    path: str
    message: str
    line: int | None = None  # 0: the message names its lines itself


class YAMLLoadError(ValueError):
    """The file could not be read as a recipe document; carries every problem found."""

    def __init__(self, problems: list[YAMLProblem]):
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))


class _TooLarge(Exception):
    pass


def read_text(path: Path) -> str:
    """The file's text, or a one-line reason why it is not a recipe file.

    Only a regular file is read, and never more than :data:`MAX_BYTES` of it: a FIFO would
    block ``validate`` for ever and ``/dev/zero`` would be read until memory runs out. The file
    is opened without blocking and checked on the open descriptor, so nothing can swap it
    between the check and the read.
    """
    if path.is_dir():
        raise YAMLLoadError([YAMLProblem("", "is a folder, not a recipe file (give the .yaml "
                                              "file inside it)")])
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise YAMLLoadError([YAMLProblem("", "no such file")]) from None
    except OSError as exc:
        raise YAMLLoadError([YAMLProblem("", f"cannot read it: {exc.strerror or exc}")]) from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise YAMLLoadError([YAMLProblem("", f"is {_file_kind(mode)}, not a regular file: "
                                                  "give the recipe's .yaml file")])
        try:
            raw = f.read(MAX_BYTES + 1)
        except OSError as exc:
            raise YAMLLoadError([YAMLProblem("", f"cannot read it: {exc.strerror or exc}")]) \
                from None
    if len(raw) > MAX_BYTES:
        raise YAMLLoadError([YAMLProblem("", f"more than {MAX_BYTES:,} bytes: too large for a "
                                              "recipe; is this the right file?")])
    if b"\0" in raw:
        raise YAMLLoadError([YAMLProblem("", "a binary file, not a YAML recipe")])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YAMLLoadError([YAMLProblem("", f"not UTF-8 text (byte {exc.start}): a binary "
                                              "file, not a YAML recipe")]) from None


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def load_yaml(text: str) -> tuple[Any, dict[str, int]]:
    """Parse one YAML document: ``(data, {dotted key path: line})``.

    Raises :class:`YAMLLoadError` for a syntax error (its line), every duplicate key (both
    lines), or a document that expands beyond :data:`MAX_NODES`.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise YAMLLoadError([YAMLProblem("", f"not valid YAML: {_short(exc)}")]) from None
    except RecursionError:
        raise YAMLLoadError([YAMLProblem("", "nested too deeply to be a recipe")]) from None
    if node is None:
        return None, {}
    lines: dict[str, int] = {}
    problems: list[YAMLProblem] = []
    try:
        _walk(node, "", lines, problems, [0])
    except (_TooLarge, RecursionError):
        raise YAMLLoadError([YAMLProblem("", f"expands to more than {MAX_NODES:,} values "
                                              "through its aliases (*name): a recipe never "
                                              "needs that many; nested aliases?")]) from None
    if problems:
        raise YAMLLoadError(problems)
    try:
        data = yaml.SafeLoader("").construct_document(node)
    except yaml.YAMLError as exc:
        raise YAMLLoadError([YAMLProblem("", f"not valid YAML: {_short(exc)}")]) from None
    return unshare(data), lines


def unshare(data: Any) -> Any:
    """A copy in which no mapping or list appears twice (``copy.deepcopy`` keeps the sharing)."""
    if isinstance(data, dict):
        return {k: unshare(v) for k, v in data.items()}
    if isinstance(data, list):
        return [unshare(v) for v in data]
    return data


def _walk(node: yaml.Node, path: str, lines: dict[str, int], problems: list[YAMLProblem],
          count: list[int]) -> None:
    count[0] += 1
    if count[0] > MAX_NODES:
        raise _TooLarge
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, f"{path}.{i}", lines, problems, count)
    elif isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in _pairs(node, count):
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "<complex key>"
            child = f"{path}.{name}" if path else name
            line = key.start_mark.line + 1
            if name in seen:
                problems.append(YAMLProblem(child, f"duplicate key {name!r} on lines {seen[name]} "
                                                   f"and {line}: keep one", 0))
            seen[name] = line
            lines.setdefault(child, line)
            _walk(value, child, lines, problems, count)


def _pairs(node: yaml.MappingNode, count: list[int]) -> list[tuple[yaml.Node, yaml.Node]]:
    """The mapping's own keys; a merge (``<<: *base``) adds the keys it does not already have."""
    count[0] += 1
    if count[0] > MAX_NODES:
        raise _TooLarge
    own, merged = [], []
    for key, value in node.value:
        if key.tag == MERGE_TAG:
            sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for source in sources:
                if isinstance(source, yaml.MappingNode):
                    merged += _pairs(source, count)
        else:
            own.append((key, value))
    names = {k.value for k, _ in own if isinstance(k, yaml.ScalarNode)}
    # merged keys that the mapping overrides are not duplicates; among themselves the first wins
    extra, taken = [], set(names)
    for key, value in merged:
        if isinstance(key, yaml.ScalarNode) and key.value in taken:
            continue
        taken.add(key.value)
        extra.append((key, value))
    return own + extra


def _short(exc: yaml.YAMLError) -> str:
    """PyYAML's message in one line, with its line number, and never pages long."""
    text = " ".join(str(exc).split()).replace(' in "<unicode string>",', ",")
    return text if len(text) <= 300 else text[:300] + " ..."
