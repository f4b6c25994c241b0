"""Hostile inputs around a recipe (issue 20): a plugin distribution that claims the name
``metalr``, a ``runs:/`` net that made ``validate`` write a store and temporary folders, output
and tracking paths on file systems that cannot store anything, a recipe that is a FIFO or a
device, and error messages that must name the recipe key to fix.

Each ends in one line naming the key or the file, exit code 2, no traceback and nothing written.
The CLI runs in a subprocess where the environment matters (``PYTHONPATH``, ``TMPDIR``) or
where the old behaviour was to hang; otherwise in process, like ``tests/test_broken_recipes.py``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from metalr.cli import main
from metalr.contracts.registry import Registry
from metalr.engine.weights import save_meta_learner

pytestmark = pytest.mark.faults

BASE = {
    "name": "tiny",
    "task": {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "train": {"epochs": 2, "seed": 0, "batch_size": 64, "device": "cpu"},
    "methods": {
        "m": {"optimizer": "sgd", "lr_policy": {"name": "mlrsnet", "options": {"hidden": 8}}},
        "f": {"optimizer": "sgd", "lr_policy": {"name": "fixed", "options": {"lr": 0.1}}},
    },
    "tracking": "none",
}


def cli(args: list[str], cwd: Path, timeout: float = 120,
        **env: str) -> subprocess.CompletedProcess:
    """The installed command, as a user runs it, in ``cwd`` with ``env`` added."""
    return subprocess.run([sys.executable, "-m", "metalr.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env={**os.environ, **env})


def one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def write_recipe(folder: Path, data: dict | None = None) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data or BASE))
    return path


# -- 1. the distribution name `metalr` is reserved -------------------------------------------------

IMPOSTOR = '''
from metalr import hookimpl

class Constant:
    def __init__(self, lr=0.5):
        self.value = lr

@hookimpl
def register_lr_policies(register):
    register("fixed", Constant)        # a built-in's name
    register("impostor-only", Constant)
'''


@pytest.fixture
def impostor_site(tmp_path) -> Path:
    """A folder for sys.path holding an installed distribution named ``metalr``, not this one."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "metalr_impostor.py").write_text(textwrap.dedent(IMPOSTOR))
    info = site / "metalr-99.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: metalr\nVersion: 99.0\n")
    (info / "entry_points.txt").write_text("[metalr]\nimpostor = metalr_impostor\n")
    return site


def _pythonpath(site: Path) -> str:
    return os.pathsep.join([str(site), *sys.path])


def test_a_distribution_named_metalr_hides_no_builtin_and_is_refused(impostor_site, tmp_path,
                                                                      registry):
    proc = cli(["plugins", "--json"], tmp_path, PYTHONPATH=_pythonpath(impostor_site))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    components = {(c["kind"], c["name"]): c["source"] for c in data["components"]}
    builtins = {(c.kind, c.name): c.source for c in registry.all()
                if c.source.startswith("metalr:")}
    assert len(builtins) > 40
    assert {k: components.get(k) for k in builtins} == builtins  # every one, from its own source
    assert ("lr_policy", "impostor-only") not in components
    [refusal] = [r for r in data["refused"] if r["kind"] == "plugin"]
    assert refusal["source"] == "metalr:impostor"
    assert "reserved" in refusal["message"] and "metalr-99.0.dist-info" in refusal["message"]


def test_strict_mode_refuses_a_distribution_named_metalr_in_one_line(impostor_site, tmp_path):
    proc = cli(["plugins"], tmp_path, PYTHONPATH=_pythonpath(impostor_site),
               METALR_STRICT_PLUGINS="1")
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert "metalr:impostor" in line and "reserved" in line and "METALR_STRICT_PLUGINS" in line


