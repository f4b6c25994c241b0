"""The probe's and the recheck's noise replicate trains on other batches than the look it checks.

A replicate is the same point on another data order (seed + ``REPLICATE``). A language model's
windows come in the text's order whatever the seed, so that replicate trained on the very
batches of the look, and on the character LM (no dropout) the probe measured a noise of exactly
0. Such a task's replicate now leaves out the look's batches (``DataOrder.replicate``).
"""

from __future__ import annotations

import itertools

import torch

from metalr.engine.order import DataOrder, _same
from metalr.engine.probe import REPLICATE, probe_lr


def _firsts(order: DataOrder, task, batch: int, n: int) -> list:
    return [b for _, b in itertools.islice(order.batches(task, batch), n)]


def test_a_shuffled_task_replicates_on_another_seed(registry):
    task = registry.get("task", "mnist1d").build(meta_size=500)
    task.setup(0, torch.device("cpu"))
    replicate = DataOrder(0).replicate(REPLICATE, task, 128, skip=20)
    assert replicate == DataOrder(REPLICATE)  # as before: another shuffle, nothing skipped
    assert not _same(_firsts(DataOrder(0), task, 128, 1)[0], _firsts(replicate, task, 128, 1)[0])


def test_a_fixed_order_task_replicates_on_the_batches_after_the_look(registry):
    task = registry.get("task", "char-lm").build(bptt=64)
    task.setup(0, torch.device("cpu"))
    order = DataOrder(0)
    assert _same(_firsts(order, task, 32, 1)[0], _firsts(DataOrder(REPLICATE), task, 32, 1)[0])
    replicate = order.replicate(REPLICATE, task, 32, skip=5)
    assert replicate.skip == 5 and replicate.seed == REPLICATE  # its dropout draws differ too
    main, again = _firsts(order, task, 32, 7), _firsts(replicate, task, 32, 2)
    assert torch.equal(again[0].x, main[5].x)
    assert torch.equal(again[1].x, main[6].x)
    assert not any(torch.equal(again[0].x, b.x) for b in main[:5])


def test_the_probe_measures_noise_on_a_language_model_without_dropout(registry):
    """Before: exactly 0.0 on every seed (the replicate retrained the same windows)."""
    task = registry.get("task", "char-lm").build(bptt=64)
    task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    model = registry.get("model", "lstm-lm").build(task.spec, emb_size=32, hidden_size=32,
                                                   num_layers=1, dropout=0.0)
    opt = registry.get("optimizer", "adam").build(model.parameters())
    per_epoch = task.num_train_batches(32)
    result = probe_lr(task, model, opt, total_steps=per_epoch, steps_per_epoch=per_epoch,
                      batch_size=32, meta_batch_size=32, seed=0, steps_per_point=10,
                      grid=[1e-3, 1e-2])
    assert result.signal and result.noise > 0.0
