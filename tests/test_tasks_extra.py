"""The digits and pydoc-lm task plugins, on their real offline data (no mocks)."""

from __future__ import annotations

import functools
import math

import higher
import metalr_digits
import metalr_text
import pytest
import torch
from metalr_digits.task import NUM_SAMPLES, Digits
from metalr_text.task import EOS, UNK, PydocLM, pydoc_text, tokenize
from torch.nn import functional as F

from metalr.contracts.registry import Registry

CPU = torch.device("cpu")


@functools.lru_cache(maxsize=1)
def _registry() -> Registry:
    """Just these two plugins, registered through their hooks (not the installed entry points)."""
    reg = Registry(strict=True)
    assert reg.add_plugin(metalr_digits, "test:digits")
    assert reg.add_plugin(metalr_text, "test:text")
    return reg


def component(kind: str, name: str):
    return _registry().components[kind][name]


# -- digits -------------------------------------------------------------------------------------


def test_digits_splits_disjoint_and_complete():
    tests = []
    for seed in (0, 1, 2):
        task = Digits()
        task.setup(seed, CPU)
        idx = {k: set(v.tolist()) for k, v in task.indices.items()}
        assert len(idx["meta"]) == 200 and len(idx["test"]) == 297
        assert not (idx["train"] & idx["meta"]) and not (idx["train"] & idx["test"])
        assert not (idx["meta"] & idx["test"])
        assert sum(map(len, idx.values())) == NUM_SAMPLES
        assert idx["train"] | idx["meta"] | idx["test"] == set(range(NUM_SAMPLES))
        assert task.splits["train"][0].shape[1:] == (1, 8, 8)
        tests.append(task.indices["test"])
    # The test split depends on data_seed only; the meta split moves with the run seed.
    assert all(torch.equal(tests[0], t) for t in tests)
    a, b = Digits(), Digits()
    a.setup(0, CPU), b.setup(1, CPU)
    assert not torch.equal(a.indices["meta"], b.indices["meta"])
    c = Digits(data_seed=1)
    c.setup(0, CPU)
    assert not torch.equal(c.indices["test"], a.indices["test"])


