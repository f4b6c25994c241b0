"""bench/hypergradient_bias.py measures Algorithm 1's hypergradient: its central difference of
the run's own next step agrees with the derivative in closed form, and leaves the run as it was."""

from __future__ import annotations

import copy

import pytest
import torch


def test_the_bench_r_is_the_one_step_hypergradient_in_log_lr(registry, load_bench):
    bench = load_bench("hypergradient_bias")
    task = registry.get("task", "mnist1d").build(meta_size=500)
    task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    model = registry.get("model", "mlp").build(task.spec, hidden=[32])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    batches = task.train_batches(128, torch.Generator().manual_seed(0))
    for _ in range(5):  # a momentum buffer to carry into the step
        opt.zero_grad()
        task.loss(model, next(batches)).backward()
        opt.step()
    opt.zero_grad()
    task.loss(model, next(batches)).backward()
    meta = task.meta_batch(128, torch.Generator().manual_seed(1))
    lr = 0.1
    weights, state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]

    r = bench.one_step_r(task, model, opt, lr, meta, eps=1e-3)

    # the run is given back: weights, optimizer state and gradients
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), weights.values()))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert opt.state_dict()["state"].keys() == state["state"].keys()
    # closed form: SGD momentum steps along d = mu buf + g + wd w, so
    # d L(w - lr d) / d log lr = -lr grad L(w - lr d) . d
    params = list(model.parameters())
    d = [0.9 * opt.state[p]["momentum_buffer"] + p.grad + 5e-4 * p.detach() for p in params]
    names = [n for n, _ in model.named_parameters()]
    after = {n: (p.detach() - lr * step).requires_grad_() for n, p, step in zip(names, params, d)}
    model.eval()
    loss = task.loss(lambda x: torch.func.functional_call(model, after, (x,)), meta)
    grad = torch.autograd.grad(loss, list(after.values()))
    with torch.no_grad():
        here = float(task.loss(model, meta))
    exact = -lr * sum(float((g * step).sum()) for g, step in zip(grad, d)) / here
    assert abs(exact) > 1e-3  # a pull to measure, not a tie at zero
    assert r == pytest.approx(exact, rel=1e-2)
