"""The hard-suite plugin (plugins/metalr_hard) on its real offline data: conformance, the
corruptions it promises (label noise, shift), its metrics against closed forms, and learning."""

from __future__ import annotations

import functools
import math
import time

import metalr_hard
import pytest
import torch
from metalr_hard.bases import load_base
from metalr_hard.noisy import flip_labels
from metalr_hard.sequences import SeqRecallOptions
from pydantic import ValidationError
from torch import nn

from metalr.contracts.registry import Component, Registry
from metalr.testing import check_component

CPU = torch.device("cpu")
TASKS = ["seq-recall", "noisy-labels", "shifted", "regression", "char-lm"]
IN_MEMORY = ["seq-recall", "noisy-labels", "shifted", "regression"]


@functools.lru_cache(maxsize=1)
def _registry() -> Registry:
    """This plugin alone, through its hooks (the entry point needs a reinstall to be seen)."""
    reg = Registry(strict=True)
    assert reg.add_plugin(metalr_hard, "test:hard")
    return reg


def component(kind: str, name: str) -> Component:
    return _registry().components[kind][name]


def built(name: str, seed: int = 0, **options):
    task = component("task", name).build(**options)
    task.setup(seed, CPU)
    return task


@pytest.mark.parametrize("name", TASKS)
def test_task_conforms_and_sets_up_fast(name):
    check_component(component("task", name))  # warms the caches a first build fills
    start = time.perf_counter()
    built(name, seed=1)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_recurrent_models_conform_on_sequences(name):
    task = built("seq-recall", num_train=600, num_test=100, meta_size=100)
    check_component(component("model", name), {"hidden_size": 16}, task=task)
    check_component(component("model", name), {"hidden_size": 16})  # (steps,) inputs: the blobs


def test_deep_mlp_conforms_and_starts_blind():
    check_component(component("model", "deep-mlp"))
    task = built("noisy-labels", base="digits", noise=0.0, meta_size=100)
    x = task.splits["test"][0]
    spread = {}
    for depth in (2, 16):
        torch.manual_seed(0)
        model = component("model", "deep-mlp").build(task.spec, depth=depth)
        assert sum(isinstance(m, nn.Linear) for m in model) == depth + 1
        assert not any(isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)) for m in model)
        with torch.no_grad():
            spread[depth] = model(x).std(0).mean().item()  # how much the output sees the input
    assert spread[16] < 1e-3 * spread[2], spread  # default init: the signal dies with depth


@pytest.mark.parametrize("name", IN_MEMORY)
def test_splits_disjoint(name):
    task = built(name, seed=2)
    train, meta = set(task.indices["train"].tolist()), set(task.indices["meta"].tolist())
    assert train and meta and not train & meta
    assert len(train) + len(meta) == len(task.splits["train"][1]) + len(task.splits["meta"][1])
    other = built(name, seed=3)
    assert not torch.equal(task.indices["meta"], other.indices["meta"])  # the run seed moves it


# -- noisy-labels ------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [0.2, 0.4])
def test_label_noise_is_the_share_it_says(noise):
    task = built("noisy-labels", seed=1, noise=noise)
    for split in ("train", "meta"):
        clean, noisy = task.clean_labels[split], task.splits[split][1]
        changed = (clean != noisy).nonzero().flatten()
        assert len(changed) == round(noise * len(clean))  # every flip lands on another class
        assert set(changed.tolist()) == set(task.flipped[split].tolist())
    _, _, (_, y_test) = load_base("mnist1d", 5000, 42)
    assert torch.equal(task.splits["test"][1], y_test)  # the test split stays clean


def test_flips_are_uniform_over_the_other_classes():
    y = torch.zeros(20_000, dtype=torch.long)
    noisy, idx = flip_labels(y, 0.5, 10, torch.Generator().manual_seed(0))
    counts = torch.bincount(noisy[idx], minlength=10)
    assert counts[0] == 0 and len(idx) == 10_000
    assert (counts[1:] - 10_000 / 9).abs().max() < 4 * math.sqrt(10_000 / 9)


