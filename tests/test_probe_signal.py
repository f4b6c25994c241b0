"""The LR probe knows when it has measured nothing (issue 18): a recurrent net on a loss plateau.

The task: the label is the first of 12 random tokens, read by a GRU at the last one. With SGD
every LR of the probe's grid leaves the loss at ln(4) to a few 1e-6 (the gradient that would
carry the first token has vanished), so the old rule picked its "best" point from noise: on
seed 0 3.2e-6, and started the run at 1.6e-6.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metalr.contracts.protocols import ModelSpec
from metalr.engine.data import TensorClassificationTask
from metalr.engine.probe import (
    BUDGET,
    LONGER,
    PLATEAU,
    SIGNAL_FLOOR,
    has_signal,
    probe_lr,
    probe_steps,
)
from metalr.engine.recheck import recheck_lr


class FirstToken(TensorClassificationTask):
    """Generated sequences of 4 symbols (one-hot); the class is the first symbol."""

    def __init__(self, length: int = 12, n: int = 2000):
        super().__init__(meta_size=300)
        self.length, self.n = length, n
        self.spec = ModelSpec((length, 4), 4)

    def load(self):
        tokens = torch.randint(4, (self.n + 500, self.length),
                               generator=torch.Generator().manual_seed(0))
        x, y = nn.functional.one_hot(tokens, 4).float(), tokens[:, 0].clone()
        return (x[: self.n], y[: self.n]), (x[self.n :], y[self.n :])


class GRUHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.GRU(4, 32, batch_first=True), nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def _probe(seed: int, epochs: int = 30):
    task = FirstToken()
    task.setup(seed, torch.device("cpu"))
    torch.manual_seed(seed)
    model = GRUHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps_per_epoch = task.num_train_batches(128)
    assert steps_per_epoch == 14
    return probe_lr(task, model, opt, total_steps=epochs * steps_per_epoch,
                    steps_per_epoch=steps_per_epoch, batch_size=128, meta_batch_size=128,
                    seed=seed)


def test_a_plateau_has_no_signal_and_the_start_is_not_picked_from_noise():
    result = _probe(0)
    # what the probe saw: no point improved on the untrained loss by even 0.1% ...
    assert result.initial_loss - min(result.losses.values()) < 1e-3 * result.initial_loss
    # ... so the old rule's best (and start, edge / 2 = 1.6e-6) came from noise
    assert result.best < 1e-4 and result.edge / 2 < 1e-4
    assert not result.signal
    # instead: half the largest LR that did no harm on the plateau (loss within PLATEAU of the
    # untrained one), which is above what a 1% tolerance allows: larger steps wobble a flat loss
    def edge(tolerance):
        return max(lr for lr, v in result.losses.items()
                   if v <= result.initial_loss + max(result.noise, tolerance))

    assert result.lr == pytest.approx(edge(PLATEAU * result.initial_loss) / 2)
    assert result.lr > 100 * result.best
    assert edge(PLATEAU * result.initial_loss) > edge(0.01 * result.initial_loss)
    assert any(v > result.initial_loss * (1 + PLATEAU) for v in result.losses.values())


def test_a_task_that_learns_has_signal_and_keeps_its_rule(registry):
    task = registry.get("task", "mnist1d").build(meta_size=100, num_samples=600)
    task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    model = registry.get("model", "mlp").build(task.spec, hidden=[32])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    result = probe_lr(task, model, opt, total_steps=300, steps_per_epoch=10, batch_size=64,
                      meta_batch_size=64, seed=0)
    assert result.signal and result.lr == pytest.approx(result.edge / 2)
    assert result.initial_loss - result.losses[result.best] > result.noise > 0


@pytest.mark.parametrize(("initial", "best", "noise", "expected"), [
    (2.0, 1.0, 0.1, True),
    (2.0, 1.0, 1.5, False),  # the improvement is within the replicate's movement
    (2.0, 2.0 * (1 - SIGNAL_FLOOR / 2), 0.0, False),  # noiseless but below the floor
    (2.0, 2.0 * (1 - 2 * SIGNAL_FLOOR), 0.0, True),
])
def test_has_signal_rule(initial, best, noise, expected):
    assert has_signal(initial, best, noise) is expected


def test_with_budget_a_plateau_gets_a_longer_second_pass():
    """A long run affords the grid once more with LONGER x the steps, over the LRs that did no
    harm; a short one does not (its probe would cost too large a share of the run)."""
    short, long = _probe(0), _probe(0, epochs=600)
    assert short.steps_per_point == probe_steps(30 * 14, 14)
    assert long.steps_per_point == LONGER * short.steps_per_point
    assert long.steps <= BUDGET * 600 * 14
    assert set(long.losses) <= set(short.losses)  # the harmless ones, measured longer
    assert long.lr <= max(long.losses) / 2 or long.signal


def test_a_run_still_on_its_plateau_is_moved_up_at_the_recheck_and_one_that_learned_is_not():
    """The recheck's plateau rule: no progress since the start (the loss not SIGNAL_FLOOR below
    the untrained one) and no point measured better: up to the largest point that kept the loss
    within PLATEAU of where it stands, no higher than the ceiling. Without the untrained loss,
    or with progress made, the same measurements leave the LR alone."""
    task = FirstToken()
    task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    model = GRUHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    kwargs = dict(steps=20, batch_size=128, meta_batch_size=128, seed=0, ceiling=0.5)
    stuck = recheck_lr(task, model, opt, 0.05, untrained=_probe(0).initial_loss, **kwargs)
    assert stuck.initial_loss > (1 - SIGNAL_FLOOR) * _probe(0).initial_loss  # on the plateau
    assert stuck.losses[min(stuck.losses, key=stuck.losses.__getitem__)] > (
        stuck.losses[0.05] - max(stuck.noise, 0.01 * stuck.losses[0.05]))  # no point won
    wobble = stuck.initial_loss + max(stuck.noise, PLATEAU * stuck.initial_loss)
    up = [lr for lr, v in stuck.losses.items() if 0.05 < lr and v <= wobble]
    assert stuck.signal and stuck.lr == pytest.approx(min(max(up), 0.5)) and stuck.lr > 0.05
    assert stuck.lr <= 0.5  # the ceiling bounds it
    assert recheck_lr(task, model, opt, 0.05, **kwargs).lr == 0.05  # no untrained loss: kept
    learned = recheck_lr(task, model, opt, 0.05, untrained=2 * stuck.initial_loss, **kwargs)
    assert learned.losses == stuck.losses and learned.lr == 0.05  # progress made: kept


def test_the_plateau_edge_reaches_at_most_a_decade_past_the_strict_one():
    """The deep plain MLP's probe on seed 0 (recorded in its history.json): every point is within
    10% of the untrained loss up to LR 10, a dead net's flat plateau. The 1% edge is 0.316, so
    the plateau edge stops at 1 (start 0.5), not 10 (start 5)."""
    from metalr.engine.probe import _Found, _plateau_edge

    initial, noise = 2.3080, 0.00554
    losses = {1e-4: 2.308, 1e-3: 2.3079, 0.01: 2.3071, 0.0316: 2.3058, 0.1: 2.3043,
              0.178: 2.3058, 0.316: 2.3119, 1.0: 2.3329, 10.0: 2.5026}
    found = _Found(losses, 0.1, False, 0.178)
    assert max(found.harmless(initial, noise)) == 0.316
    assert all(v <= initial * (1 + PLATEAU) for v in losses.values())
    assert _plateau_edge([found], initial, noise) == 1.0
    # the GRU's plateau (seed 1): the 1% edge is 0.1, LR 1 is the plateau edge (10 blows up)
    gru = {1e-4: 1.3856, 1e-3: 1.3857, 0.01: 1.3875, 0.1: 1.3872, 1.0: 1.4094, 10.0: 60.58}
    assert _plateau_edge([_Found(gru, 1e-4, True, 1e-4)], 1.3856, 2.4e-7) == 1.0
