"""Every shipped recipe runs end to end at a tiny budget (`tox -e slow`, or `pytest -m slow`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from metalr.recipe import load_recipe
from metalr.runner import Runner
from metalr.testing import check_learned

pytestmark = pytest.mark.slow

RECIPES = sorted(str(p.relative_to(Path(__file__).parents[1]))
                 for p in Path(__file__).parents[1].glob("recipes/**/*.yaml"))


@pytest.mark.parametrize("path", RECIPES)
def test_recipe_runs_at_a_tiny_budget(path, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).parents[1])
    methods = yaml.safe_load(Path(path).read_text())["methods"]
    no_saves = [f"methods.{m}.meta.save_epochs=[]" for m, v in methods.items() if "meta" in v]
    recipe = load_recipe(path, ["train.epochs=2", "train.seeds=[0]", "tuning.epochs=1",
                                "tracking=none", f"output_dir={tmp_path}", *no_saves])
    summary = Runner(recipe, progress=False).run()
    for r in summary.tuning:
        # a grid point may diverge (tuning is there to find out); it may not crash (a bug)
        assert r.status == "FINISHED" or "Error:" not in (r.error or ""), (r.label, r.error)
    check_learned(summary)  # every method finished, above chance (test_conformance proves it)
