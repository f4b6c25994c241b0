"""`metalr reproduce SECTION`: rerun a published section's recipes and rewrite its tables.

``results/index.yaml`` maps each generated section of docs/ to the committed recipes that make
it and to the comparisons it states. The command runs those recipes into a fresh MLflow store
in its own output folder, reads the suites back from that store with `metalr report`'s reader,
renders them with its Markdown output (:mod:`metalr.reporting.markdown`: the same rows as the
report's page), stamps the commit and environment, computes the comparisons
(:mod:`metalr.reporting.comparisons`) and replaces the section's generated block in the document:

    <!-- metalr reproduce quickstart -->
    ... written by the command, never by hand ...
    <!-- end metalr reproduce quickstart -->

Prose around the block is kept. ``--store URI`` renders from a store that already holds the
runs (no training), e.g. to rewrite a block after a wording change.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from metalr.running.rundir import RunError

INDEX = Path("results") / "index.yaml"


class Compared(BaseModel):
    """One stated comparison: ``method`` against each of ``against``."""

    model_config = ConfigDict(extra="forbid")
    method: str
    against: list[str]
    margin: float | None = Field(None, ge=0, description="`within`: how far behind still passes")


class RecipeRun(BaseModel):
    """One recipe of a section, restricted or changed the way the command line would:
    ``metalr run RECIPE --only A,B -q KEY=VALUE ...``."""

    model_config = ConfigDict(extra="forbid")
    recipe: str = Field(description="a committed recipe, relative to the repository")
    only: list[str] = Field(default_factory=list, description="run only these methods")
    overrides: list[str] = Field(default_factory=list, description="`key=value` for this recipe")

    def argv(self) -> str:
        only = f" --only {','.join(self.only)}" if self.only else ""
        extra = f" -q {' '.join(map(shlex.quote, self.overrides))}" if self.overrides else ""
        return f"`{self.recipe}`" if not (only or extra) else f"`{self.recipe}{only}{extra}`"


class Section(BaseModel):
    """One generated block of a document."""

    model_config = ConfigDict(extra="forbid")
    doc: str = Field(description="the document, relative to the repository")
    recipes: list[str | RecipeRun] = Field(
        default_factory=list, description="committed recipes (relative paths), or {recipe, "
        "only, overrides} for one run of a recipe restricted to some methods or changed by keys")
    sweeps: list[str | RecipeRun] = Field(
        default_factory=list, description="committed recipes with a sweep: block (`metalr "
        "sweep`), as paths or {recipe, only, overrides}")
    bench: list[str] = Field(
        default_factory=list, description="bench scripts with their arguments, e.g. `python "
        "bench/memory.py --threads 1`: their printed output is the section")
    gather: list[str] = Field(
        default_factory=list, description="other sections whose latest stores (under --out) "
        "this one reads, to tabulate its comparisons across them; it runs nothing itself")
    overrides: list[str] = Field(default_factory=list, description="`key=value` for every recipe")
    compare: list[Compared] = Field(default_factory=list)
    minutes: float | None = Field(None, description="about how long on the 2-core CPU machine")

    @model_validator(mode="after")
    def _something_to_run(self) -> Section:
        if not (self.recipes or self.sweeps or self.bench or self.gather):
            raise ValueError("a section needs recipes, sweeps, bench commands or gather")
        if self.gather and (self.recipes or self.sweeps or self.bench):
            raise ValueError("gather: a section that gathers others runs nothing itself")
        if self.gather and not self.compare:
            raise ValueError("gather: give the comparisons to tabulate (compare:)")
        for line in self.bench:
            if not line.startswith("python bench/"):
                raise ValueError(f"bench: {line!r}: give a committed script as "
                                 "`python bench/NAME.py ARGS`")
        return self

    def _as_runs(self, items: list[str | RecipeRun]) -> list[RecipeRun]:
        return [RecipeRun(recipe=r, overrides=list(self.overrides)) if isinstance(r, str) else
                r.model_copy(update={"overrides": [*self.overrides, *r.overrides]})
                for r in items]

    def runs(self) -> list[RecipeRun]:
        """Every recipe as a run, the section's overrides first (a run's own win)."""
        return self._as_runs(self.recipes)

    def sweep_runs(self) -> list[RecipeRun]:
        return self._as_runs(self.sweeps)

    def made_by(self) -> list[str]:
        """What makes the section, as commands or recipe arguments, for its stamp and --list."""
        made = [run.argv() for run in self.runs()]
        made += [f"`metalr sweep {run.argv().strip('`')}`" for run in self.sweep_runs()]
        made += [f"`{line}`" for line in self.bench]
        made += [f"the stores of `{command(name)}`" for name in self.gather]
        return made


class Index(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sections: dict[str, Section]


def load_index(path: str | Path = INDEX) -> Index:
    """The index, validated; one line naming the file and the key where it is wrong."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: no index of generated sections here; run `metalr reproduce` "
                       "from the repository's root, or pass --index")
    try:
        return Index.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise RunError(f"{path}: {key}: {first['msg']}") from None
    except yaml.YAMLError as exc:
        raise RunError(f"{path}: not YAML ({' '.join(str(exc).split())})") from None


