"""What an MLflow store is on disk, checked without MLflow writing to it.

MLflow creates a missing SQLite store, migrates one of an older schema and inserts its default
experiment on opening, all writes. Looking at a store (`metalr report`, `metalr runs`, a
``runs:/`` net in `metalr validate`) must do none of them, so a SQLite file is read here first,
with :mod:`sqlite3` in read-only mode, and refused in one line (:class:`StoreError`, naming the
file and the fix) unless it is a complete store of this MLflow.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from metalr.running.rundir import StoreError
from metalr.running.stores import sqlite_file

DEFAULT_URI = "sqlite:///mlflow.db"
"""The store when neither ``tracking_uri`` nor ``$MLFLOW_TRACKING_URI`` names one."""


def _first_row(path: Path, query: str) -> tuple | None:
    """The first row ``query`` gives on the SQLite file ``path``, read without writing anything
    (read-only mode: not even a journal); ``sqlite3.Error`` if it cannot be read."""
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return con.execute(query).fetchone()
    finally:
        con.close()


def sqlite_tables(path: Path) -> set[str]:
    """The tables of the SQLite file ``path``, read without writing anything (read-only mode:
    not even a journal). ``sqlite3.Error`` for a file that is no readable SQLite database."""
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        con.close()
    return {str(name) for (name,) in rows}


def mlflow_tables() -> set[str]:
    """The tables this MLflow keeps a store in: a store missing any of them, MLflow would
    create or migrate on opening (a write)."""
    try:
        from mlflow.store.db.utils import Base  # (importing it registers every table)

        tables = set(Base.metadata.tables)
    except ImportError:  # another MLflow layout: the tables every version has
        tables = {"experiments", "runs", "metrics", "params", "tags"}
    return tables | {"alembic_version"}


def has_default_experiment(path: Path) -> bool:
    """Whether the store holds MLflow's default experiment (id 0), which MLflow adds, a write,
    to a store without it; read-only, ``sqlite3.Error`` if it cannot be read."""
    return _first_row(path, "SELECT 1 FROM experiments WHERE experiment_id = 0") is not None


def unfinished_store(path: Path) -> bool:
    """Whether ``path`` is an MLflow store whose creation stopped part-way: only MLflow's
    tables, not all of them or no default experiment yet (MLflow inserts it last), and no run
    or experiment of anyone's in it (nothing a new store would lose). Read-only."""
    try:
        tables = sqlite_tables(path)
        if not tables or not tables <= mlflow_tables():
            return False
        for table, kept in (("runs", "SELECT 1 FROM runs LIMIT 1"), (
                "experiments", "SELECT 1 FROM experiments WHERE experiment_id != 0 LIMIT 1")):
            if table in tables and _first_row(path, kept) is not None:
                return False
        return (not mlflow_tables() <= tables or "experiments" not in tables
                or not has_default_experiment(path))
    except sqlite3.Error:
        return False


def existing_store(uri: str) -> Path | None:
    """The SQLite file of ``uri`` once checked, reading only, to be an existing MLflow store
    of this MLflow's schema; a one-line :class:`StoreError` naming the file otherwise. None:
    not a SQLite store (a server answers for itself)."""
    path = sqlite_file(uri)
    if path is None:
        return None

    def refuse(message: str) -> StoreError:
        return StoreError(message, str(path))

    if not path.exists():
        raise refuse(f"no MLflow store at {path} (set MLFLOW_TRACKING_URI or pass "
                     "--tracking-uri)")
    if not path.is_file():
        raise refuse(f"{path} is not a file, so not an MLflow store; pass the store's "
                     "database file with --tracking-uri")
    try:
        tables = sqlite_tables(path)
    except sqlite3.Error as exc:
        raise refuse(f"{path}: not a readable SQLite database ({exc}); restore the store "
                     "from a copy, or pass another with --tracking-uri") from None
    if not {"experiments", "alembic_version"} <= tables:
        what = ("an empty file" if path.stat().st_size == 0 else
                "an SQLite database without tables" if not tables else
                "an SQLite database of something else (tables "
                + ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "") + ")")
        raise refuse(f"{path} is not an MLflow store: {what}; pass the store's "
                     "database file with --tracking-uri")
    missing = mlflow_tables() - tables
    if missing:
        raise refuse(f"{path}: an MLflow store of an older MLflow (no table "
                     f"{', '.join(sorted(missing)[:3])}); upgrade it first with "
                     f"`mlflow db upgrade sqlite:///{path}`")
    try:
        default = has_default_experiment(path)
    except sqlite3.Error as exc:
        raise refuse(f"{path}: not a readable MLflow store ({exc}); restore it from a "
                     "copy, or pass another with --tracking-uri") from None
    if not default:  # MLflow would insert it on opening the store
        raise refuse(f"{path}: an MLflow store without its default experiment (id 0), "
                     "which MLflow would add on opening it; open it once with MLflow "
                     "(`mlflow ui --backend-store-uri ...`) to repair it")
    return path
