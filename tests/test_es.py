"""MLR-SNet meta-trained by evolution strategies over whole runs (issue 19, ``mlrsnet-es``)."""

from __future__ import annotations

import pytest
import torch
from metalr_mlrsnet.es import es_gradient

from metalr.engine.algorithm import is_episodic, is_meta_learned
from metalr.recipes.loader import load_recipe
from metalr.running.runner import Runner


def test_the_antithetic_estimate_is_the_gradient_of_a_quadratic():
    """Along each direction the even terms cancel: with the coordinate directions scaled to
    E[eps eps^T] = I (sqrt(n) e_j), the estimate is the closed-form gradient exactly."""
    torch.manual_seed(0)
    a = torch.randn(5, 5, dtype=torch.float64)
    hessian, b = a @ a.T, torch.randn(5, dtype=torch.float64)
    theta = torch.randn(5, dtype=torch.float64)

    def f(x):
        return float(0.5 * x @ hessian @ x + b @ x)

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
        "methods={es: {optimizer: {name: sgd, options: {momentum: 0.9}}, lr_policy: "
        "{name: mlrsnet-es, options: {episodes: 8, pairs: 2}}}}",
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


@pytest.mark.parametrize("bad", [{"pairs": 0}, {"sigma": 0}, {"episodes": 1}])
def test_es_options_are_checked(registry, bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        registry.get("lr_policy", "mlrsnet-es").options(**bad)