def markers(name: str) -> tuple[str, str]:
    return f"<!-- metalr reproduce {name} -->", f"<!-- end metalr reproduce {name} -->"


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the block of section ``name`` replaced by ``body``."""
    begin, end = markers(name)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if len(pattern.findall(text)) != 1:
        raise RunError(f"the document has no single block for {name!r}: put the two lines "
                       f"{begin!r} and {end!r} where its tables go")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text)


def command(name: str) -> str:
    return f"metalr reproduce {name}"


def run_section(section: Section, out: Path, uri: str, quiet: bool) -> list[str]:
    """Every recipe of the section into the store ``uri``; returns the suite names."""
    from metalr.recipes.loader import load_recipe
    from metalr.running.runner import Runner

    names = []
    for run in section.runs():
        path = run.recipe
        recipe = load_recipe(path, [*run.overrides, f"output_dir={out}"], deep=True,
                             only=run.only)
        if recipe.tracking is None:
            raise RunError(f"{path}: tracking: none, but a section is read back from its "
                           "MLflow store; drop the tracking override from the index")
        runner = Runner(recipe, progress=not quiet)
        runner.tracking_uri = uri
        summary = runner.run()
        if not summary.ok:
            print(f"metalr: {path}: not every run finished; the section shows it")
        names.append(recipe.name)
    for run in section.sweep_runs():
        names.append(run_sweep(run, out, uri, quiet))
    for i, line in enumerate(section.bench):
        run_bench(line, out / f"bench-{i}.txt", quiet)
    return names


def run_sweep(run: RecipeRun, out: Path, uri: str, quiet: bool) -> str:
    """One sweep (every point, its executor's workers) into the store ``uri``; its name."""
    from metalr.recipes.loader import load_recipe
    from metalr.running.sweep import execute, plan

    recipe = load_recipe(run.recipe, run.overrides, only=run.only)
    if recipe.tracking is None:
        raise RunError(f"{run.recipe}: tracking: none, but a section is read back from its "
                       "MLflow store; drop the tracking override from the index")
    tracking = {"name": recipe.tracking.name,
                "options": {**recipe.tracking.options, "tracking_uri": uri}}
    sweep = plan(run.recipe, [*run.overrides, f"output_dir={json.dumps(str(out))}",
                              f"tracking={json.dumps(tracking)}"], only=run.only)
    outcome = execute(sweep, progress=not quiet)
    if not outcome.ok:
        print(f"metalr: {run.recipe}: not every sweep point finished; the section shows it")
    return recipe.name


def run_bench(line: str, out: Path, quiet: bool) -> None:
    """A bench script, run from the repository's root with this Python; its output kept."""
    import subprocess
    import sys

    argv = [sys.executable, *shlex.split(line)[1:]]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " ".join(done.stderr.split()[-40:])
        raise RunError(f"`{line}` failed (exit {done.returncode}): {tail}")
    out.write_text(done.stdout)
    import torch

    from metalr.running.provenance import collect

    tags = {k.removeprefix("metalr."): v for k, v in collect(torch.device("cpu")).items()}
    out.with_suffix(".json").write_text(json.dumps(tags, indent=2) + "\n")
    if not quiet:
        print(done.stdout, end="")


def render_section(name: str, section: Section, suites: list, when: str,
                   bench: list[tuple[str, dict]] = (), figures: Path | None = None,
                   gathered: tuple[list, list[str]] = ([], [])) -> str:
    """The block's Markdown: what made it, the stamp, each suite's tables and comparisons, each
    sweep's table, each bench script's output; with ``figures`` (the document's folder) each
    suite's LR and curves are drawn into ``figures/`` and linked."""
    from metalr.reporting.comparisons import compare
    from metalr.reporting.markdown import stamp, suite_markdown, sweep_markdown

    recipes = ", ".join(section.made_by())
    minutes = (f", about {section.minutes:g} minute{'s' * (section.minutes != 1)} on the "
               "2-core CPU machine" if section.minutes else "")
    parts = [f"Generated by `{command(name)}` ({recipes}{minutes}) on {when}; "
             "do not edit by hand."]
    if suites or bench:
        parts.append(stamp(suites, {line: env for line, (_, env) in zip(section.bench, bench)}))
    if section.gather:
        parts.append(_gathered(section, *gathered))
        return "\n\n".join(parts)
    points = [s for s in suites if "sweep.index" in s.provenance]
    plain = [s for s in suites if "sweep.index" not in s.provenance]
    sweeps = [[s for s in points if s.experiment == e]
              for e in dict.fromkeys(s.experiment for s in points)]
    for i, suite in enumerate(plain):
        comparisons = [compare(suite, c.method, other, c.margin)
                       for c in section.compare
                       if c.method in suite.methods()
                       for other in c.against if other in suite.methods()]
        parts.append(suite_markdown(suite, comparisons))
        if figures is not None:
            stem = name if len(plain) == 1 else f"{name}-{i + 1}"
            parts.append(_suite_figures(stem, suite, figures / "figures"))
    for i, group in enumerate(sweeps):
        parts.append(sweep_markdown(group))
        if figures is not None:
            stem = name if len(sweeps) == 1 else f"{name}-sweep{i + 1}"
            parts.append(_sweep_figures(stem, group, figures / "figures"))
    for line, (output, _) in zip(section.bench, bench):
        parts.append(f"`{line}` printed:\n\n```text\n{output.rstrip()}\n```")
    return "\n\n".join(parts)


def _gathered(section: Section, gathered: list, missing: list[str]) -> str:
    """The section's comparisons in every gathered suite that has both methods, one table,
    each row named by the section it comes from; the sections with no run yet said."""
    from metalr.reporting.comparisons import COMPARISON_HEAD, compare, comparison_rows
    from metalr.running.results import markdown_table

    rows = []
    for source, suite in gathered:
        comparisons = [compare(suite, c.method, other, c.margin)
                       for c in section.compare if c.method in suite.methods()
                       for other in c.against if other in suite.methods()]
        rows += [[source, *row] for row in comparison_rows(comparisons)]
    text = ("Computed comparisons (paired over the seeds, which share data and initial weights; "
            "two-sided paired t-test; `within x`: the mean no more than x behind):\n\n"
            + markdown_table(["section", *COMPARISON_HEAD], rows))
    if missing:
        text += ("\n\nNot in this table yet (no finished run of the section was there to read): "
                 + ", ".join(f"`{command(m)}`" for m in missing) + ".")
    return text


def latest_store(name: str, out: str | Path) -> str | None:
    """The store of section ``name``'s latest run under ``out`` (None: none there)."""
    folders = sorted(Path(out).glob(f"reproduce-{name}-[0-9]*/mlflow.db"))  # not NAME-other
    return f"sqlite:///{folders[-1].resolve()}" if folders else None


def _suite_figures(stem: str, suite, folder: Path) -> str:
    """The suite's applied LR (its first seed) and its curves (mean over the finished seeds),
    drawn from the store's runs into ``folder`` (``figures/`` beside the document)."""
    from metalr.reporting.markdown import suite_histories
    from metalr.running.figures import plot_curves, plot_lr

    folder.mkdir(exist_ok=True)
    lrs, curves = suite_histories(suite)
    links = []
    if lrs:
        plot_lr(lrs, folder / f"{stem}-lr.png")
        links.append(f"![LR applied, seed {suite.seeds()[0]}](figures/{stem}-lr.png)")
    if curves:
        plot_curves(curves, folder / f"{stem}-curves.png", suite.metric)
        links.append(f"![curves, mean over the finished seeds](figures/{stem}-curves.png)")
    return "\n".join(links)


def _sweep_figures(stem: str, points: list, folder: Path) -> str:
    """Per swept key, the final test metric against its values (mean ± std over seeds)."""
    from metalr.reporting.markdown import sweep_lines, swept_keys
    from metalr.running.figures import plot_swept

    folder.mkdir(exist_ok=True)
    links = []
    for j, key in enumerate(swept_keys(points)):
        values, lines = sweep_lines(points, key)
        path = folder / f"{stem}-{j + 1}.png"
        plot_swept(key, values, lines, points[0].metric, path)
        links.append(f"![final test {points[0].metric} against {key}](figures/{path.name})")
    return "\n".join(links)


def load_recipe_name(run: RecipeRun) -> str:
    """The experiment a recipe run writes into (its name, after the run's overrides)."""
    from metalr.recipes.loader import load_recipe

    return load_recipe(run.recipe, run.overrides, only=run.only).name


def reproduce(name: str, index_path: str | Path = INDEX, out: str | Path = "metalr-out",
              store: str | None = None, doc: str | Path | None = None, quiet: bool = False,
              say: Callable[[str], None] = print) -> Path:
    """Run (or, with ``store``, only read) section ``name`` and rewrite its block in ``doc``
    (default: the section's document). Returns the document written."""
    from metalr.reporting.suite_reader import load_suites

    index = load_index(index_path)
    if name not in index.sections:
        raise RunError(f"{index_path}: no section {name!r}; sections: "
                       f"{', '.join(sorted(index.sections))}")
    section = index.sections[name]
    target = Path(doc or section.doc)
    text = target.read_text()
    replace_block(text, name, "")  # the block exists: checked before hours of training
    if section.gather:
        gathered, missing = [], []
        for other in section.gather:
            if other not in index.sections:
                raise RunError(f"{index_path}: sections.{name}.gather: no section {other!r}")
            found = latest_store(other, out)
            if found is None:
                missing.append(other)
                continue
            experiments = [load_recipe_name(run) for run in index.sections[other].runs()]
            suites = load_suites(experiments, found, None if quiet else say)[0]
            if not suites or any(suite.status != "FINISHED" for suite in suites):
                missing.append(other)  # still running, or stopped: not a result yet
                continue
            gathered += [(other, suite) for suite in suites]
        if not gathered:
            raise RunError(f"{out}: no run of the sections {', '.join(section.gather)} here; "
                           f"run `{command(section.gather[0])} --out {out}` (and the others) "
                           "first: a gathering section reads their stores")
        body = render_section(name, section, [suite for _, suite in gathered],
                              _dt.date.today().isoformat(), gathered=(gathered, missing))
        target.write_text(replace_block(target.read_text(), name, body))
        say(f"rewrote the block {name!r} of {target}")
        return target
    if store is None:
        folder = Path(out) / f"reproduce-{name}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
        folder.mkdir(parents=True)
        store = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
        say(f"{command(name)}: {len(section.recipes) + len(section.sweeps)} recipe(s), "
            f"{len(section.bench)} bench script(s) into {folder} ({store})")
        experiments = run_section(section, folder, store, quiet)
    else:
        from metalr.running.stores import sqlite_file

        experiments = [load_recipe_name(run) for run in [*section.runs(), *section.sweep_runs()]]
        folder = sqlite_file(store).parent if sqlite_file(store) else Path(".")
    bench = []
    for i, line in enumerate(section.bench):
        saved = folder / f"bench-{i}.txt"
        if not saved.is_file():
            raise RunError(f"{saved}: no saved output of `{line}` beside the store; run the "
                           f"section again without --store")
        env = saved.with_suffix(".json")
        bench.append((saved.read_text(),
                      json.loads(env.read_text()) if env.is_file() else {}))
    suites = load_suites(experiments, store, None if quiet else say)[0] if experiments else []
    when = _dt.date.today().isoformat()
    body = render_section(name, section, suites, when, bench, target.parent)
    # read again: another section of the same document may have been written meanwhile
    target.write_text(replace_block(target.read_text(), name, body))
    say(f"rewrote the block {name!r} of {target}")
    return target

