"""`metalr report` over a real MLflow store of real runs, and the page in a real Chromium."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import statistics
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from metalr.cli import main
from metalr.reporting.performance_profile import (
    comparable,
    cost,
    performance_profile,
    performance_ratios,
    profile_taus,
)
from metalr.running.results import mean_std

SGD = {"name": "sgd", "options": {"momentum": 0.9}}
METHODS = {
    "fixed": {"optimizer": SGD, "lr_policy": {"name": "fixed", "options": {"lr": 0.05}}},
    "transfer": {"optimizer": SGD, "lr_policy": {
        "name": "mlrsnet-transfer", "options": {"nets": ["mnist1d-mlp"], "scale": "saved"}}},
}
TRAIN = {"epochs": 2, "seeds": [0, 1], "batch_size": 64, "device": "cpu", "threads": 1}
LEARNED = {"learned": {"optimizer": SGD, "lr_policy": {"name": "mlrsnet",
                                                       "options": {"gamma": 0.5}},
                       "meta": {"t_val": 5}}}  # meta-trains a net: the cards section lists it
RECIPES = {
    "rep-mnist1d": {"task": {"name": "mnist1d", "options": {"meta_size": 100,
                                                             "num_samples": 600}},
                    "model": {"name": "mlp", "options": {"hidden": [32]}}},
    "rep-digits": {"task": {"name": "digits", "options": {"meta_size": 200}},
                   "model": {"name": "mlp", "options": {"hidden": [32]}},
                   "methods": {**METHODS, **LEARNED}},
}
SWEPT = "methods.fixed.lr_policy.options.lr"
SWEEP = {"name": "rep-sweep", **RECIPES["rep-digits"], "methods": {"fixed": METHODS["fixed"]},
         "train": {**TRAIN, "epochs": 1},
         "sweep": {"grid": {SWEPT: [0.01, 0.3]}, "seeds": [0, 1],
                   "executor": {"name": "local", "options": {"workers": 1}}}}


# -- the performance profile, by hand ------------------------------------------------------------

def test_performance_profile_matches_a_hand_computed_example():
    # A: accuracy (higher is better): errors 0.25, 0.5, 0.125 -> ratios 2, 4, 1
    # B: perplexity (lower is better): 100, 125, m3 missing -> ratios 1, 1.25, inf
    costs = {"A": {m: cost(v, True, True) for m, v in
                   {"m1": 0.75, "m2": 0.5, "m3": 0.875}.items()},
             "B": {"m1": cost(100.0, False, False), "m2": cost(125.0, False, False)}}
    assert costs["A"] == {"m1": 0.25, "m2": 0.5, "m3": 0.125}
    ratios = performance_ratios(costs)
    assert ratios == {"A": {"m1": 2.0, "m2": 4.0, "m3": 1.0},
                      "B": {"m1": 1.0, "m2": 1.25, "m3": math.inf}}
    taus = [1.0, 1.25, 1.9, 2.0, 4.0, 100.0]
    assert performance_profile(ratios, taus) == {
        "m1": [0.5, 0.5, 0.5, 1.0, 1.0, 1.0],
        "m2": [0.0, 0.5, 0.5, 0.5, 1.0, 1.0],
        "m3": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],  # never counts on B, where it did not run
    }
    assert profile_taus(ratios) == [1.0, 1.25, 2.0, 4.0, 4.4]


def test_profile_edge_cases():
    # a suite of one method (a sweep point) is no task: it would be that method's win
    assert comparable({"A": {"m1": 0.2, "m2": 0.3}, "p007": {"m1": 0.1}}) == {
        "A": {"m1": 0.2, "m2": 0.3}}
    assert cost(None, True, True) == math.inf and cost(math.nan, False, False) == math.inf
    assert cost(4.0, True, False) == 0.25  # higher is better, unbounded: ratio best / value
    # a perfect score: a tie is 1, anything else is infinitely worse; a task nobody finished
    # is left out of the denominator
    ratios = performance_ratios({"A": {"m1": 0.0, "m2": 0.0, "m3": 0.1},
                                 "B": {"m1": math.inf, "m2": math.inf}})
    assert ratios == {"A": {"m1": 1.0, "m2": 1.0, "m3": math.inf}}
    assert mean_std([0.5]) == "0.5000" and mean_std([]) == "-"
    assert mean_std([1.0, 2.0, 4.0]) == f"2.3333 ± {statistics.stdev([1.0, 2.0, 4.0]):.4f}"


# -- a real store ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two recipes on two tasks, 2-3 methods x 2 seeds x 2 epochs each, and a sweep of 2 LRs x
    2 seeds, tracked in SQLite."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for name, parts in RECIPES.items():
            recipe = root / f"{name}.yaml"
            recipe.write_text(yaml.safe_dump({
                "name": name, "train": TRAIN, "methods": METHODS, **parts,
                "tracking": "mlflow", "output_dir": str(root / "out")}))
            assert main(["run", str(recipe), "-q"]) == 0
        sweep = root / "sweep.yaml"
        sweep.write_text(yaml.safe_dump({**SWEEP, "output_dir": str(root / "out")}))
        assert main(["sweep", str(sweep), "-q"]) == 0
    return root, uri


def finals(client: MlflowClient, experiment: str) -> dict[str, dict[int, float]]:
    """Method -> seed -> final test accuracy, straight from the store."""
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, dict[int, float]] = {}
    for run in client.search_runs([exp.experiment_id]):
        p = run.data.params
        if "method" in p:
            history = client.get_metric_history(run.info.run_id, "test_accuracy")
            out.setdefault(p["method"], {})[int(p["seed"])] = max(history,
                                                                  key=lambda m: m.step).value
    return out


class Tables(HTMLParser):
    """Every table of a page, by class: rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables_of(index: Path) -> dict[str, list[list[str]]]:
    parser = Tables()
    parser.feed(index.read_text())
    return parser.tables


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    """``metalr report`` of the whole store, run from an empty folder."""
    root, uri = store
    cwd, out = tmp_path_factory.mktemp("cwd"), tmp_path_factory.mktemp("report") / "site"
    before = hashlib.sha256((root / "mlflow.db").read_bytes()).hexdigest()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert main(["report", "--out", str(out), "--tracking-uri", uri]) == 0
    assert list(cwd.iterdir()) == []  # nothing written outside --out ...
    assert hashlib.sha256((root / "mlflow.db").read_bytes()).hexdigest() == before  # ... nor in it
    return out


