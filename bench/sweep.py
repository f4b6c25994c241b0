"""A sweep of 8 points with 2 local workers against the same 8 points one after another.

    python bench/sweep.py [--epochs 120] [--workers 2]

Both sweeps run the same recipe (the CPU ablations' workload: MNIST-1D, the shipped MLP of 2 x 100,
MLR-SNet with its defaults, Fig. 12c's LSTM hidden size 10/20/40/80 x 2 seeds) through
``metalr sweep``'s own path (plan, executor ``local``, runner, a fresh SQLite MLflow store each):
once with ``workers: 1`` (one after another, in one worker process) and once with
``workers: N``. Prints both wall times and their ratio (target on 2 cores: <= 0.6), and checks
that all 8 nested runs of the parallel sweep ended FINISHED in its one store. Each worker pays
its start (spawn, imports) once, so points must be long enough for that to amortise; the
store is created before the clock starts. A point's median wall and CPU time in each mode are
printed too: CPU time that grows with 2 workers is the cores' shared caches (or a busy machine),
not metalr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml


def recipe(epochs: int, workers: int, out: Path) -> dict:
    return {
        "name": "bench-sweep",
        "task": {"name": "mnist1d", "options": {"meta_size": 500}},
        "model": {"name": "mlp", "options": {"hidden": [100, 100]}},
        "train": {"epochs": epochs, "batch_size": 128, "device": "cpu", "threads": 1},
        "methods": {"mlrsnet": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                                "lr_policy": {"name": "mlrsnet"}}},
        "sweep": {"grid": {"methods.mlrsnet.lr_policy.options.hidden": [10, 20, 40, 80]},
                  "seeds": [0, 1], "executor": {"name": "local", "options": {"workers": workers}}},
        "output_dir": str(out),
    }


def timed_sweep(root: Path, epochs: int,
                workers: int) -> tuple[float, list[str], tuple[float, float]]:
    from mlflow.tracking import MlflowClient

    from metalr.running.sweep import execute, plan

    folder = root / f"workers{workers}"
    folder.mkdir()
    uri = f"sqlite:///{folder / 'store.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(recipe(epochs, workers, folder / "out")))
    sweep = plan(path)
    MlflowClient(uri).search_experiments()  # the store's creation (seconds) is not the sweep's
    start = time.perf_counter()
    outcome = execute(sweep, progress=False)
    elapsed = time.perf_counter() - start
    if not outcome.ok:
        sys.exit(f"workers={workers}: the sweep did not finish: {outcome.records}")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench-sweep")
    runs = client.search_runs([exp.experiment_id])
    parents = {r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags}
    statuses = [r.info.status for r in runs if r.data.tags.get("mlflow.parentRunId") in parents]
    # medians: a worker's first point also pays its imports (mlflow, the task's packages, torch's
    # compiler stack on the first optimizer), which the mean would spread over the others
    per_point = (statistics.median(r["wall_s"] for r in outcome.records),
                 statistics.median(r["cpu_s"] for r in outcome.records))
    return elapsed, statuses, per_point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    load = os.getloadavg()[0]  # other work on the machine: the timings need it near 0
    with tempfile.TemporaryDirectory(prefix="metalr-bench-sweep-") as tmp:
        serial, _, serial_point = timed_sweep(Path(tmp), args.epochs, 1)
        parallel, statuses, parallel_point = timed_sweep(Path(tmp), args.epochs, args.workers)
    finished = statuses.count("FINISHED")
    print(f"8 points, {args.epochs} epochs each, {os.cpu_count()} cores, load average before "
          f"{load:.2f}, after {os.getloadavg()[0]:.2f}")
    for label, total, (wall, cpu) in [("one after another (1 worker)", serial, serial_point),
                                      (f"{args.workers} local workers", parallel, parallel_point)]:
        print(f"{label:<29} {total:.1f} s (a point, median: {wall:.2f} s wall, {cpu:.2f} s CPU)")
    print(f"nested point runs FINISHED in one SQLite store: {finished} of {len(statuses)}")
    print(f"ratio parallel / one after another: {parallel / serial:.2f} (target <= 0.6)")


if __name__ == "__main__":
    main()
