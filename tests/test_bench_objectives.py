"""bench/objectives.py measures something real: every objective's whole run costs more than a
plain one, ES (25 whole runs) far more than a one-step run, and it prints what it returns."""

from __future__ import annotations

import pytest


@pytest.mark.slow  # a bench's own check: tox -e slow (the bench's numbers: tox -e bench)
def test_the_objectives_bench_times_each_objective_and_prints_what_it_returns(capsys, load_bench):
    bench = load_bench("objectives")
    # three rounds, their median: one round's times move by 25% with other work on the
    # machine (a run with meta-updates measured below a plain one, 0.95, at load 2)
    found = bench.main(["--rounds", "3", "--epochs", "2"])
    out = capsys.readouterr().out
    assert set(found) == {"fixed", "control", "one-step", "averaged", "unroll-5", "unroll-20",
                          "es"}
    assert found["fixed"]["over fixed wall"] == 1.0
    # the probe alone costs a plain run's steps several times over on a 2-epoch run; read on
    # the process's CPU clock, which other work moves less than the wall clock
    assert found["control"]["over fixed cpu"] > 1.05
    assert found["es"]["over control wall"] > 5  # 24 meta-training runs and the frozen one
    for name, row in found.items():
        line = next(s for s in out.splitlines() if s.strip().startswith(name + " "))
        assert f"{row['over fixed wall']:7.2f}" in line and f"{row['seconds']:8.2f}" in line