def test_report_tables_hold_the_stores_numbers(store, report):
    client = MlflowClient(store[1])
    assert sorted(p.name for p in report.iterdir()) == ["assets", "index.html"]
    assert {p.name for p in (report / "assets").iterdir()} >= {"uPlot.iife.min.js", "report.js"}
    tables = tables_of(report / "index.html")
    start = 0
    for experiment, parts in RECIPES.items():
        values = finals(client, experiment)
        n = 1 + len(parts.get("methods", METHODS))  # a header and a row per method
        results = tables["results"][start:start + n]
        seeds = tables["seeds"][start:start + n]
        start += n
        assert results[0][:2] == ["method", "final test accuracy"]
        assert seeds[0] == ["method", "seed 0", "seed 1"]
        for row, seed_row in zip(results[1:], seeds[1:]):
            per_seed = values[row[0]]
            expected = (f"{statistics.fmean(per_seed.values()):.4f} ± "
                        f"{statistics.stdev(per_seed.values()):.4f}")  # sample std, ddof=1
            assert row[1] == expected
            assert row[-1] == "2/2 finished"
            assert seed_row == [row[0], *(f"{per_seed[s]:.4f}" for s in (0, 1))]
    ratios = tables["ratios"]
    assert ratios[0] == ["task", *METHODS, *LEARNED]
    assert [r[0] for r in ratios[1:]] == list(RECIPES)
    assert all(min(float(c) for c in r[1:] if c not in ("∞", "not run")) == 1.0
               for r in ratios[1:])


