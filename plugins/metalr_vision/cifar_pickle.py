"""Reading CIFAR's pickled batches without letting the file run code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any


class _ArraysOnly(pickle.Unpickler):
    """Reads the pickled CIFAR batches without running arbitrary code: only numpy arrays,
    their dtypes and plain containers may be rebuilt (a tampered file is refused)."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("builtins", "bytes"),
        ("_codecs", "encode"), ("copyreg", "_reconstructor"), ("builtins", "object"),
    })

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
