from __future__ import annotations

import pytest

from metalr.contracts.registry import get_registry


@pytest.fixture(scope="session")
def registry():
    """The registry as a user gets it: filled from the installed distributions' entry points."""
    return get_registry()


@pytest.fixture(scope="session")
def load_bench():
    """``load_bench(name)``: the module of ``bench/<name>.py``, imported from its file (the
    bench scripts are not a package), for the tests that check what a bench prints."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def restore_threads():
    """In-process runs set the recipe's thread count (``train.threads``); the tests after them
    get theirs back. Used by the modules that run recipes in-process (``usefixtures``)."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch) :
    """An empty working folder with its own MLflow store URI (which must stay uncreated)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    return work


@pytest.fixture
def float64():
    """Double precision for the test, for checks against finite differences and torch.func."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def mnist1d_64(registry):
    """A small MNIST-1D task whose splits are float64 (hypergradient checks)."""
    import torch

    task = registry.get("task", "mnist1d").build(meta_size=100, num_samples=600)
    task.setup(seed=3, device=torch.device("cpu"))
    task.splits = {k: (x.double(), y) for k, (x, y) in task.splits.items()}
    return task


@pytest.fixture
def replay_learned():
    """The LRs the shipped ``mnist1d-mlp`` nets give for a sequence of losses, computed directly
    through :class:`~metalr.scheduler.learned.PhasedNets` (no scheduler, no framework): what an
    adapter must have applied at each optimizer step."""
    import torch

    from metalr.scheduler.learned import PhasedNets, load_nets

    def replay(losses, total_steps: int, lr: float | None = None) -> list[float]:
        phases = PhasedNets(load_nets("mnist1d-mlp"))
        if lr is not None:
            phases.rescale_to(lr)
        phases.start(total_steps)
        return [phases.lr(torch.as_tensor(float(loss))) for loss in losses]

    return replay


@pytest.fixture
def where(tmp_path, monkeypatch):
    """A sweep's place: cwd and a SQLite MLflow store in tmp_path, and a client made when needed
    (a new store takes seconds)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tmp_path, lambda: MlflowClient(uri)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The fault suite's size on every run that selected any of it (issue 20: the count printed)."""
    stats = terminalreporter.stats
    outcomes = {}
    for key in ("passed", "failed", "skipped", "error"):
        n = sum(1 for r in stats.get(key, ()) if getattr(r, "when", "call") in ("call", "setup")
                and "faults" in getattr(r, "keywords", {}))
        if n:
            outcomes[key] = n
    if outcomes:
        terminalreporter.write_line(
            "fault suite: " + ", ".join(f"{n} {k}" for k, n in outcomes.items())
            + f" ({sum(outcomes.values())} cases; all of them: tox -e faults)")


@pytest.fixture
def run_tracked(tmp_path):
    """``run_tracked(recipe, registry=None) -> (run, params, saved)``: one method, one seed of
    ``recipe`` (a dict without ``output_dir`` and ``tracking``) through ``metalr run``'s runner
    into a real MLflow store in ``tmp_path``: its result, the MLflow params of its run and its
    history.json as written. For the tests of what a run's console line, store and folder say."""
    from mlflow.tracking import MlflowClient

    from metalr.recipes.schema import Recipe
    from metalr.running.runner import Runner

    def run(recipe: dict, registry=None):
        uri = f"sqlite:///{tmp_path / 'store.db'}"
        validated = Recipe.model_validate({
            **recipe, "output_dir": str(tmp_path / "out"),
            "tracking": {"name": "mlflow", "options": {"tracking_uri": uri}}})
        summary = Runner(validated, registry=registry, progress=False).run()
        (result,) = summary.results
        params = MlflowClient(uri).get_run(result.run_id).data.params
        saved = (summary.output_dir / f"{result.method}-seed{result.seed}" / "history.json")
        return result, params, saved.read_text()

    return run