def test_report_renders_the_model_cards_of_the_nets_used(report):
    page = (report / "index.html").read_text()
    assert "transfer: <a href='#card-mnist1d-mlp'>mnist1d-mlp</a>" in page
    card = page[page.index("<details class='card' id='card-mnist1d-mlp'>"):]
    card = card[:card.index("</details>")]
    assert "<h1>mnist1d-mlp</h1>" in card and "<td><code>theta-epoch0030.safetensors</code></td>" in card
    assert "card-mnist1d-mlp-adam" not in page  # only the nets the runs used


def charts_of(index: Path) -> dict:
    page = index.read_text()
    start = page.index('<script type="application/json" id="report-data">')
    body = page[page.index(">", start) + 1:page.index("</script>", start)]
    return json.loads(body)


def test_report_draws_a_sweep_against_its_swept_value(store, report):
    client = MlflowClient(store[1])
    exp = client.get_experiment_by_name("rep-sweep")
    finals_at: dict[float, list[float]] = {}
    for run in client.search_runs([exp.experiment_id]):
        if run.data.params.get("method") == "fixed":
            lr = float(run.data.params["lr_policy.options.lr"])
            history = client.get_metric_history(run.info.run_id, "test_accuracy")
            finals_at.setdefault(lr, []).append(max(history, key=lambda m: m.step).value)
    (sweep,) = [c for k, c in charts_of(report / "index.html").items() if k.startswith("sweep")]
    assert sweep["xlabel"] == SWEPT and sweep["x"] == [0.01, 0.3] and sweep["xlog"] is True
    (line,) = [s for s in sweep["series"] if not s.get("points_only")]
    assert line["label"] == "fixed"
    assert line["y"] == pytest.approx([statistics.fmean(finals_at[x]) for x in (0.01, 0.3)])
    dots = [s for s in sweep["series"] if s.get("points_only")]
    assert sorted(s["label"] for s in dots) == ["fixed · seed 0", "fixed · seed 1"]
    assert sorted(y for s in dots for y in s["y"]) == pytest.approx(
        sorted(v for vs in finals_at.values() for v in vs))


def test_report_curves_carry_a_band_of_one_std_over_seeds(store, report):
    client = MlflowClient(store[1])
    exp = client.get_experiment_by_name("rep-digits")
    per_epoch: dict[int, list[float]] = {}
    for run in client.search_runs([exp.experiment_id]):
        if run.data.params.get("method") == "fixed" and run.data.params.get("tuning") == "False":
            for m in client.get_metric_history(run.info.run_id, "test_accuracy"):
                per_epoch.setdefault(m.step, []).append(m.value)
    charts = charts_of(report / "index.html")
    (panel,) = [c for k, c in charts.items() if c["title"] == "test accuracy"
                and any(s["label"] == "learned" for s in c["series"])]
    by_label = {s["label"]: s["y"] for s in panel["series"]}
    steps = sorted(per_epoch)
    assert panel["x"] == steps and panel["log"] is False  # accuracy: a linear axis
    mean = [statistics.fmean(per_epoch[x]) for x in steps]
    sd = [statistics.stdev(per_epoch[x]) for x in steps]
    assert by_label["fixed"] == pytest.approx(mean)
    assert by_label["fixed - sd"] == pytest.approx([m - s for m, s in zip(mean, sd)])
    assert by_label["fixed + sd"] == pytest.approx([m + s for m, s in zip(mean, sd)])


def test_axes_are_log_only_over_a_decade_or_more():
    from metalr.reporting.html import log_axis

    assert log_axis([0.001, 0.5, None]) and not log_axis([1.2, 2.9])
    assert not log_axis([0.0, 1.0]) and not log_axis([-1.0, 100.0]) and not log_axis([])