def test_clean_meta_option_and_noise_varies_by_seed():
    task = built("noisy-labels", seed=0, base="digits", noisy_meta=False, meta_size=200)
    assert "meta" not in task.flipped
    y = task.splits["meta"][1]
    _, (_, y_pool), _ = load_base("digits", 0, 42)  # the task's data_seed
    assert torch.equal(y, y_pool[task.indices["meta"]])
    other = built("noisy-labels", seed=1, base="digits", meta_size=200)
    assert not torch.equal(task.flipped["train"][:50], other.flipped["train"][:50])


# -- shifted -----------------------------------------------------------------------------------


def test_imbalanced_train_balanced_test():
    task = built("shifted", imbalance=20.0)
    pool = torch.cat([task.splits["train"][1], task.splits["meta"][1]])
    counts = torch.bincount(pool, minlength=10).float()
    assert 15 < counts[0] / counts[9] < 25 and (counts[:-1] >= counts[1:]).all()
    test = torch.bincount(task.splits["test"][1], minlength=10).float()
    assert test.max() / test.min() < 1.5  # MNIST-1D's test split: about balanced


def test_covariate_shift_moves_test_inputs_only():
    clean = built("shifted", shift="covariate", pixels=0)
    moved = built("shifted", shift="covariate", pixels=4)
    assert torch.equal(clean.splits["train"][0], moved.splits["train"][0])
    x0, x4 = clean.splits["test"][0], moved.splits["test"][0]
    assert torch.equal(x4[..., 4:], x0[..., :-4]) and (x4[..., :4] == 0).all()


# -- seq-recall --------------------------------------------------------------------------------


def test_seq_recall_labels_follow_the_rule():
    task = built("seq-recall", keys=2, key_span=0.5, num_train=300, meta_size=50)
    x, y = task.splits["train"]
    tokens, marker = x[..., :-1].argmax(-1), x[..., -1]
    assert (marker.sum(1) == 2).all() and (marker[:, 20:] == 0).all()  # keys in the first half
    assert torch.equal(((tokens * marker).sum(1) % 4).long(), y)
    assert task.spec.input_shape == (40, 5) and task.clip_grad_norm == 1.0


def test_options_name_the_key_that_is_wrong():
    with pytest.raises(ValidationError, match="key_span"):
        SeqRecallOptions(keys=30, key_span=0.5)


# -- regression --------------------------------------------------------------------------------


class Constant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x), 1), self.value)


def test_regression_rmse_of_the_mean_is_the_std():
    task = built("regression")
    y = task.splits["test"][1].double()
    metrics = task.evaluate(Constant(y.mean().item()), "test")
    assert metrics["rmse"] == pytest.approx(y.std(unbiased=False).item(), rel=1e-5)
    assert metrics["r2"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["loss"] == pytest.approx(metrics["rmse"] ** 2)
    assert (task.metric, task.higher_is_better) == ("rmse", False)
    y_train = torch.cat([task.splits["train"][1], task.splits["meta"][1]])
    assert task.loss_scale == pytest.approx(y_train.var(unbiased=False).item())


def test_regression_trains():
    task = built("regression")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    before = task.evaluate(model, "test")["rmse"]
    for _ in range(15):  # about a second
        for batch in task.train_batches(64, gen):
            opt.zero_grad()
            task.loss(model, batch).backward()
            opt.step()
    after = task.evaluate(model, "test")
    assert after["r2"] > 0.6 and after["rmse"] < before / 4  # the mean: r2 0, (before, after)


# -- char-lm -----------------------------------------------------------------------------------


def test_char_lm_metrics_and_corpus():
    from metalr_text.model import LSTMLanguageModel

    task = built("char-lm", max_chars=60_000)
    assert 40 < len(task.vocab) < 130 and all(len(c) == 1 for c in task.vocab[1:])
    assert task.loss_scale == pytest.approx(math.log(len(task.vocab)))
    assert task.spec.kind == "language-model" and task.spec.input_shape == (64,)
    assert sum(v.numel() for v in task.ids.values()) == 60_000
    torch.manual_seed(0)
    model = LSTMLanguageModel(len(task.vocab), 16, 16, 1, 0.0, True)
    metrics = task.evaluate(model, "meta")
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-9)
    assert metrics["bpc"] == pytest.approx(metrics["loss"] / math.log(2), rel=1e-9)
    assert metrics["loss"] == pytest.approx(task.loss_scale, rel=0.05)  # untrained: uniform
    assert (task.metric, task.higher_is_better) == ("bpc", False)
