"""A recipe's problems as its user reads them: a dotted key path, a line, a message.

Shared by the loader's checks (:mod:`metalr.recipes.loader`) and those that build components
(:mod:`metalr.recipes.validation`), which both put a plugin's error at the option it is about.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One problem at a dotted key path; ``line`` is the key's line in the file (0: none to name,
    because the value came from a command-line override or the message names its lines)."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return text + (f" (line {self.line})" if self.line else "")


def named_option(options: Mapping[str, Any], message: str, sole: bool = True) -> str | None:
    """The one given option an error message is about, or None: the option whose key it names,
    else whose value it quotes, else (with ``sole``) the only option given.

    A plugin's check of its options as a whole, or its factory, raises without a location; this
    lets the message name the key to fix (``...options.nets``, not ``...options``).
    """
    keys = [str(k) for k in options]
    named = [k for k in keys if re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", message)]
    if len(named) == 1:
        return named[0]
    quoted = [k for k in keys if any(len(v) >= 3 and v in message for v in _strings(options[k]))]
    if len(quoted) == 1:
        return quoted[0]
    return keys[0] if sole and len(keys) == 1 else None


def _strings(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return [str(value)] if isinstance(value, (str, int, float)) and not isinstance(value, bool) \
        else []
