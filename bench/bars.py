"""Issue 18's and issue 19's bars, computed from the output folders of ``metalr run``.

    python bench/bars.py OUT_DIR [OUT_DIR ...]

Each OUT_DIR is a run folder (it holds results.csv and recipe.yaml); folders of the same recipe
are merged by method, a later folder's row replacing an earlier one's (e.g. the baselines from
one run, the MLR-SNet rows from a rerun). Per recipe and optimizer family (``sgdm-``, ``adam-``)
it prints the default MLR-SNet row (``<family>-mlrsnet``) against:

- the best tuned baseline of that family (``fixed``, ``cosine``, ``wsd``: the methods with
  ``tune``) and of both families;
- "within": at most one point below (accuracy) or 3% worse (any lower-is-better metric);
- Schedule-Free AdamW at its defaults (``adamw-schedulefree``): at or above it;
- seeds where the tuned fixed LR trains and MLR-SNet does not: at chance (accuracy at most
  1/classes + 0.05, the tuning's rule) or, for lower-is-better metrics, more than twice the
  fixed LR's value on that seed.

- the control with nothing learned (``<family>-control``, ``probed-wsd``): the difference of
  the means and on how many seeds the learned schedule is at or above it (issue 19).

Then the shares over all rows: issue 18's bar is 80% within (either reading of "best"), 80% at
or above Schedule-Free AdamW, and no failed seed; issue 19's, at or above the control in mean
and on at least 2 of 3 seeds, on every row.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import yaml

from metalr.contracts.registry import get_registry
from metalr.running.results import at_chance, chance_level, within_bar

TUNED = ("fixed", "cosine", "wsd")


def _rows(folder: Path) -> tuple[str, dict, dict[str, dict[str, str]]]:
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    with open(folder / "results.csv", newline="") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    return recipe["name"], recipe, rows


def _seeds(row: dict[str, str]) -> dict[int, float]:
    """Per-seed final values of the headline metric (the ``final ... seedN`` columns)."""
    out = {}
    for key, value in row.items():
        if key.startswith("final ") and " seed" in key and value not in ("", "-", None):
            out[int(key.rsplit("seed", 1)[1])] = float(value)
    return out


def _chance(recipe: dict) -> float | None:
    task = get_registry().get("task", recipe["task"]["name"]).build(
        **recipe["task"].get("options", {}))
    return chance_level(task)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args(argv)
    suites: dict[str, tuple[dict, dict[str, dict[str, str]]]] = {}
    for folder in args.folders:
        if not (folder / "results.csv").is_file() or not (folder / "recipe.yaml").is_file():
            parser.error(f"{folder}: no results.csv and recipe.yaml (a run folder of "
                         "`metalr run`, finished)")
        name, recipe, rows = _rows(folder)
        merged = suites.setdefault(name, (recipe, {}))[1]
        merged.update(rows)
    counts = {"rows": 0, "within_family": 0, "within_any": 0, "sf": 0, "failed": 0,
              "controlled": 0, "pays": 0}
    print("| row | MLR-SNet (per seed) | best tuned, same optimizer | best tuned, any | within "
          "(same / any) | >= SF-AdamW | failed seeds | learned - control |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (recipe, rows) in sorted(suites.items()):
        header = next(iter(rows.values()))
        metric = next(k for k in header if k.startswith("final ") and "seed" not in k)
        higher = "accuracy" in metric
        chance = _chance(recipe) if higher else None
        values = {m: _seeds(r) for m, r in rows.items()}
        means = {m: statistics.fmean(v.values()) for m, v in values.items() if v}

        def best(prefixes):
            tuned = [m for m in means if m.split("-", 1)[0] in prefixes
                     and m.split("-", 1)[-1] in TUNED]
            if not tuned:
                return None
            return (max if higher else min)(tuned, key=means.__getitem__)

        families = [m[: -len("-mlrsnet")] for m in rows if m.endswith("-mlrsnet")]
        any_best = best(families)
        for family in families:
            method = f"{family}-mlrsnet"
            if method not in means:
                continue
            mine, own = means[method], best((family,))
            sf = means.get("adamw-schedulefree")
            fixed = values.get(f"{family}-fixed", {})
            failed = []
            for seed, value in sorted(values[method].items()):
                base = fixed.get(seed)
                if base is None:
                    continue
                if higher and chance is not None:
                    if at_chance(value, chance) and not at_chance(base, chance):
                        failed.append(seed)
                elif not higher and value > 2 * base:
                    failed.append(seed)
            w_own = own is not None and within_bar(mine, means[own], higher)
            w_any = any_best is not None and within_bar(mine, means[any_best], higher)
            at_sf = sf is not None and (mine >= sf if higher else mine <= sf)
            counts["rows"] += 1
            counts["within_family"] += w_own
            counts["within_any"] += w_any
            counts["sf"] += at_sf
            counts["failed"] += len(failed)
            control = values.get(f"{family}-control", {})
            if control and f"{family}-control" in means:
                shared = [s_ for s_ in values[method] if s_ in control]
                won = sum((values[method][s_] >= control[s_]) if higher
                          else (values[method][s_] <= control[s_]) for s_ in shared)
                gain = mine - means[f"{family}-control"]
                pays = (gain >= 0 if higher else gain <= 0) and won >= min(2, len(shared))
                counts["controlled"] += 1
                counts["pays"] += pays
                versus = f"{gain:+.4g} ({won}/{len(shared)} seeds){'' if pays else ' no'}"
            else:
                versus = "-"
            seeds = " / ".join(f"{v:.4g}" for _, v in sorted(values[method].items()))
            cells = [f"{name}, {family}", f"{mine:.4g} ({seeds})",
                     f"{own}: {means[own]:.4g}" if own else "-",
                     f"{any_best}: {means[any_best]:.4g}" if any_best else "-",
                     f"{'yes' if w_own else 'no'} / {'yes' if w_any else 'no'}",
                     "-" if sf is None else f"{'yes' if at_sf else 'no'} ({sf:.4g})",
                     ", ".join(f"seed {s}" for s in failed) or "-", versus]
            print("| " + " | ".join(cells) + " |")
    n = counts["rows"]
    if not n:
        print("no MLR-SNet rows found")
        return 1

    def share(k):
        return f"{counts[k]}/{n} ({100 * counts[k] / n:.0f}%)"

    print(f"\nwithin, same optimizer: {share('within_family')}; within, any optimizer: "
          f"{share('within_any')}; >= Schedule-Free AdamW: {share('sf')}; "
          f"failed seeds: {counts['failed']}")
    met = (counts["within_any"] >= 0.8 * n and counts["sf"] >= 0.8 * n
           and counts["failed"] == 0)
    print(f"issue 18's bar (80% within the best of any optimizer, 80% >= SF-AdamW, no failed "
          f"seed): {'met' if met else 'not met'}")
    if counts["controlled"]:
        print(f"issue 19's bar (learned >= control in mean and on >= 2 of 3 seeds, every row): "
              f"{counts['pays']}/{counts['controlled']} rows, "
              f"{'met' if counts['pays'] == counts['controlled'] else 'not met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