@pytest.mark.parametrize("name", ["metalr", "MetaLR", "METALR"])
def test_every_spelling_of_the_reserved_name_is_refused(impostor_site, monkeypatch, name):
    """pip counts ``MetaLR`` as ``metalr`` (PEP 503), and so does discovery."""
    metadata_file = impostor_site / "metalr-99.0.dist-info" / "METADATA"
    metadata_file.write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 99.0\n")
    monkeypatch.syspath_prepend(str(impostor_site))
    monkeypatch.delenv("METALR_STRICT_PLUGINS", raising=False)
    registry = Registry(strict=False)
    with pytest.warns(UserWarning, match="reserved"):
        registry.load_entry_points()
    assert registry.get("lr_policy", "fixed").source == "metalr:schedules"
    assert registry.get("lr_policy", "mlrsnet").source == "metalr:mlrsnet"
    assert "impostor-only" not in registry.names("lr_policy")
    assert [r.source for r in registry.refused] == [f"{name}:impostor"]


# -- 2. validate of a runs:/ net writes nothing ----------------------------------------------------

def _transfer_recipe(folder: Path, run_id: str) -> Path:
    data = copy.deepcopy(BASE)
    data["methods"] = {"t": {"optimizer": "sgd", "lr_policy": {
        "name": "mlrsnet-transfer",
        "options": {"nets": [f"runs:/{run_id}/theta/theta-epoch0060.safetensors"]}}}}
    return write_recipe(folder, data)


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.slow  # the default suite's 10 minutes; tox -e faults runs it
def test_validate_of_a_runs_uri_without_a_store_creates_none(tmp_path):
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir(), tmp.mkdir()
    recipe = _transfer_recipe(tmp_path, "0123456789abcdef")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", "metalr.cli", "validate", str(recipe)],
                          capture_output=True, text=True, cwd=work, timeout=120,
                          env={**env, "TMPDIR": str(tmp)})
    assert proc.returncode == 2, proc.stderr
    assert "methods.t.lr_policy.options.nets:" in proc.stderr
    assert f"no MLflow store at {work / 'mlflow.db'}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _tree(work) == [] and _tree(tmp) == []


@pytest.mark.slow  # the default suite's 10 minutes; tox -e faults runs it
def test_validate_of_a_runs_uri_reads_the_store_and_leaves_nothing(tmp_path):
    from mlflow.tracking import MlflowClient

    from metalr.scheduler.learned import shipped_nets

    store, work, tmp = tmp_path / "store", tmp_path / "work", tmp_path / "tmp"
    for folder in (store, work, tmp):
        folder.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("nets", str(store / "artifacts")))
    client.log_artifact(run.info.run_id, str(shipped_nets()["mnist1d-mlp"][-1]), "theta")
    client.set_terminated(run.info.run_id)
    before = (_tree(store), hashlib.sha256((store / "mlflow.db").read_bytes()).hexdigest())
    recipe = _transfer_recipe(tmp_path, run.info.run_id)
    proc = cli(["validate", str(recipe)], work, MLFLOW_TRACKING_URI=uri, TMPDIR=str(tmp))
    assert proc.returncode == 0, proc.stderr
    assert _tree(work) == [] and _tree(tmp) == []  # no store, no downloads left behind
    assert (_tree(store), hashlib.sha256((store / "mlflow.db").read_bytes()).hexdigest()) == before


# -- 3. output and tracking paths where nothing can be stored -------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and /sys are Linux's")
@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("override,key,where", [
    ("output_dir=/proc/metalr-out", "output_dir:", "/proc"),
    ("output_dir=/sys/metalr-out", "output_dir:", "/sys"),
    ("tracking={name: mlflow, options: {tracking_uri: 'sqlite:////proc/metalr/mlflow.db'}}",
     "tracking.options.tracking_uri:", "/proc"),
    ("tracking={name: mlflow, options: {tracking_uri: /sys/metalr-mlruns}}",
     "tracking.options.tracking_uri:", "/sys"),
])
def test_kernel_file_systems_are_refused_even_to_root(empty_cwd, tmp_path, capsys, command,
                                                      override, key, where):
    """Root passes ``os.access`` for /proc and /sys; the mount's type says they store nothing."""
    code = main([command, str(write_recipe(tmp_path)), override])
    err = capsys.readouterr().err
    assert code == 2, err
    [problem] = [line.strip() for line in err.splitlines()[1:]]
    assert problem.startswith(key) and where in problem and "file system" in problem
    assert os.listdir(empty_cwd) == []  # the run tracked nothing


