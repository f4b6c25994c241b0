"""A tiny Penn Treebank in its true format (for tests and dry runs of the paper's recipes).

One sentence per line, a leading space, ``<unk>`` and ``N`` as in Mikolov's files.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ("the", "cat", "sat", "on", "the", "mat", "<unk>", "N")
"""Six distinct words besides ``<unk>``: a vocabulary of 8 with ``<eos>``."""


def write_ptb(folder: Path, lines: tuple[int, int, int] = (300, 60, 60)) -> Path:
    """``folder/ptb.{train,valid,test}.txt`` with that many seven-word lines each."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in zip(("train", "valid", "test"), lines):
        text = [" " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(7)) + " "
                for i in range(n)]
        (folder / f"ptb.{name}.txt").write_text("\n".join(text) + "\n")
    return folder