def test_digits_sgd_learns():
    torch.manual_seed(0)
    task = component("task", "digits").build()
    task.setup(0, CPU)
    x = task.splits["train"][0]
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1  # standardised
    model = component("model", "cnn-digits").build(task.spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # about 0.2 s on an idle core
        for batch in task.train_batches(64, gen):
            opt.zero_grad()
            task.loss(model, batch).backward()
            opt.step()
    acc = task.evaluate(model, "test")["accuracy"]
    assert acc > 0.9, acc  # chance is 0.1


# -- pydoc-lm: data ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_task() -> PydocLM:
    task = PydocLM()
    task.setup(0, CPU)
    return task


def test_pydoc_splits_contiguous_and_disjoint(lm_task):
    tokens = tokenize(pydoc_text())
    bounds = lm_task.corpus.bounds
    assert bounds["train"][0] == 0 and bounds["test"][1] == len(tokens)
    assert bounds["train"][1] == bounds["meta"][0] and bounds["meta"][1] == bounds["test"][0]
    sizes = {k: b - a for k, (a, b) in bounds.items()}
    assert sizes["meta"] == sizes["test"] == int(0.1 * len(tokens))
    joined = torch.cat([lm_task.ids[s] for s in ("train", "meta", "test")])
    assert torch.equal(joined, lm_task.corpus.ids)
    assert lm_task.spec.kind == "language-model" and lm_task.spec.input_shape == (35,)
    assert lm_task.spec.num_outputs == len(lm_task.vocab)
    assert lm_task.loss_scale == pytest.approx(math.log(len(lm_task.vocab)))
    assert (lm_task.metric, lm_task.higher_is_better) == ("perplexity", False)
    assert lm_task.clip_grad_norm == 0.25 and lm_task.default_gamma == 40.0


def test_pydoc_vocabulary_from_train_only(lm_task):
    tokens = tokenize(pydoc_text())
    a, b = lm_task.corpus.bounds["train"]
    train_words = set(tokens[a:b])
    t0 = lm_task.corpus.bounds["test"][0]
    test_only = [(i, w) for i, w in enumerate(tokens[t0:]) if w not in train_words]
    assert test_only, "the tail of the corpus should have words the training part lacks"
    assert set(lm_task.vocab) == train_words | {UNK, EOS}
    unk = lm_task.word_to_id[UNK]
    for i, w in test_only[:50]:
        assert w not in lm_task.word_to_id
        assert lm_task.ids["test"][i].item() == unk
    # A known word keeps its id everywhere.
    i = next(i for i, w in enumerate(tokens[t0:]) if w in train_words and w != EOS)
    assert lm_task.vocab[lm_task.ids["test"][i].item()] == tokens[t0 + i]
    rare = PydocLM(min_count=3)
    assert len(rare.vocab) < len(lm_task.vocab)


def test_pydoc_batches_count_shape_and_hidden_carry(lm_task):
    gen = torch.Generator().manual_seed(0)
    for bs in (7, 20):
        batches = list(lm_task.train_batches(bs, gen))
        assert len(batches) == lm_task.num_train_batches(bs)
        assert all(b.x.shape[1] == bs and b.x.shape == b.y.shape for b in batches)
        assert all(b.x.shape[0] == 35 for b in batches[:-1])
        assert torch.equal(batches[0].x[1:], batches[0].y[:-1])  # targets are the next tokens
        tokens = sum(b.y.numel() for b in batches)
        assert tokens == (lm_task.ids["train"].numel() // bs - 1) * bs
    model = lm_task_model(lm_task, size=16).eval()  # no dropout: the state is reproducible
    it = lm_task.train_batches(4, gen)
    first = next(it)
    assert first.hidden is None
    _, (h, _) = model(first.x)
    lm_task.loss(model, first)
    # A second look at the same window (a virtual step, say) does not move the carry.
    lm_task.loss(lambda x, h: (model(x, h)[0], tuple(t + 1 for t in model(x, h)[1])), first)
    second = next(it)
    assert second.hidden is not None and not second.hidden[0].requires_grad
    torch.testing.assert_close(second.hidden[0], h.detach())
    lm_task.loss(model, second)  # now there is a training state that must not leak
    meta = lm_task.meta_batch(4, gen)
    assert meta.hidden is None and meta.x.shape == (35, 4)
    logits, _ = model(meta.x)  # from zeros
    expected = F.cross_entropy(logits.reshape(-1, logits.size(-1)), meta.y.reshape(-1))
    torch.testing.assert_close(lm_task.loss(model, meta), expected)
    assert next(it).hidden is not None
    assert next(iter(lm_task.train_batches(4, gen))).hidden is None  # a new epoch starts at zero


# -- pydoc-lm: model --------------------------------------------------------------------------


def lm_task_model(task: PydocLM, size: int, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return component("model", "lstm-lm").build(task.spec, emb_size=size, hidden_size=size, **options)


def test_lstm_tied_weights_and_validation(lm_task):
    model = component("model", "lstm-lm").build(lm_task.spec)
    assert model.decoder.weight is model.encoder.weight
    assert model.rnn.num_layers == 2
    n_unique = sum(p.numel() for p in model.parameters())
    assert n_unique < sum(p.numel() for p in model.state_dict().values())  # counted once
    with pytest.raises(ValueError, match="emb_size == hidden_size"):
        component("model", "lstm-lm").build(lm_task.spec, emb_size=100, hidden_size=200)
    untied = component("model", "lstm-lm").build(
        lm_task.spec, emb_size=100, hidden_size=200, tie_weights=False
    )
    assert untied.decoder.weight is not untied.encoder.weight


def test_lstm_initial_loss_is_log_vocab(lm_task):
    model = lm_task_model(lm_task, size=32)
    model.eval()
    batch = lm_task.meta_batch(10, torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = lm_task.loss(model, batch).item()
    assert abs(loss - lm_task.loss_scale) < 0.05, (loss, lm_task.loss_scale)


def test_lstm_short_sgd_lowers_validation_perplexity():
    task = PydocLM(max_train_eval_tokens=2000)
    task.setup(0, CPU)
    model = lm_task_model(task, size=32, num_layers=1, dropout=0.0)
    before = task.evaluate(model, "meta")["perplexity"]
    gen = torch.Generator().manual_seed(0)
    for i, batch in enumerate(task.train_batches(20, gen)):
        if i == 40:
            break
        model.zero_grad()
        task.loss(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), task.clip_grad_norm)
        with torch.no_grad():
            for p in model.parameters():
                p -= 20.0 * p.grad
    after = task.evaluate(model, "meta")
    assert after["perplexity"] < 0.5 * before, (before, after)
    assert after["perplexity"] == pytest.approx(math.exp(after["loss"]))
    assert set(task.evaluate(model, "train")) == {"loss", "perplexity"}


def test_functional_copy_matches_module_and_keeps_tie(lm_task):
    model = lm_task_model(lm_task, size=24)
    model.eval()  # dropout off, so both paths are deterministic
    batch = lm_task.meta_batch(8, torch.Generator().manual_seed(2))
    fmodel = higher.monkeypatch(model, copy_initial_weights=False)
    params = list(model.parameters())
    f_loss = lm_task.loss(functools.partial(fmodel, params=params), batch)
    m_loss = lm_task.loss(model, batch)
    torch.testing.assert_close(f_loss, m_loss)
    # The shared matrix gets both its embedding and decoder gradient through the functional path.
    f_grads = torch.autograd.grad(f_loss, params)
    m_grads = torch.autograd.grad(m_loss, params)
    for fg, mg in zip(f_grads, m_grads):
        torch.testing.assert_close(fg, mg)
    # And the functional path really uses the params it is given.
    shifted = [p + 0.05 if p is model.encoder.weight else p for p in params]
    shifted_loss = lm_task.loss(functools.partial(fmodel, params=shifted), batch)
    assert not torch.allclose(shifted_loss, m_loss)
