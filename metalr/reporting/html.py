"""`metalr report`: one static HTML page of tracked runs, read back from the tracking store.

The suites come from the store (:mod:`metalr.reporting.suite_reader`, through the tracker's reader
contract); the performance profile across tasks is :mod:`metalr.reporting.performance_profile`'s.

The page is a folder, ``index.html`` plus ``assets/``, that opens from ``file://`` with no
network: tables and model cards are HTML written here; charts are drawn in the browser by
uPlot (1.6.32, MIT, 51 kB, vendored in ``metalr/reporting/assets``; plotly would be 3.5 MB) from
JSON embedded in the page. Statistics follow :mod:`metalr.running.results`: over the seeds that
finished, mean ± *sample* standard deviation (``statistics.stdev``, ddof=1).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import shutil
import statistics
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from metalr.reporting.markdown import markdown_report
from metalr.reporting.performance_profile import (
    comparable,
    performance_profile,
    performance_ratios,
    profile_taus,
    suite_costs,
)
from metalr.reporting.suite_reader import Progress, ReportError, load_suites
from metalr.reporting.suites import CURVES, Suite, results_rows, seed_rows

__all__ = ["ReportError", "build_report", "render", "write_report"]

MAX_POINTS = 2000
"""Points per LR series at most: a long run's 100k steps would make a page of tens of MB; the
thinned series keeps every k-th step and the last."""

ASSETS = ("uPlot.iife.min.js", "uPlot.min.css", "uPlot-LICENSE", "report.js", "report.css")

# -- the page ------------------------------------------------------------------------------------

def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    out = [f'<table class="{cls}"><thead><tr>'
           + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    return "".join(out) + "</tbody></table>"


def _thin(n: int) -> int:
    return max(1, math.ceil(n / MAX_POINTS))


def _aligned(series: Mapping[str, Sequence[tuple[int, float]]], thin: bool = False,
             positive: bool = False, groups: Mapping[str, str] | None = None) -> dict[str, Any]:
    """uPlot's data: one shared x array, every series on it (null where it has no point)."""
    xs = sorted({x for points in series.values() for x, _ in points})
    if thin and xs:
        k = _thin(len(xs))
        xs = [x for i, x in enumerate(xs) if i % k == 0 or i == len(xs) - 1]
    out = {"x": xs, "series": []}
    for label, points in series.items():
        values = dict(points)
        ys = []
        for x in xs:
            y = _finite(values.get(x))
            ys.append(None if y is None or (positive and y <= 0) else y)
        out["series"].append({"label": label, "group": (groups or {}).get(label, label),
                              "y": ys})
    return out


def log_axis(values: Iterable[float | None]) -> bool:
    """A log axis where the data is positive and spans a decade or more (an LR schedule, a loss
    from 2.3 to 0.01); linear otherwise, where a log axis would squeeze the curves into a
    sliver (a loss between 1 and 3, an accuracy)."""
    found = [v for v in values if v is not None and math.isfinite(v)]
    return bool(found) and min(found) > 0 and max(found) >= 10 * min(found)


def _band(label: str, group: str, lo: list[float | None],
          hi: list[float | None]) -> list[dict[str, Any]]:
    """The two edges of a spread band (drawn filled between them, not in the legend)."""
    return [{"label": f"{label} - sd", "group": group, "y": lo, "band": "lo"},
            {"label": f"{label} + sd", "group": group, "y": hi, "band": "hi"}]


def _curve_panel(suite: Suite, key: str, title: str) -> dict[str, Any]:
    """One per-epoch curve: per method the mean over finished seeds (epochs every finished seed
    reached, as results.py) and, over two seeds or more, a band of one sample std."""
    means: dict[str, list[tuple[int, float]]] = {}
    spread: dict[str, dict[int, float]] = {}
    for m in suite.methods():
        per_epoch: dict[int, list[float]] = {}
        for r in suite.finished(m):
            for x, y in r.epochs.get(key, []):
                if math.isfinite(y):
                    per_epoch.setdefault(x, []).append(y)
        n = len(suite.finished(m))
        full = sorted((x, v) for x, v in per_epoch.items() if len(v) == n)
        if full:
            means[m] = [(x, statistics.fmean(v)) for x, v in full]
            if n > 1:
                spread[m] = {x: statistics.stdev(v) for x, v in full}
    values = [y for points in means.values() for _, y in points]
    values += [y + s * sign for m, points in means.items() for x, y in points
               for s in [spread.get(m, {}).get(x, 0.0)] for sign in (-1, 1)]
    log = log_axis(values)
    data = _aligned(means, positive=log)
    series = []
    for s in data["series"]:
        series.append(s)
        if s["label"] in spread:
            sd = spread[s["label"]]
            ys = [None if y is None else (y, sd.get(x)) for x, y in zip(data["x"], s["y"])]
            lo = [None if v is None or v[1] is None or (log and v[0] - v[1] <= 0)
                  else v[0] - v[1] for v in ys]
            hi = [None if v is None or v[1] is None else v[0] + v[1] for v in ys]
            series += _band(s["label"], s["group"], lo, hi)
    return {"title": title, "log": log, "xlabel": "epoch", "x": data["x"], "series": series}


