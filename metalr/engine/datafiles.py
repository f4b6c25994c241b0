"""Where a task's data files live, and the one error that says which are missing.

Nothing is downloaded: the user puts the files in place once (docs/paper.md). A task that reads
files names them up front in a ``check_files()`` method, which ``metalr validate`` calls (it is
cheap: nothing is opened), so every missing file is listed before a run is tracked instead of
the run dying in its first epoch. Plugin tasks use the same helpers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

DATA_ENV = "METALR_DATA"
"""The folder holding one subfolder per dataset (``$METALR_DATA/cifar10``, ...)."""

DEFAULT_BASE = "~/metalr-data"


class MissingDataError(FileNotFoundError):
    """Files a task needs are not where it looks; the message names the folder and the files."""


def data_root(root: str | None, subfolder: str) -> Path:
    """``root`` if given, else ``$METALR_DATA/<subfolder>``, else ``~/metalr-data/<subfolder>``."""
    if root:
        return Path(root).expanduser()
    base = os.environ.get(DATA_ENV) or DEFAULT_BASE
    return Path(base).expanduser() / subfolder


def require(root: Path, names: Iterable[str], dataset: str, hint: str = "") -> None:
    """Raise :class:`MissingDataError` listing every one of ``names`` (relative to ``root``,
    files or folders) that does not exist. One line, so ``metalr validate`` shows all of it."""
    names = list(names)
    missing = [n for n in names if not (root / n).exists()]
    if not missing:
        return
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    where = "" if root.is_dir() else " (the folder does not exist)"
    raise MissingDataError(
        f"{dataset} data missing in {root}{where}: {shown}. Put the files there (docs/paper.md"
        f"{', ' + hint if hint else ''}), or point task.options.root or ${DATA_ENV} (a folder "
        f"with one subfolder per dataset) at them; nothing is downloaded"
    )
