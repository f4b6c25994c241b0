"""bench/gpu.py runs on CPU and prints its ratios (the GPU numbers come from a GPU run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def test_the_gpu_bench_prints_its_ratios_on_cpu(capsys):
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rates = bench.main(["--device", "cpu", "--steps", "small"])
    out = capsys.readouterr().out
    for label in ("fp32", "amp-bf16+channels_last"):
        assert f"{label}: ratio meta/plain" in out and rates[f"{label}/ratio"] > 0
    assert "target meta/plain >= 0.95" in out and "ratio amp/fp32 plain" in out
