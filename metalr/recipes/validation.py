"""The checks that build what a recipe names, run by ``metalr validate`` and before ``metalr run``.

A recipe of the right shape can still fail a run minutes in, after MLflow runs and an output
folder exist: a net file that is a pickle or of another shape, a meta setting on a policy with
nothing to learn, a tuned value the option refuses, a model too large for the machine, a meta
split larger than the data, a plateau monitor no task reports, a tracking store that cannot be
opened. Each is found here instead, by building the component the way the runner will (the
model on torch's ``meta`` device, so no memory is allocated), before anything is tracked or
written. Every check reports a :class:`~metalr.contracts.problems.Problem`; none raises. The loader
(:func:`metalr.recipes.loader.load_recipe`) calls :func:`check_deep`; this module reads the schema
only (:mod:`metalr.recipes.schema`), never the loader.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from pydantic import ValidationError

from metalr.contracts.problems import Problem, named_option
from metalr.contracts.registry import Registry
from metalr.engine.algorithm import is_episodic, is_meta_learned
from metalr.engine.datafiles import MissingDataError
from metalr.engine.weights import WeightsError, load_meta_learner
from metalr.recipes.schema import Method, Recipe, TuningConfig, resolve_device, type_members

MEMORY_FACTOR = 4
"""Copies of the weights a run holds: the weights, their gradients, the optimizer's state and the
meta-step's look-ahead copy (a lower bound: activations come on top)."""

SPLITS = ("train", "meta", "test")
"""The splits the engine evaluates (``EngineConfig.eval_splits``); their metrics are
``<split>_<name>`` for each name the task's ``evaluate`` returns."""

ENGINE_METRICS = ("epoch", "train_batch_loss", "wall_time")
"""End-of-epoch metrics the engine adds itself (``Engine.fit``)."""


def check_deep(recipe: Recipe, data: dict[str, Any], registry: Registry) -> list[Problem]:
    """Every problem a run would meet before its first step; ``data`` is the raw recipe, which
    still tells which keys were written and how (``10`` or ``10.0``)."""
    problems: list[Problem] = []
    task = _guarded(problems, "task", "cannot be built",
                    lambda: registry.get("task", recipe.task.name).build(**recipe.task.options),
                    options=(recipe.task.options, "task.options"))
    raw_methods = data.get("methods", {})
    checks: list[tuple[str, Callable[[], list[Problem]]]] = [
        (f"methods.{name}", lambda n=name, m=method: check_method(
            n, m, raw_methods.get(n, {}), data, recipe, registry, task))
        for name, method in recipe.methods.items()]
    if task is not None:
        # the data first: a task may know its spec (a vocabulary size) only once set up
        checks += [("task", lambda: check_task_data(recipe, registry, task)),
                   ("model", lambda: check_model(recipe, registry, task))]
    checks += [("tracking", lambda: check_tracking(recipe)),
               ("output_dir", lambda: check_output_dir(recipe.output_dir))]
    for path, check in checks:
        found = _guarded(problems, path, "could not be checked", check)
        problems += found or []
    return _unique(problems)


_TORCH_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


@contextlib.contextmanager
def temporary_files_removed() -> Iterator[None]:
    """Whatever is made through :mod:`tempfile` inside goes into one folder, removed on the way
    out, so that checking a recipe leaves nothing behind: a ``runs:/`` net is downloaded to be
    checked, and torch makes its compile-cache folder when ``torch.optim`` first imports dynamo.
    """
    scratch = tempfile.mkdtemp(prefix="metalr-validate-")
    saved, cache = tempfile.tempdir, os.environ.get(_TORCH_CACHE_ENV)
    tempfile.tempdir = scratch
    try:
        yield
    finally:
        tempfile.tempdir = saved
        if cache is None:  # torch sets it to the folder it made in scratch
            os.environ.pop(_TORCH_CACHE_ENV, None)
        else:
            os.environ[_TORCH_CACHE_ENV] = cache
        shutil.rmtree(scratch, ignore_errors=True)