def test_report_lists_the_nets_the_runs_trained_and_they_load(store, report, monkeypatch):
    from metalr import LearnedLR

    client = MlflowClient(store[1])
    exp = client.get_experiment_by_name("rep-digits")
    learned = sorted(r.info.run_id for r in client.search_runs([exp.experiment_id])
                     if r.data.params.get("method") == "learned")
    page = (report / "index.html").read_text()
    uris = [f"runs:/{run_id}/theta/theta-final.safetensors" for run_id in learned]
    assert len(uris) == 2 and all(f"<code>{u}</code>" in page for u in uris)
    assert page.count("theta-final.safetensors</code></li>") == 2  # no other run trained one
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[1])
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    assert LearnedLR.from_pretrained(opt, uris[0], total_steps=4).step(1.0) > 0


def test_the_profile_needs_two_tasks(store, tmp_path):
    out = tmp_path / "one"
    assert main(["report", "rep-digits", "--out", str(out), "--tracking-uri", store[1],
                 "-q"]) == 0
    page = (out / "index.html").read_text()
    assert "Drawn across two tasks or more; 1 task here" in page
    assert "profile" not in charts_of(out / "index.html")


def test_report_of_one_run_id_and_one_experiment(store, tmp_path, capsys):
    _, uri = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rep-digits")
    (suite,) = [r for r in client.search_runs([exp.experiment_id])
                if "mlflow.parentRunId" not in r.data.tags]
    for target in (suite.info.run_id, "rep-digits"):
        out = tmp_path / target
        assert main(["report", target, "--out", str(out), "--tracking-uri", uri]) == 0
        page = (out / "index.html").read_text()
        assert "rep-digits" in page and "rep-mnist1d" not in page
    assert "[1/1] rep-digits" in capsys.readouterr().out


def test_the_store_is_read_through_the_tracker_plugins_reader_contract(store):
    """What the report reads, the mlflow plugin's reader gives back as MLflow stored it."""
    from metalr.contracts.protocols import StoreReader, TrackerStore
    from metalr.running.stores import open_store, tracker_store

    root, uri = store
    assert isinstance(tracker_store("mlflow"), TrackerStore)
    before = hashlib.sha256((root / "mlflow.db").read_bytes()).hexdigest()
    reader = open_store(uri)
    assert isinstance(reader, StoreReader) and reader.uri == uri
    client = MlflowClient(uri)
    assert set(RECIPES) <= set(reader.experiments())
    (suite,) = [r for r in reader.runs("rep-digits") if r.parent is None]
    assert suite.experiment == "rep-digits" and suite.params["task.name"] == "digits"
    assert not any(k.startswith("mlflow.") for k in suite.tags) and "metalr.version" in suite.tags
    children = reader.children(suite.run_id)
    assert {(r.params["method"], r.params["seed"]) for r in children} == {
        (m, str(s)) for m in RECIPES["rep-digits"]["methods"] for s in TRAIN["seeds"]}
    child = children[0]
    assert reader.run(child.run_id) == child and reader.run("0" * 32) is None
    assert "test_accuracy" in child.metrics and child.parent == suite.run_id
    stored = client.get_metric_history(child.run_id, "test_accuracy")
    assert reader.history(child.run_id, "test_accuracy") == sorted(
        (m.step, m.value) for m in stored)
    reader.close()
    assert hashlib.sha256((root / "mlflow.db").read_bytes()).hexdigest() == before


def test_no_core_module_imports_mlflow():
    """MLflow is a plugin: the report, `metalr runs` and ``runs:/`` nets reach it through the
    tracker component (:mod:`metalr.running.stores`), so no module of metalr/ imports it."""
    import ast

    core = Path(__file__).resolve().parents[1] / "metalr"
    found = []
    for path in sorted(core.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{path.name}:{node.lineno} imports {n}" for n in names
                      if n and n.split(".")[0] == "mlflow"]
    assert found == []