def _suite_charts(suite: Suite) -> dict[str, Any]:
    labels = {f"{r.method}/seed{r.seed}": r for r in suite.runs if r.lrs}
    log = log_axis(y for r in labels.values() for _, y in r.lrs)
    lr = _aligned({k: r.lrs for k, r in labels.items()}, thin=True, positive=log,
                  groups={k: r.method for k, r in labels.items()})
    panels = [_curve_panel(suite, key.format(metric=suite.metric),
                           title.format(metric=suite.metric)) for key, title, _ in CURVES]
    return {"lr": {"title": "Applied learning rate (per seed)", "log": log, "xlabel": "step",
                   **lr}, "curves": panels}


def _sweep_charts(suites: Sequence[Suite]) -> list[tuple[str, dict[str, Any]]]:
    """(caption, chart) for each swept key of each sweep (its points' suites, grouped by
    experiment and keys): per method the final test metric against the key's value, a dot per
    point (seed and the other keys' values) and a line through the mean at each value."""
    groups: dict[tuple[str, tuple[str, ...]], list[tuple[Suite, dict[str, Any]]]] = {}
    for s in suites:
        values = s.sweep_values()  # read from the tags once per suite
        if values:
            groups.setdefault((s.experiment, tuple(sorted(values))), []).append((s, values))
    out = []
    for (experiment, keys), points in groups.items():
        metric = points[0][0].metric
        for key in keys:
            raw = list(dict.fromkeys(json.dumps(values[key]) for _, values in points))
            decoded = [json.loads(v) for v in raw]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                          for v in decoded)
            order = sorted(range(len(raw)), key=lambda i: decoded[i] if numeric else raw[i])
            xs = [float(decoded[i]) if numeric else float(j) for j, i in enumerate(order)]
            at = {raw[i]: x for i, x in zip(order, xs)}
            means: dict[str, dict[float, list[float]]] = {}
            dots: dict[str, dict[float, float]] = {}
            groups_of: dict[str, str] = {}
            for s, values in points:
                x = at[json.dumps(values[key])]
                others = ", ".join(f"{k}={json.dumps(v)}" for k, v in
                                   sorted(values.items()) if k != key)
                for m in s.methods():
                    for r in s.finished(m):
                        y = r.final(f"test_{metric}")
                        if y is None or not math.isfinite(y):
                            continue
                        means.setdefault(m, {}).setdefault(x, []).append(y)
                        label = " · ".join(filter(None, [m, f"seed {r.seed}", others]))
                        dots.setdefault(label, {})[x] = y
                        groups_of[label] = m
            series = [{"label": m, "group": m, "y": [_finite(statistics.fmean(v[x]))
                                                     if x in v else None for x in xs]}
                      for m, v in means.items()]
            series += [{"label": label, "group": groups_of[label], "points_only": True,
                        "y": [ys.get(x) for x in xs]} for label, ys in dots.items()]
            chart = {"title": f"{experiment}: final test {metric} against {key}",
                     "log": False, "xlabel": key, "x": xs, "series": series,
                     "xlog": numeric and log_axis(xs)}
            if not numeric:
                chart["xticks"] = [raw[i] for i in order]
            out.append((f"{experiment}, {key} ({len(points)} points)", chart))
    return out


def find_card(name: str) -> Path | None:
    """A net's model card: a shipped name's ``nets/<name>/card.md``; a folder's (``metalr nets
    import`` writes one) or a file's folder's ``card.md``."""
    from metalr.scheduler.learned import NETS_DIR, shipped_nets

    if name in shipped_nets():
        card = NETS_DIR / name / "card.md"
        return card if card.is_file() else None
    path = Path(name).expanduser()
    for folder in (path, path.parent):
        if (folder / "card.md").is_file():
            return folder / "card.md"
    return None