def _guarded(problems: list[Problem], path: str, what: str, build: Callable[[], Any],
             options: tuple[dict[str, Any], str] | None = None, sole: bool = False) -> Any:
    """``build()``, or None with its error, in one line, added to ``problems``: at ``path``, or
    at the option the error is about, given ``options`` as ``(options, their dotted path)``
    (:func:`metalr.contracts.problems.named_option`; ``sole``: the only option given, when none is
    named)."""
    try:
        return build()
    except Exception as exc:
        text = one_line(exc)
        key = named_option(options[0], text, sole) if options else None
        problems.append(Problem(f"{options[1]}.{key}" if key else path, f"{what}: {text}"))
        return None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, MissingDataError) and first:
        return first[:2000]  # the list of missing files is the point: keep all of it
    if isinstance(exc, (ValueError, WeightsError)) and first:
        return first[:400]
    return f"{type(exc).__name__}: {first}"[:400]


def _unique(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


# -- methods ---------------------------------------------------------------------------------

def has_theta(policy: Any) -> bool:
    """A meta-learner: the engine meta-trains it (``hypergradient``) or it trains itself."""
    return is_meta_learned(policy) or is_episodic(policy)


def check_method(name: str, method: Method, raw: Any, data: dict[str, Any], recipe: Recipe,
                 registry: Registry, task: Any) -> list[Problem]:
    problems: list[Problem] = []
    at = f"methods.{name}"
    ref = method.lr_policy
    policy = _guarded(problems, f"{at}.lr_policy", f"{ref.name!r} cannot be built",
                      lambda: registry.get("lr_policy", ref.name).build(**ref.options),
                      options=(ref.options, f"{at}.lr_policy.options"), sole=True)
    opt = method.optimizer
    _guarded(problems, f"{at}.optimizer", f"{opt.name!r} cannot be built",
             lambda: registry.get("optimizer", opt.name).build(
                 [torch.zeros(1, requires_grad=True)], **opt.options))
    problems += check_tune_grid(name, method, raw, data, registry)
    if policy is None:
        return problems
    meta = method.meta
    given = raw.get("meta") if isinstance(raw, dict) else None
    if not has_theta(policy):
        if given:
            keys = ", ".join(map(str, given))
            where = f"{at}.meta.{keys}" if len(given) == 1 else f"{at}.meta"
            problems.append(Problem(where, f"{ref.name!r} has no parameters theta to learn, "
                                    f"so these settings ({keys}) would be ignored: remove them, or "
                                    "use a meta-learner such as 'mlrsnet'"))
    elif isinstance(given, dict) and "objective" in given and not is_meta_learned(policy):
        problems.append(Problem(f"{at}.meta.objective", f"{ref.name!r} does not learn by "
                                "hypergradient, so a meta-objective would be ignored: remove it"))
    elif meta.weights is not None:
        problems += check_weights(f"{at}.meta.weights", meta.weights, ref.name, policy)
    elif meta.mode == "meta-test":
        problems.append(Problem(f"{at}.meta.mode", "meta-test freezes theta, so it needs "
                                "meta.weights (a meta-trained net); without them a random, "
                                "untrained net would be tested"))
    if has_theta(policy):
        problems += check_episode_tasks(at, method, policy)
    if task is not None:
        problems += check_monitor(at, ref, registry, task, policy)
    return problems


def check_episode_tasks(at: str, method: Method, policy: Any) -> list[Problem]:
    """Only an episodic meta-learner trains over ``meta.episode_tasks`` (each task, model and
    optimizer in it is checked with the recipe's components, :mod:`metalr.recipes.loader`)."""
    if method.meta.episode_tasks and not is_episodic(policy):
        return [Problem(f"{at}.meta.episode_tasks", f"{method.lr_policy.name!r} learns within "
                        "its own run, not over episodes, so these tasks would be ignored: "
                        "remove them, or use an episodic meta-learner (mlrsnet-es, "
                        "lr-controller)")]
    return []


def check_weights(at: str, path: str, policy_name: str, fresh: Any) -> list[Problem]:
    """Load the file into ``fresh``, a policy built for this check only, through the one loader
    the run uses: format, header, kind and shapes are checked exactly as the run will."""
    if not Path(path).is_file():
        return []  # reported by recipe.check_semantics
    try:
        load_meta_learner(path, fresh, policy_name=policy_name)
    except Exception as exc:  # WeightsError, or whatever a plugin's load_state_dict raises
        return [Problem(at, one_line(exc))]
    return []


def check_tune_grid(name: str, method: Method, raw: Any, data: dict[str, Any],
                    registry: Registry) -> list[Problem]:
    """Every grid value must be one the tuned option accepts, with the recipe's other options.

    When the recipe gives no grid, the default one is checked too, and its problems are put at
    ``methods.<m>.tune``: the key the user wrote.
    """
    if method.tune is None:
        return []
    schema = registry.get("lr_policy", method.lr_policy.name).options
    if schema is None or method.tune not in schema.model_fields:
        return []  # an unknown option is reported by recipe.check_semantics
    tune_at, policy = f"methods.{name}.tune", method.lr_policy.name
    kinds = type_members(schema.model_fields[method.tune].annotation)
    if not any(k in (int, float, Any, object) for k in kinds):
        return [Problem(tune_at, f"{method.tune!r} of {policy!r} is not a number, so no grid of "
                        "values can tune it: tune a numeric option, or remove tune")]
    own = isinstance(raw, dict) and raw.get("tune_grid") is not None
    grid = raw["tune_grid"] if own else (data.get("tuning") or {}).get("grid")
    at = f"methods.{name}.tune_grid" if own else "tuning.grid"
    default = not isinstance(grid, list)
    if default:
        grid = TuningConfig().grid
        if int in kinds and float not in kinds:
            return [Problem(tune_at, f"{method.tune!r} of {policy!r} is an integer option, but the "
                            f"default tuning.grid {grid} holds fractions: give "
                            f"methods.{name}.tune_grid with integers")]
    problems = []
    for i, value in enumerate(grid):
        where, which = (tune_at, " (default tuning.grid)") if default else (f"{at}.{i}", "")
        if isinstance(value, float) and int in kinds and float not in kinds:
            problems.append(Problem(where, f"{value!r}: {method.tune!r} of {policy!r} is an "
                                    "integer option; tune it with integers"))
            continue
        try:
            schema.model_validate({**method.lr_policy.options, method.tune: value})
        except ValidationError as exc:
            for err in exc.errors():
                message = err["msg"].removeprefix("Value error, ")
                problems.append(Problem(where, f"{value!r}{which} for {method.tune} of "
                                        f"{policy!r}: {message}"))
    return problems


def reported_metrics(task: Any, meta_learning: bool) -> list[str]:
    """The end-of-epoch metric names a run of this task reports.

    A task may declare ``metrics`` (the names its ``evaluate`` returns); else they are ``loss``
    and its headline ``metric``.
    """
    names = tuple(getattr(task, "metrics", None) or ("loss", task.metric))
    out = list(ENGINE_METRICS) + [f"{s}_{n}" for s in SPLITS for n in names]
    return out + (["virtual_meta_loss"] if meta_learning else [])


def check_monitor(at: str, ref: Any, registry: Registry, task: Any, policy: Any) -> list[Problem]:
    """A policy option named ``monitor`` must name a metric the run reports (plateau's)."""
    monitor = ref.options.get("monitor", getattr(policy, "monitor", None))
    if not isinstance(monitor, str):
        return []
    known = reported_metrics(task, is_meta_learned(policy))
    if monitor in known:
        return []
    close = difflib.get_close_matches(monitor, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return [Problem(f"{at}.lr_policy.options.monitor",
                    f"{monitor!r} is not a metric task {type(task).__name__} reports{hint} "
                    f"(reported: {', '.join(known)})")]


# -- model and data --------------------------------------------------------------------------

def check_model(recipe: Recipe, registry: Registry, task: Any) -> list[Problem]:
    """Build the model on torch's ``meta`` device (shapes, no memory) and compare its size with
    the memory of the device the run will use."""
    ref, spec = recipe.model, getattr(task, "spec", None)
    if spec is None:
        return []  # a task that has no spec before its (expensive) setup
    try:
        with torch.device("meta"):
            model = registry.get("model", ref.name).build(spec, **ref.options)
        count = sum(p.numel() for p in model.parameters())
        size = sum(p.numel() * p.element_size() for p in model.parameters())
    except Exception as exc:
        if "meta" in str(exc).lower():
            return []  # this factory needs real data to build; the run will tell
        key = named_option(ref.options, one_line(exc), sole=False)
        # no option named: the model itself does not fit the task (an LSTM for images)
        at = f"model.options.{key}" if key else "model.options" if ref.options else "model.name"
        return [Problem(at, f"{ref.name!r} cannot be built for task {recipe.task.name!r}"
                        f"{' with these options' if ref.options else ''}: {one_line(exc)}")]
    # the size follows from the options together; when one was given, it is the one to change
    sized_at = f"model.options.{next(iter(ref.options))}" if len(ref.options) == 1 else \
        "model.options"
    if count == 0:
        return [Problem(sized_at, f"{ref.name!r} has no parameters with these options")]
    device = resolve_device(recipe.train.device)
    have = device_memory(device)
    need = size * MEMORY_FACTOR
    if have is not None and need > have:
        return [Problem(sized_at, f"{ref.name!r} has {count:,} parameters: about "
                        f"{need / 2**30:,.1f} GiB with gradients, optimizer state and the "
                        f"meta-step's copy, more than the {have / 2**30:,.1f} GiB of {device.type} "
                        "memory here; use smaller widths")]
    return []


def device_memory(device: torch.device) -> int | None:
    """Total bytes of memory on ``device``'s kind, if known."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None  # reported by recipe.check_semantics
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_task_data(recipe: Recipe, registry: Registry, task: Any) -> list[Problem]:
    """Data-dependent limits (a meta split larger than the data, a batch larger than a split),
    found by setting the task up on the CPU, for tasks that declare ``cheap_setup`` (in memory,
    no download). First, a task that reads files and has ``check_files()`` lists the missing
    ones (:mod:`metalr.engine.datafiles`)."""
    problems: list[Problem] = []
    check_files = getattr(task, "check_files", None)
    if callable(check_files) and _guarded(problems, "task", "cannot find its data",
                                          lambda: check_files() or True) is None:
        return problems
    if not getattr(task, "cheap_setup", False):
        return []
    seed = recipe.train.all_seeds[0] if recipe.train.split_seed is None else recipe.train.split_seed
    if _guarded(problems, "task.options", f"task {recipe.task.name!r} cannot be set up",
                lambda: task.setup(seed, torch.device("cpu")) or True,
                options=(recipe.task.options, "task.options")) is None:
        return problems
    _guarded(problems, "train.batch_size", f"{recipe.train.batch_size} does not fit the data",
             lambda: task.num_train_batches(recipe.train.batch_size))
    for name, method in recipe.methods.items():
        if method.meta.mode != "meta-train":
            continue
        ref = method.lr_policy
        try:
            policy = registry.get("lr_policy", ref.name).build(**ref.options)
        except Exception:
            continue  # reported by check_method
        if not is_meta_learned(policy):
            continue
        _guarded(problems, f"methods.{name}.meta.batch_size", "meta-training needs a meta "
                 "split", lambda m=method: task.meta_batch(m.meta.batch_size,
                                                           torch.Generator().manual_seed(0)))
    return problems


# -- where a run writes ----------------------------------------------------------------------

MLFLOW_SCHEMES = {"", "file", "sqlite", "http", "https", "databricks", "databricks-uc", "uc",
                  "postgresql", "mysql", "mssql"}


def check_tracking(recipe: Recipe) -> list[Problem]:
    """The MLflow store must be usable; checked by reading the URI, without creating anything."""
    if recipe.tracking is None or recipe.tracking.name != "mlflow":
        return []  # other trackers check themselves when built
    given = recipe.tracking.options.get("tracking_uri")
    env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = given or env or "sqlite:///mlflow.db"
    at = ("tracking.options.tracking_uri" if given else
          "MLFLOW_TRACKING_URI (environment)" if env else "tracking")
    reason = tracking_uri_problem(uri)
    return [Problem(at, f"{uri!r}: {reason}")] if reason else []


def tracking_uri_problem(uri: str) -> str | None:
    """Why MLflow could not store runs at ``uri``, or None; nothing is created or written."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter: a plain folder path
        scheme = ""
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            return "an SQLite URI is sqlite:///relative/path.db or sqlite:////absolute/path.db"
        db = uri[len("sqlite:///"):].split("?")[0]
        if db in ("", ":memory:"):
            return None
        return _sqlite_file_problem(Path(db))
    if scheme in ("", "file"):
        return _folder_problem(Path(parsed.path if scheme == "file" else uri), "tracking folder")
    if scheme in ("http", "https"):
        host, port = parsed.hostname, parsed.port or (443 if scheme == "https" else 80)
        if not host:
            return "no host in this URI"
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as exc:
            return f"cannot reach {host}:{port} ({exc.strerror or exc})"
        return None
    if scheme in MLFLOW_SCHEMES or scheme in _plugin_schemes():
        return None
    return (f"unknown scheme {scheme!r}: MLflow stores runs at sqlite:///path.db, a folder, "
            "file://, http(s)://, databricks or a database URI (postgresql://, mysql://, ...)")


def _plugin_schemes() -> set[str]:
    return {ep.name for ep in metadata.entry_points(group="mlflow.tracking_store")}


def _sqlite_file_problem(db: Path) -> str | None:
    if db.exists():
        if not db.is_file():
            return f"{db} is a folder, not an SQLite database file"
        try:
            with db.open("rb") as f:
                head = f.read(16)
        except OSError as exc:
            return f"cannot read {db} ({exc.strerror or exc})"
        if head and head != b"SQLite format 3\0":
            return f"{db} exists and is not an SQLite database"
        reason = _mount_problem(db)
        if reason is None and not os.access(db, os.W_OK):
            reason = f"{db} is not writable"
        return reason
    return _folder_problem(db.parent, "store's folder")  # MLflow creates missing folders


def _folder_problem(path: Path, what: str) -> str | None:
    """Why a folder could not be created or written at ``path``, or None."""
    if path.exists():
        if not path.is_dir():
            return f"{path} is a file, not a folder"
        reason = _mount_problem(path)
        if reason is None and not os.access(path, os.W_OK | os.X_OK):
            reason = f"{path} is not writable"
        return reason
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, so the {what} {path} cannot be created"
    reason = _mount_problem(parent)
    if reason is None and not os.access(parent, os.W_OK | os.X_OK):
        reason = f"{parent} is not writable"
    return f"{reason}, so the {what} {path} cannot be created" if reason else None


PSEUDO_FILESYSTEMS = {"proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
                      "configfs", "pstore", "bpf", "efivarfs", "fusectl", "binfmt_misc"}
"""The kernel's views of itself (/proc, /sys, ...): nothing a run writes can be stored there."""


def _mount_problem(path: Path) -> str | None:
    """Why the file system holding existing ``path`` cannot store files, or None.

    ``os.access`` answers yes to root for any folder whose mode bits allow writing, on a
    read-only mount and in /proc or /sys too; the mount's own flags and type say otherwise.
    """
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): os.access has answered
        return None
    if read_only:
        return f"{path} is on a read-only file system"
    fstype = _filesystem_type(path)
    if fstype in PSEUDO_FILESYSTEMS:
        return f"{path} is in the kernel's {fstype} file system, which cannot store files"
    return None


def _filesystem_type(path: Path) -> str | None:
    """The type of the mount that holds ``path`` (Linux: /proc/self/mountinfo), or None."""
    try:
        table = Path("/proc/self/mountinfo").read_text()
        target = path.resolve()
    except OSError:
        return None
    best, fstype = -1, None
    for line in table.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
        after = fields[fields.index("-", 6) + 1:]
        if after and target.is_relative_to(point) and len(point.parts) > best:
            best, fstype = len(point.parts), after[0]
    return fstype


def check_output_dir(output_dir: str) -> list[Problem]:
    reason = _folder_problem(Path(output_dir).expanduser(), "output folder")
    return [Problem("output_dir", f"{output_dir!r}: {reason}")] if reason else []