@pytest.fixture
def read_only_mount(tmp_path):
    """A real read-only file system (a tmpfs mounted ro); needs root and CAP_SYS_ADMIN."""
    point = tmp_path / "ro"
    point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(point)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


def test_a_read_only_mount_is_named(empty_cwd, tmp_path, read_only_mount, capsys):
    code = main(["validate", str(write_recipe(tmp_path)), f"output_dir={read_only_mount}/out"])
    err = capsys.readouterr().err
    assert code == 2 and "output_dir:" in err
    assert f"{read_only_mount} is on a read-only file system" in err


# -- 4. a recipe that is not a regular file -------------------------------------------------------

def test_a_fifo_as_recipe_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "recipe.yaml"
    os.mkfifo(fifo)
    proc = cli(["validate", str(fifo)], tmp_path, timeout=60)  # it hung for ever
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert line.startswith(f"{fifo}:") and "FIFO" in line and "not a regular file" in line


def test_dev_zero_as_recipe_is_refused_without_reading_it(tmp_path):
    proc = cli(["validate", "/dev/zero"], tmp_path, timeout=60)  # MemoryError before
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc.stderr)
    assert line.startswith("/dev/zero:") and "character device" in line


def test_a_recipe_over_a_megabyte_is_refused(empty_cwd, tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * 200_000)
    assert main(["validate", str(path)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"{path}:") and "too large for a recipe" in line


# -- 5. every message names the recipe key --------------------------------------------------------

@pytest.fixture(scope="module")
def good_net(tmp_path_factory, registry) -> Path:
    path = tmp_path_factory.mktemp("nets") / "good.safetensors"
    save_meta_learner(path, "mlrsnet", registry.get("lr_policy", "mlrsnet").build(hidden=8))
    return path


KEYED = [
    # (id, overrides (GOOD is the net file), the key the message must start with, words)
    ("model-not-for-this-task", ["model={name: lstm-lm}"], "model.name",
     ["'lstm-lm'", "mnist1d"]),
    ("model-unknown", ["model.name=mlpp"], "model.name", ["did you mean 'mlp'"]),
    ("model-too-large", ["model.options.hidden=[100000000, 100000000]"], "model.options.hidden",
     ["smaller widths"]),
    ("meta-size-beyond-data", ["task.options.meta_size=100000"], "task.options.meta_size",
     ["leaves no training data"]),
    ("tune-integer-option-default-grid", ["methods.f.lr_policy={name: sgdr}", "methods.f.tune=T_0"],
     "methods.f.tune", ["integer option", "tune_grid"]),
    ("tune-text-option", ["methods.f.lr_policy={name: plateau}", "methods.f.tune=monitor"],
     "methods.f.tune", ["not a number"]),
    ("weights-on-a-policy-without-theta", ["methods.f.meta={weights: GOOD}"],
     "methods.f.meta.weights", ["no parameters theta"]),
    ("weights-a-device", ["methods.m.meta.weights=/dev/zero"], "methods.m.meta.weights",
     ["not a regular file"]),
    ("transfer-nets-missing", ["methods.f.lr_policy={name: mlrsnet-transfer, options: "
                               "{nets: [/nonexistent/net.safetensors]}}"],
     "methods.f.lr_policy.options.nets", ["neither a file"]),
    ("options-of-a-component-without-any", ["methods.m.meta.objective={name: one-step, options: "
                                            "{k: 2}}"],
     "methods.m.meta.objective.options.k", ["'one-step' takes no options"]),
]


@pytest.mark.parametrize("overrides,key,words", [c[1:] for c in KEYED], ids=[c[0] for c in KEYED])
def test_the_message_names_the_recipe_key(empty_cwd, tmp_path, good_net, capsys, overrides, key,
                                          words):
    path = write_recipe(tmp_path)
    code = main(["validate", str(path), *(o.replace("GOOD", str(good_net)) for o in overrides)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.splitlines()[0] == f"{path}: 1 problem", err
    problem = err.splitlines()[1].strip()
    assert problem.startswith(f"{key}: "), problem
    for word in words:
        assert word in problem, problem
    assert "known keys: " not in problem or not problem.rstrip().endswith("known keys:")
    assert os.listdir(empty_cwd) == []
