"""A net meta-trained once over a set of tasks, frozen, against the control on each suite's rows.

    python bench/es_set.py [--sgdm NET] [--adam NET] [--recipes cpu/mnist1d hard/shifted ...]

The measurement behind docs/design.md, "Meta-trained once over a set of tasks" (issue 19, item
4). The nets come from ``metalr run recipes/ablations/es-set.yaml`` (``mlrsnet-es`` meta-trained
by evolution strategies over whole runs of five tasks, ``meta.episode_tasks``): its
``<method>-seed7/theta-final.safetensors``; given neither net, the script runs that recipe
first (both nets, about 40 minutes on the 2-core CPU machine). Each recipe of ``--recipes``
(paths under ``recipes/``) runs, for every optimizer family given a net, the net frozen
(``meta.mode: meta-test`` with the options of its file's header: its shape and its probe,
brake, recheck and cool-down settings) beside the family's control (``<family>-control``:
the same schedule with nothing learned) and default MLR-SNet (``<family>-mlrsnet``), on the
recipe's seeds, and prints the final metric per seed and the learned-minus-control difference.
Nothing is tracked; the run folders go under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from metalr.engine.weights import read_meta_learner
from metalr.recipes.loader import load_recipe
from metalr.running.runner import Runner

REPO = Path(__file__).resolve().parents[1]
OPTIMIZERS = {"sgdm": "{name: sgd, options: {momentum: 0.9, weight_decay: 5.0e-4}}",
              "adam": "{name: adam}"}
RECIPES = ["quickstart", "cpu/mnist1d", "cpu/digits", "hard/regression", "hard/noisy-labels",
           "hard/shifted", "hard/deep-plain"]


def methods(recipe: str, family: str) -> tuple[str, str, str]:
    """(net, control, mlrsnet) method names; the quickstart's are unprefixed (SGD momentum)."""
    if recipe == "quickstart":
        return f"{family}-es", "control", "mlrsnet"
    return f"{family}-es", f"{family}-control", f"{family}-mlrsnet"


def header_options(path: Path, cooldown: float | None) -> dict:
    """The options a net was meta-trained with (its shape: hidden, progress, skip; its probe,
    brake, recheck and cool-down), read from its file's header; ``cooldown`` overrides its
    cool-down."""
    options = dict(read_meta_learner(path)[1])
    if cooldown is not None:
        options["cooldown"] = cooldown
    return options


def run(recipe: str, nets: dict[str, Path], options: dict[str, dict],
        out: Path) -> list[tuple[str, str, dict, bool]]:
    """One recipe's rows: ``(recipe, family, {method: {seed: final}}, higher_is_better)``; each
    net runs with its ``options`` (:func:`header_options`)."""
    families = [f for f in nets if recipe != "quickstart" or f == "sgdm"]
    overrides = [f"output_dir={out}", "tracking=none"]
    only = []
    for family in families:
        net, control, mlrsnet = methods(recipe, family)
        policy = json.dumps({"name": "mlrsnet-es", "options": options[family]})
        overrides.append(f"methods.{net}={{optimizer: {OPTIMIZERS[family]}, lr_policy: "
                         f"{policy}, meta: {{mode: meta-test, weights: {nets[family]}}}}}")
        only += [net, control, mlrsnet]
    loaded = load_recipe(REPO / "recipes" / f"{recipe}.yaml", overrides, only=only)
    summary = Runner(loaded, progress=False).run()
    rows = []
    for family in families:
        finals: dict[str, dict[int, float]] = {}
        for method in methods(recipe, family):
            finals[method] = {r.seed: r.final(f"test_{summary.metric}") for r in summary.results
                              if r.method == method}
        rows.append((recipe, family, finals, summary.higher_is_better))
    return rows


def meta_train(out: Path) -> dict[str, Path]:
    """Both nets of ``recipes/ablations/es-set.yaml``, meta-trained now."""
    recipe = load_recipe(REPO / "recipes" / "ablations" / "es-set.yaml",
                         [f"output_dir={out}", "tracking=none"])
    summary = Runner(recipe, progress=False).run()
    if not summary.ok:
        raise SystemExit(f"meta-training failed: see {summary.output_dir}")
    return {r.method.split("-")[0]: r.files["final"] for r in summary.results}


def show(rows: list[tuple[str, str, dict, bool]]) -> None:
    print("| recipe | optimizer | net (per seed) | control (per seed) | MLR-SNet (per seed) "
          "| net - control | seeds at or above (better or equal) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for recipe, family, finals, higher in rows:
        net, control, mlrsnet = (finals[m] for m in methods(recipe, family))
        cells = []
        for values in (net, control, mlrsnet):
            seeds = [values[s] for s in sorted(values)]
            cells.append(f"{statistics.mean(seeds):.4g} ("
                         + " / ".join(f"{v:.4g}" for v in seeds) + ")")
        diffs = [net[s] - control[s] for s in sorted(net)]
        at_or_above = sum((d >= 0) if higher else (d <= 0) for d in diffs)
        print(f"| {recipe} | {family} | {' | '.join(cells)} | "
              f"{statistics.mean(diffs):+.4g} | {at_or_above}/{len(diffs)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sgdm", type=Path, help="net meta-trained with SGD momentum")
    parser.add_argument("--adam", type=Path, help="net meta-trained with Adam")
    parser.add_argument("--recipes", nargs="+", default=RECIPES,
                        help="recipes under recipes/, without .yaml")
    parser.add_argument("--out", type=Path, default=Path("metalr-out/es-set"))
    parser.add_argument("--cooldown", type=float, default=None,
                        help="run the nets with this cool-down instead of the one they were "
                        "meta-trained with (their header's)")
    args = parser.parse_args()
    nets = {f: p.resolve() for f, p in (("sgdm", args.sgdm), ("adam", args.adam)) if p}
    if not nets:
        nets = meta_train(args.out)
    for family, path in nets.items():
        if not path.is_file():
            parser.error(f"--{family}: no file {path}")
    options = {family: header_options(path, args.cooldown) for family, path in nets.items()}
    rows = []
    for recipe in args.recipes:
        rows += run(recipe, nets, options, args.out)
    show(rows)


if __name__ == "__main__":
    main()
