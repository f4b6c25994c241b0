"""MLR-SNet meta-trained by evolution strategies over whole runs (issue 19, ``mlrsnet-es``)."""

from __future__ import annotations

import pytest
import torch
from metalr_mlrsnet.es import es_gradient

from metalr.engine.algorithm import is_episodic, is_meta_learned
from metalr.recipes.loader import load_recipe
from metalr.running.runner import Runner


def _quadratic(n: int, shift: float = 0.0, ridge: float = 0.0):
    """A random convex quadratic f(x) = x'Hx/2 + b'x + shift in float64: (H, b, theta, f)."""
    torch.manual_seed(0)
    a = torch.randn(n, n, dtype=torch.float64)
    hessian = a @ a.T + ridge * torch.eye(n, dtype=torch.float64)
    b, theta = torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)

    def f(x):
        return float(0.5 * x @ hessian @ x + b @ x + shift)

    return hessian, b, theta, f


def test_the_antithetic_estimate_is_the_gradient_of_a_quadratic():
    """Along each direction the even terms cancel: with the coordinate directions scaled to
    E[eps eps^T] = I (sqrt(n) e_j), the estimate is the closed-form gradient exactly."""
    hessian, b, theta, f = _quadratic(5)
    sigma = 0.3
    directions = [5 ** 0.5 * e for e in torch.eye(5, dtype=torch.float64)]
    losses = [(f(theta + sigma * d), f(theta - sigma * d)) for d in directions]
    estimate = es_gradient(losses, directions, sigma)
    assert torch.allclose(estimate, hessian @ theta + b, rtol=1e-10)
    # random directions: unbiased, the mean over many draws close to the gradient
    gen = torch.Generator().manual_seed(1)
    draws = [torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(20000)]
    mean = es_gradient([(f(theta + sigma * d), f(theta - sigma * d)) for d in draws], draws,
                       sigma)
    grad = hessian @ theta + b
    assert torch.linalg.vector_norm(mean - grad) < 0.05 * torch.linalg.vector_norm(grad)