def render_markdown(text: str) -> str:
    """Markdown to HTML with raw HTML escaped and unsafe links refused: a card may come from
    any folder, and nothing from it may run in the page."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _profile_section(suites: Sequence[Suite]) -> tuple[str, dict[str, Any] | None]:
    costs = comparable(suite_costs(suites))
    ratios = performance_ratios(costs)
    if len(ratios) < 2:  # on one task the profile only restates that task's table
        empty = ("<section id='profile'><h2>Performance profile</h2><p>Drawn across two "
                 f"tasks or more; {len(ratios)} task{'s' * (len(ratios) != 1)} here "
                 "with two methods or more, one of which finished with a test metric."
                 "</p></section>")
        return empty, None
    taus = profile_taus(ratios)
    rho = performance_profile(ratios, taus)
    methods = list(rho)
    chart = {"title": "Performance profile", "log": False, "xlabel": "tau",
             "stepped": True, "x": taus,
             "series": [{"label": m, "group": m, "y": rho[m]} for m in methods]}
    head = ["task", *methods]
    rows = [[t, *("not run" if m not in costs[t] else "∞" if math.isinf(r[m]) else
                  f"{r[m]:.3f}" for m in methods)] for t, r in ratios.items()]
    n = len(ratios)
    text = (f"<p>For each method, the fraction of the {n} task{'s' * (n != 1)} on which its "
            "cost is within a factor τ of the best method's on that task. Cost: the mean final "
            "test metric over the finished seeds; for accuracy (higher is better, in [0, 1]) "
            "the error 1 − accuracy, for perplexity or loss the value itself. A curve that "
            "reaches 1 early and high is better; its value at τ = 1 is the share of tasks the "
            "method won. A method missing or failed on a task never counts there; a suite "
            "of one method (a sweep point) is not a task here. "
            "<a href='https://arxiv.org/abs/2306.07179'>AlgoPerf</a> style; see docs/report.md."
            "</p>")
    body = (f"<section id='profile'><h2>Performance profile across tasks</h2>{text}"
            "<div class='chart' data-chart='profile'></div>"
            "<h3>Ratios to the best method (cost / best cost)</h3>"
            + _table(head, rows, "ratios") + "</section>")
    return body, chart


def _suite_section(i: int, suite: Suite, cards: Mapping[str, Path | None]) -> str:
    m = suite.metric
    direction = "higher is better" if suite.higher_is_better else "lower is better"
    rows = results_rows(suite)
    head = list(rows[0]) if rows else ["method"]
    seeds_head = ["method", *(f"seed {s}" for s in suite.seeds())]
    nets = suite.nets()
    net_lines = "".join(
        f"<li>{_e(method)}: " + ", ".join(
            f"<a href='#card-{_e(_slug(n))}'>{_e(n)}</a>" if cards.get(n) else
            f"{_e(n)} (no card found)" for n in names) + "</li>"
        for method, names in nets.items())
    curves = "".join(f"<div class='chart small' data-chart='s{i}-c{j}'></div>"
                     for j in range(len(CURVES)))
    return (
        f"<section class='suite' id='suite-{i}'>"
        f"<h2>{_e(suite.name)} <small>task {_e(suite.task)}, model {_e(suite.model)}</small></h2>"
        f"<p class='meta'>experiment {_e(suite.experiment)} · run {_e(suite.run_id)} · "
        f"{_e(suite.status)} · started {_e(_when(suite.start_time))} · metric test {_e(m)} "
        f"({direction})</p>"
        f"<h3>Learning-rate schedule</h3><div class='chart' data-chart='s{i}-lr'></div>"
        f"<h3>Training and test curves <small>(mean over finished seeds)</small></h3>"
        f"<div class='curves'>{curves}</div>"
        f"<h3>Results <small>mean ± sample std (ddof = 1) over the seeds that finished"
        f"</small></h3>" + _table(head, [list(r.values()) for r in rows], "results")
        + f"<h3>Final test {_e(m)} per seed</h3>" + _table(seeds_head, seed_rows(suite), "seeds")
        + (f"<h3>Meta-learned nets used</h3><ul>{net_lines}</ul>" if net_lines else "")
        + "</section>")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def _when(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M") if ms else "?"


def script_json(data: Any) -> str:
    """JSON to embed in a ``<script>`` block: ``<``, ``>`` and ``&`` as ``\\u003c`` etc., so
    that no name in it can end the block (``</script``) or switch the HTML parser into its
    escaped states (``<!--``, ``<script``) and lose the rest of the page. JSON.parse reads the
    escapes back as the characters."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(suites: Sequence[Suite], uri: str) -> str:
    """The whole page: sections, tables and the JSON its charts are drawn from."""
    charts: dict[str, Any] = {}
    names = list(dict.fromkeys(n for s in suites for ns in s.nets().values() for n in ns))
    cards = {n: find_card(n) for n in names}
    profile, chart = _profile_section(suites)
    if chart is not None:
        charts["profile"] = chart
    sweeps = _sweep_charts(suites)
    for k, (_, spec) in enumerate(sweeps):
        charts[f"sweep{k}"] = spec
    sweep_html = ("<section id='sweeps'><h2>Sweeps</h2><p>Each point's final test metric "
                  "against a swept key: a dot per point and seed, a line through the mean."
                  "</p>" + "".join(f"<h3>{_e(caption)}</h3><div class='chart' "
                                   f"data-chart='sweep{k}'></div>"
                                   for k, (caption, _) in enumerate(sweeps))
                  + "</section>") if sweeps else ""
    sections = []
    for i, suite in enumerate(suites):
        data = _suite_charts(suite)
        charts[f"s{i}-lr"] = data["lr"]
        for j, panel in enumerate(data["curves"]):
            charts[f"s{i}-c{j}"] = panel
        sections.append(_suite_section(i, suite, cards))
    colours = {m: k for k, m in enumerate(dict.fromkeys(m for s in suites for m in s.methods()))}
    for spec in charts.values():  # a method has one colour on the whole page
        for series in spec["series"]:
            series["colour"] = colours.get(series["group"], len(colours))
    card_html = "".join(
        f"<details class='card' id='card-{_e(_slug(n))}'><summary>{_e(n)} "
        f"<small>{_e(path)}</small></summary>{render_markdown(path.read_text())}</details>"
        for n, path in cards.items() if path is not None)
    trained = [(s, label, run_id) for s in suites for label, run_id in s.trained()]
    trained_html = ("<h3>Nets these runs meta-learned</h3><p>Each is the run's artifact "
                    "<code>theta/theta-final.safetensors</code>; "
                    "<code>LearnedLR.from_pretrained(optimizer, \"runs:/RUN_ID/theta/"
                    "theta-final.safetensors\", total_steps=...)</code> loads it from the store "
                    "(docs/scheduler.md).</p><ul>"
                    + "".join(f"<li>{_e(s.name)}: {_e(label)}: <code>runs:/{_e(run_id)}/theta/"
                              "theta-final.safetensors</code></li>" for s, label, run_id in trained)
                    + "</ul>") if trained else ""
    toc = "".join(f"<li><a href='#suite-{i}'>{_e(s.name)}</a> — {_e(s.task)}, "
                  f"{len(s.methods())} methods, seeds {_e(', '.join(map(str, s.seeds())))}</li>"
                  for i, s in enumerate(suites))
    data = script_json(charts)
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>metalr report</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="assets/uPlot.min.css"><link rel="stylesheet" href="assets/report.css">
</head><body>
<header><h1>metalr report</h1>
<p class="meta">{len(suites)} suite{'s' * (len(suites) != 1)} from {_e(uri)} · written {now} ·
charts: drag to zoom, double-click to reset, click a legend entry to hide it</p>
<ul class="toc">{toc}<li><a href="#profile">performance profile</a></li>
{'<li><a href="#sweeps">sweeps</a></li>' if sweeps else ''}
<li><a href="#cards">meta-learned nets</a></li></ul></header>
<main>{profile}{sweep_html}{''.join(sections)}
<section id="cards"><h2>Meta-learned nets</h2>{trained_html}
{'<h3>Model cards of the nets the runs used</h3>' + card_html if card_html else
 '' if trained_html else '<p>No run used or meta-learned a net.</p>'}
</section></main>
<script type="application/json" id="report-data">{data}</script>
<script src="assets/uPlot.iife.min.js"></script><script src="assets/report.js"></script>
</body></html>
"""


def write_report(suites: Sequence[Suite], out: str | Path, uri: str) -> Path:
    """``out/index.html`` and ``out/assets/``; other files in ``out`` are left alone."""
    out = Path(out)
    page = render(suites, uri)  # before anything is written
    assets = out / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    source = resources.files("metalr") / "reporting" / "assets"
    for name in ASSETS:
        with resources.as_file(source / name) as path:
            shutil.copyfile(path, assets / name)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def build_report(targets: Sequence[str], out: str | Path, tracking_uri: str | None = None,
                 progress: Progress | None = None, warn: Progress | None = None,
                 markdown: bool = False) -> Path:
    """Read the suites ``targets`` name from the store and write the report folder ``out``
    (``markdown``: also ``report.md``, the same tables as Markdown)."""
    suites, uri = load_suites(targets, tracking_uri, progress, warn)
    index = write_report(suites, out, uri)
    if markdown:
        (Path(out) / "report.md").write_text(markdown_report(suites, uri), encoding="utf-8")
    return index