def test_unknown_target_or_empty_store_is_one_line_and_writes_nothing(store, tmp_path, capsys):
    _, uri = store
    out = tmp_path / "site"
    assert main(["report", "no-such-exp", "--out", str(out), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'no-such-exp': neither an experiment nor a run id" in err
    assert "rep-digits" in err  # the experiments there are, to pick from
    missing = tmp_path / "none.db"
    assert main(["report", "--out", str(out), "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert f"no MLflow store at {missing}" in capsys.readouterr().err
    assert not missing.exists()  # not created by looking
    empty = tmp_path / "empty.db"
    MlflowClient(f"sqlite:///{empty}").search_experiments()  # a store with no runs
    assert main(["report", "--out", str(out), "--tracking-uri", f"sqlite:///{empty}"]) == 2
    assert "no metalr runs in the MLflow store" in capsys.readouterr().err
    assert not out.exists()


# -- the page in a real browser -------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install 'metalr[test]')"
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run does)"
    return None


@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
def test_report_in_chromium(store, report, tmp_path):
    from playwright.sync_api import sync_playwright

    client = MlflowClient(store[1])
    site = tmp_path / "site"  # a copy: the page must need nothing but its folder
    shutil.copytree(report, site)
    errors: list[str] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=BROWSER_ARGS, viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
            page.goto((site / "index.html").as_uri())
            page.wait_for_selector("body[data-charts-drawn]", timeout=15_000)
            # the LR plot of each suite: a drawn canvas, a legend entry per method and seed
            for i, parts in enumerate(RECIPES.values()):
                lr = page.locator(f"[data-chart='s{i}-lr']")
                methods = parts.get("methods", METHODS)
                assert lr.get_attribute("data-series") == str(len(methods) * 2)
                assert lr.locator("canvas").count() == 1
                box = lr.locator("canvas").bounding_box()
                assert box["width"] > 400 and box["height"] > 200
                labels = lr.locator(".u-legend .u-series .u-label").all_inner_texts()
                assert "fixed/seed0" in labels and "transfer/seed1" in labels
            assert page.locator("[data-chart='profile'] canvas").count() == 1
            assert page.locator("[data-chart='sweep0'] canvas").count() == 1
            # the digits suite's curves: a band per method over its 2 seeds, edges not listed
            curve = page.locator("[data-chart='s1-c2']")
            assert curve.get_attribute("data-bands") == str(len(METHODS) + len(LEARNED))
            shown = curve.locator(".u-legend .u-series:visible .u-label").all_inner_texts()
            assert "learned" in shown and not any(label.endswith("sd") for label in shown)
            # drag across the middle of the first LR plot: it zooms in on those steps
            x_range = ("() => { const c = metalrReport.charts.find(c => c.key === 's0-lr');"
                       " return [c.plot.scales.x.min, c.plot.scales.x.max]; }")
            before = page.evaluate(x_range)
            page.locator("[data-chart='s0-lr']").scroll_into_view_if_needed()
            over = page.locator("[data-chart='s0-lr'] .u-over").bounding_box()
            y = over["y"] + over["height"] / 2
            page.mouse.move(over["x"] + over["width"] * 0.3, y)
            page.mouse.down()
            page.mouse.move(over["x"] + over["width"] * 0.6, y, steps=5)
            page.mouse.up()
            after = page.evaluate(x_range)
            assert before[0] < after[0] < after[1] < before[1]
            # the tables, as the browser shows them, with the store's numbers
            cells = page.locator("table.seeds").first.locator("td").all_inner_texts()
            values = finals(client, "rep-mnist1d")
            assert cells == [c for m in METHODS
                             for c in (m, *(f"{values[m][s]:.4f}" for s in (0, 1)))]
            page.click("#card-mnist1d-mlp summary")  # the model card, opened, renders
            assert page.locator("#card-mnist1d-mlp table td").first.is_visible()
            assert page.locator("#card-mnist1d-mlp h1").inner_text() == "mnist1d-mlp"
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    assert errors == []
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1280 and height > 2000