def test_es_meta_trains_over_whole_runs_then_runs_frozen(registry, tmp_path, monkeypatch):
    """Through the runner like any episodic learner: 2 updates of 2 antithetic pairs (8 whole
    runs of the quickstart's task at a tiny budget), theta moves, the final run acts with it."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).parents[1])
    policy = registry.get("lr_policy", "mlrsnet-es").build(episodes=8, pairs=2)
    assert is_episodic(policy) and not is_meta_learned(policy)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    recipe = load_recipe("recipes/quickstart.yaml", [
        ("methods={es: {optimizer: {name: sgd, options: {momentum: 0.9}}, lr_policy: "
         "{name: mlrsnet-es, options: {episodes: 8, pairs: 2}}}}"),
        "train.epochs=2", "train.seeds=[0]", "tracking=none", f"output_dir={tmp_path}"])
    summary = Runner(recipe, progress=False).run()
    (run,) = summary.results
    assert run.status == "FINISHED", run.error
    saved = run.files["final"]
    from metalr.engine.weights import read_meta_learner

    name, options, tensors, _ = read_meta_learner(saved)
    assert name == "mlrsnet-es" and options["episodes"] == 8
    moved = [k for k in before if k.startswith("net.") and k != "net.log_gamma"
             and not torch.equal(before[k], tensors[k])]
    assert moved, "ES did not change theta"
    assert run.final("test_accuracy") > 0.2


@pytest.mark.slow  # ES over whole runs, twice (about 7 s); tox -e slow
def test_es_on_the_head_moves_only_the_output_layer(tmp_path, monkeypatch):
    """``perturb: head``: ES moves the output layer on the LSTM's state and nothing else. Three
    meta-trainings from the same initial net (4 whole runs of the quickstart's task at a tiny
    budget each): two on the head at different ES LRs differ in the output layer only; on all
    weights the cells move too."""
    from pathlib import Path

    from metalr.engine.weights import read_meta_learner

    monkeypatch.chdir(Path(__file__).parents[1])

    def trained(perturb: str, es_lr: float) -> dict[str, torch.Tensor]:
        options = f"{{episodes: 4, pairs: 1, perturb: {perturb}, es_lr: {es_lr}}}"
        recipe = load_recipe("recipes/quickstart.yaml", [
            ("methods={es: {optimizer: {name: sgd, options: {momentum: 0.9}}, lr_policy: "
             f"{{name: mlrsnet-es, options: {options}}}}}}}"),
            "train.epochs=1", "train.seeds=[0]", "tracking=none",
            f"output_dir={tmp_path / f'{perturb}-{es_lr}'}"])
        (run,) = Runner(recipe, progress=False).run().results
        assert run.status == "FINISHED", run.error
        return read_meta_learner(run.files["final"])[2]

    def differ(a: dict, b: dict) -> set[str]:
        return {k for k in a if k.startswith("net.") and not torch.equal(a[k], b[k])}

    slow, fast, everything = trained("head", 0.01), trained("head", 0.1), trained("all", 0.1)
    assert differ(slow, fast) == {"net.out.weight", "net.out.bias"}
    assert any(k.startswith("net.cells.") for k in differ(fast, everything))


@pytest.mark.parametrize("bad", [{"pairs": 0}, {"sigma": 0}, {"episodes": 1}])
def test_es_options_are_checked(registry, bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        registry.get("lr_policy", "mlrsnet-es").options(**bad)


def test_relative_fitness_weighs_tasks_alike():
    """``relative``: a task whose loss is 100x another's contributes the same step, and for a
    small sigma the estimate is the gradient of log f (closed form: grad f / f)."""
    hessian, b, theta, f = _quadratic(4, shift=10.0, ridge=1.0)
    sigma = 1e-4
    directions = [4 ** 0.5 * e for e in torch.eye(4, dtype=torch.float64)]
    losses = [(f(theta + sigma * d), f(theta - sigma * d)) for d in directions]
    relative = es_gradient(losses, directions, sigma, "relative")
    grad = hessian @ theta + b
    assert torch.allclose(relative, grad / f(theta), rtol=1e-6)
    scaled = es_gradient([(100 * p, 100 * m) for p, m in losses], directions, sigma,
                         "relative")
    assert torch.allclose(scaled, relative, rtol=1e-12)
    raw = es_gradient([(100 * p, 100 * m) for p, m in losses], directions, sigma)
    assert torch.allclose(raw, 100 * grad, rtol=1e-6)


def test_sign_fitness_counts_which_side_won():
    """``sign``: each pair adds sign(L+ - L-) / (2 sigma) * eps, so a pair that lost by 1000x
    weighs as one that lost by 1%; a tie adds nothing. Along the coordinate directions of a
    quadratic it is the sign of the gradient (closed form), scaled by sqrt(n) / (2 sigma n)."""
    hessian, b, theta, f = _quadratic(4)
    sigma, n = 1e-3, 4
    directions = [n ** 0.5 * e for e in torch.eye(n, dtype=torch.float64)]
    losses = [(f(theta + sigma * d), f(theta - sigma * d)) for d in directions]
    got = es_gradient(losses, directions, sigma, "sign")
    grad = hessian @ theta + b
    assert torch.allclose(got, torch.sign(grad) * n ** 0.5 / (2 * sigma * n), rtol=1e-12)
    huge = [(m + 1000 * (p - m), m) for p, m in losses]  # every difference 1000x as large
    assert torch.equal(es_gradient(huge, directions, sigma, "sign"), got)
    tie = es_gradient([(1.0, 1.0)] + losses[1:], directions, sigma, "sign")
    assert tie[0] == 0 and torch.equal(tie[1:], got[1:])


def test_es_episodes_run_the_episode_tasks_in_turn(where):
    """``meta.episode_tasks``: a pair of episodes per task, in turn (MNIST-1D, then regression,
    whose runs log RMSE and last their own epochs), tracked in a real MLflow store; the final
    run is the recipe's own task, with the theta the set trained."""
    import yaml

    from metalr.cli import main

    tmp_path, client = where
    small = {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}}
    recipe = {
        "name": "es-set", "output_dir": str(tmp_path / "out"), "task": small,
        "model": {"name": "mlp", "options": {"hidden": [32]}},
        "train": {"epochs": 1, "seed": 0, "batch_size": 64, "device": "cpu"},
        "methods": {"es": {
            "optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
            "lr_policy": {"name": "mlrsnet-es", "options": {
                "episodes": 4, "pairs": 1, "fitness": "relative"}},
            "meta": {"episode_tasks": [
                {"task": small, "model": {"name": "mlp", "options": {"hidden": [32]}},
                 "epochs": 1},
                {"task": {"name": "regression", "options": {"num_train": 400, "meta_size": 100}},
                 "model": {"name": "mlp", "options": {"hidden": [16]}}, "epochs": 2,
                 "batch_size": 50, "optimizer": {"name": "adam"}}]}}},
        "tracking": "mlflow",
    }
    path = tmp_path / "es-set.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "-q"]) == 0
    client = client()
    runs = client.search_runs([client.get_experiment_by_name("es-set").experiment_id])
    names = {r.info.run_name: r for r in runs}
    episodes = [names[f"es/seed0/episode{i:03d}"] for i in range(4)]
    assert [("test_accuracy" in r.data.metrics, "test_rmse" in r.data.metrics)
            for r in episodes] == [(True, False)] * 2 + [(False, True)] * 2
    # regression: 300 training samples in batches of 50, 2 epochs: the LR trace's last step is 11
    steps = [m.step for m in client.get_metric_history(episodes[2].info.run_id, "step_lr")]
    assert max(steps) == 11
    assert "test_accuracy" in names["es/seed0"].data.metrics


def test_episode_tasks_need_an_episodic_learner_and_real_names(tmp_path, capsys):
    """``metalr validate``: a typo in a task, model or optimizer of the set, or an option its
    schema does not know, is named at its key; the set on a hypergradient learner is refused."""
    import yaml

    from metalr.cli import main

    tasks = [{"task": "mnist1d", "model": "mlp", "epochs": 1},
             {"task": "regresion", "model": {"name": "mlp", "options": {"hiden": [3]}},
              "optimizer": "sgdd", "epochs": 1}]
    recipe = {"name": "x", "task": "mnist1d", "model": "mlp", "train": {"epochs": 1},
              "methods": {"m": {"optimizer": "sgd", "lr_policy": "mlrsnet-es",
                                "meta": {"episode_tasks": tasks}}}, "tracking": "none"}
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(path)]) != 0
    out = capsys.readouterr()
    lines = [line.strip() for line in (out.out + out.err).splitlines()
             if line.strip().startswith("methods.")]
    assert [line.split(":")[0] for line in lines] == [
        "methods.m.meta.episode_tasks.1.task.name",
        "methods.m.meta.episode_tasks.1.model.options.hiden",
        "methods.m.meta.episode_tasks.1.optimizer.name"], lines
    recipe["methods"]["m"]["lr_policy"] = "mlrsnet"
    recipe["methods"]["m"]["meta"]["episode_tasks"] = tasks[:1]
    path.write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(path)]) != 0
    out = capsys.readouterr()
    assert "methods.m.meta.episode_tasks: 'mlrsnet' learns within its own run" in out.out + out.err
