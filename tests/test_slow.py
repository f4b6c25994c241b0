"""Every shipped recipe runs end to end at a tiny budget (`tox -e slow`, or `pytest -m slow`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from metalr.contracts.registry import get_registry
from metalr.engine.datafiles import MissingDataError
from metalr.recipes.loader import load_recipe
from metalr.running.runner import Runner
from metalr.testing import check_learned

pytestmark = pytest.mark.slow

# Methods that must finish but need not learn at this budget; every other method must beat
# chance (check_learned). Each entry says why; keep the list short.
MAY_NOT_LEARN = {
    # what the ablation shows: the paper's preset under Adam keeps gamma = 1 (an SGD scale), and
    # Adam steps of ~1 wreck the model (chance on MNIST-1D, perplexity ~1e40 on pydoc-lm)
    "recipes/ablations/": {"adam-paper"},
    # warm-up longer than 2 epochs: DoG's first step is 1e-6 of the weights' norm and it is
    # evaluated on polynomially averaged weights; in 22 steps on digits its training loss does
    # not move, at the recipes' budget it reaches 0.99 (digits) and 0.66 (MNIST-1D),
    # docs/results.md. Prodigy (d0 = 1e-6) beats chance in 2 epochs except with the CNN.
    "recipes/cpu/": {"dog"},
    "recipes/transfer/mnist1d-cnn.yaml": {"prodigy"},
    # the hard suite's point: a loss plateau that lasts hundreds of steps at any LR (recurrent
    # nets reading a token 40 steps back; an 8-layer plain MLP), far beyond 2 epochs (80 and 56
    # steps); at its budget tuned baselines escape it (docs/hard-tasks.md)
    "recipes/hard/seq-recall-gru.yaml": {"*"},
    "recipes/hard/seq-recall-lstm.yaml": {"*"},
    "recipes/hard/deep-plain.yaml": {"*"},
    "recipes/hard/": {"dog"},  # its warm-up, as on the CPU suites
    # the recheck ablations' starts 10x too high: without the brake and the recheck that is
    # their point (MNIST-1D at the full budget: SGD momentum 0.095, Adam 0.386); with them, 2
    # epochs leave too little run after the recheck (at 10%) to recover, and digits' SGD momentum
    # run ends at chance or above it depending on what ran before it in the process (0.098 when
    # it ran first, above chance after 70 other tests; cause not found)
    "recipes/ablations/recheck-": {"sgdm-high10", "sgdm-high10-none", "adam-high10",
                                   "adam-high10-none"},
}
# Methods whose divergence at the recipe's setting is a finding the docs report, not a bug:
# Schedule-Free SGD at its default LR 1 on squared errors of ~200 (every seed, full budget too).
MAY_DIVERGE = {"recipes/hard/regression.yaml": {"sgd-schedulefree"}}

RECIPES = sorted(str(p.relative_to(Path(__file__).parents[1]))
                 for p in Path(__file__).parents[1].glob("recipes/**/*.yaml"))


def _few_episodes(methods: dict) -> list[str]:
    """Overrides that shrink meta-training over other tasks' whole runs (``meta.episode_tasks``)
    to one update of one pair of one-epoch episodes: ``train.epochs`` does not reach those runs,
    and at the recipe's own 300 episodes of 30-60 epochs the test took most of an hour."""
    found = []
    for name, method in methods.items():
        tasks = (method.get("meta") or {}).get("episode_tasks")
        if tasks:
            found += [f"methods.{name}.meta.episode_tasks="
                      + json.dumps([{**task, "epochs": 1} for task in tasks]),
                      f"methods.{name}.lr_policy.options.episodes=2",
                      f"methods.{name}.lr_policy.options.pairs=1"]
    return found


def _skip_without_data(recipe) -> None:
    """The paper's recipes read datasets nothing here may download (CIFAR, SVHN, TinyImageNet,
    ImageNet, CIFAR-C, PTB): on a machine without them the test is skipped with the task's own
    message naming the missing files (their loaders are tested on small files in the true
    format, tests/test_paper_data.py). Any other failure still fails."""
    task = get_registry().get("task", recipe.task.name).build(**recipe.task.options)
    check = getattr(task, "check_files", None)
    if check is not None:
        try:
            check()
        except MissingDataError as exc:
            pytest.skip(str(exc).splitlines()[0][:300])


@pytest.mark.parametrize("path", RECIPES)
def test_recipe_runs_at_a_tiny_budget(path, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).parents[1])
    methods = yaml.safe_load(Path(path).read_text())["methods"]
    no_saves = [f"methods.{m}.meta.save_epochs=[]" for m, v in methods.items() if "meta" in v]
    recipe = load_recipe(path, ["train.epochs=2", "train.seeds=[0]", "tuning.epochs=1",
                                "tracking=none", f"output_dir={tmp_path}", *no_saves,
                                *_few_episodes(methods)])
    _skip_without_data(recipe)
    summary = Runner(recipe, progress=False).run()
    for r in summary.tuning:
        # a grid point may diverge (tuning is there to find out); it may not crash (a bug)
        assert r.status == "FINISHED" or "Error:" not in (r.error or ""), (r.label, r.error)
    may_not_learn = {m for prefix, ms in MAY_NOT_LEARN.items() if path.startswith(prefix)
                     for m in ms}
    if "*" in may_not_learn:
        may_not_learn = set(methods)
    diverging = MAY_DIVERGE.get(path, set())
    for r in summary.results:
        if r.method in diverging and r.status != "FINISHED":
            assert "training loss" in (r.error or ""), (r.label, r.error)  # diverged, no bug
    summary.results = [r for r in summary.results
                       if not (r.method in diverging and r.status != "FINISHED")]
    check_learned(summary, may_not_learn)  # finished, above chance (test_conformance proves it)
