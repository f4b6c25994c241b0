"""bench/unseen.py's tasks of the kinds added last (``hastie``, ``friedman3``, ``digits-gru``):
each builds, and the control learns on it within two epochs, beyond what no learning gives
(chance for the classifiers, the targets' own spread for the regression), so the numbers
docs/hard-tasks.md quotes for them come from tasks that train."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("name, optimizer, bound", [
    ("hastie", "sgdm", 0.6),  # two balanced classes: chance 0.5
    ("digits-gru", "adam", 0.5),  # ten classes: chance 0.1
])
def test_a_new_unseen_classifier_learns(load_bench, name, optimizer, bound):
    unseen = load_bench("unseen")
    torch.set_num_threads(1)
    history = unseen.build(name, optimizer, "probed-wsd", 0, epochs=2).fit()
    assert history.epochs[-1]["test_accuracy"] > bound


def test_friedman3_is_a_small_target_regression_that_learns(load_bench):
    unseen = load_bench("unseen")
    torch.set_num_threads(1)
    x, y = unseen._data("friedman3")
    assert y.dtype == torch.float32 and 1.0 < y.mean() < 1.6 and 0.2 < y.std() < 0.5
    history = unseen.build("friedman3", "adam", "probed-wsd", 0, epochs=2).fit()
    assert history.epochs[-1]["test_rmse"] < 0.6 * float(y.std())


def test_the_row_reader_reads_an_image_as_rows(load_bench):
    """``digits-gru``'s model takes the digits task's ``(batch, 1, 8, 8)`` images as eight steps
    of eight features: a different image order changes the output (it reads rows in order)."""
    unseen = load_bench("unseen")
    task = unseen.make_task("digits-gru")
    model = unseen.make_model("digits-gru", task.spec)
    torch.manual_seed(0)
    images = torch.randn(4, 1, 8, 8)
    out = model(images)
    assert out.shape == (4, task.spec.num_outputs)
    assert not torch.allclose(model(images.flip(2)), out)  # rows reversed: another sequence


def test_within_the_bar_is_a_point_for_accuracies_and_three_percent_for_losses():
    from metalr.running.results import within_bar

    assert within_bar(0.906, 0.915, True) and not within_bar(0.904, 0.915, True)
    assert within_bar(0.99, 0.95, True)  # above the best: within
    assert within_bar(1.03, 1.0, False) and not within_bar(1.031, 1.0, False)
    assert within_bar(0.5, 1.0, False)


def test_the_unseen_bench_says_which_rows_are_within_the_grids_best(load_bench, capsys):
    unseen = load_bench("unseen")
    unseen.verdict({"mlrsnet": 0.932, "control": 0.975, "wsd 0.01": 0.983, "wsd 0.1": float("nan")},
                   higher=True)
    out = capsys.readouterr().out.splitlines()
    assert out == ["  mlrsnet against the best WSD (0.01): outside, -5.1 points",
                   "  control against the best WSD (0.01): within, -0.8 points"]
    unseen.verdict({"mlrsnet": 0.1159, "wsd 0.3": 0.1122, "wsd 1": float("nan")}, higher=False)
    assert capsys.readouterr().out == "  mlrsnet against the best WSD (0.3): outside, +3.3%\n"
