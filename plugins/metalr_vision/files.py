"""Where a dataset's files live, and the one error that says which are missing.

Nothing is downloaded: the user puts the files in place once (docs/paper.md). A task names the
files it needs up front, so ``metalr validate`` can list every missing one before a run is
tracked, instead of a run dying in its first epoch.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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


class _ArraysOnly(pickle.Unpickler):
    """Reads the pickled CIFAR batches without running arbitrary code: only numpy arrays,
    their dtypes and plain containers may be rebuilt (a tampered file is refused)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("builtins", "bytes"),
        ("_codecs", "encode"), ("copyreg", "_reconstructor"), ("builtins", "object"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing {module}.{name}: a CIFAR batch holds only numpy arrays and lists")


def load_pickled_batch(path: Path) -> dict[str, Any]:
    """One CIFAR ``data_batch_*``/``test_batch``/``train``/``test`` file as a dict with str keys
    (the files from the CIFAR site have bytes keys under Python 3; both are accepted)."""
    try:
        with path.open("rb") as f:
            data = _ArraysOnly(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"{path} is not a CIFAR python batch ({exc}); re-extract "
                         "cifar-*-python.tar.gz") from None
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}
