"""bench/gpu.py: on CPU its printed lines are the numbers it returns; on CUDA it holds its target.

The CPU smoke run checks the bench's arithmetic (each printed ratio is the quotient of the
printed rates, each verdict follows from its ratio) rather than its speed; the GPU-marked test
holds the speed target, meta/plain >= ``bench.TARGET``, which a CPU run cannot say anything
about.
"""

from __future__ import annotations

import re

import pytest
import torch

LABELS = ("fp32", "amp-bf16+channels_last")
NUMBER = r"([0-9.]+|inf|nan)"


def _printed(out: str) -> dict[str, dict[str, str]]:
    """The numbers of each label's two lines, as printed (strings: compared at their precision)."""
    found: dict[str, dict[str, str]] = {}
    for label in LABELS:
        rates = re.search(rf"^{re.escape(label)}: steps/s loop {NUMBER}, plain {NUMBER}, "
                          rf"meta {NUMBER}$", out, re.M)
        ratio = re.search(rf"^{re.escape(label)}: ratio meta/plain {NUMBER}, meta/loop {NUMBER}, "
                          rf"plain/loop {NUMBER}, one meta-update = (-?[0-9.]+) plain steps; "
                          rf"target meta/plain >= {NUMBER}: (met|NOT met)$", out, re.M)
        assert rates and ratio, f"the {label} lines are missing or changed:\n{out}"
        found[label] = dict(zip(("loop", "plain", "meta"), rates.groups())) | dict(zip(
            ("ratio", "meta/loop", "plain/loop", "update", "target", "verdict"), ratio.groups()))
    amp = re.search(rf"^ratio amp/fp32 plain {NUMBER}, meta {NUMBER}$", out, re.M)
    assert amp, f"the amp/fp32 line is missing or changed:\n{out}"
    found["amp/fp32"] = {"plain": amp.group(1), "meta": amp.group(2)}
    return found


def test_the_gpu_bench_prints_the_ratios_it_returns_on_cpu(capsys, load_bench):
    bench = load_bench("gpu")
    rates = bench.main(["--device", "cpu", "--steps", "small"])
    out = capsys.readouterr().out
    printed = _printed(out)
    preset = bench.PRESETS["small"]
    steps = -(-preset["train"] // preset["batch"])  # training batches of one epoch
    assert re.search(rf", {steps} steps/epoch,", out)
    for label in LABELS:
        r = {k: rates[f"{label}/{k}"] for k in ("loop", "plain", "meta", "ratio")}
        p = printed[label]
        assert all(v > 0 for v in r.values())
        for k in ("loop", "plain", "meta"):  # the rates printed are the rates returned
            assert p[k] == f"{r[k]:.2f}"
        # the ratio returned is computed from the returned rates, and is the one printed
        assert r["ratio"] == r["meta"] / r["plain"]
        assert p["ratio"] == f"{r['meta'] / r['plain']:.3f}"
        assert p["meta/loop"] == f"{r['meta'] / r['loop']:.3f}"
        assert p["plain/loop"] == f"{r['plain'] / r['loop']:.3f}"
        update = (steps / r["meta"] - steps / r["plain"]) * r["plain"] / 2
        assert p["update"] == f"{update:.1f}"
        assert float(p["target"]) == bench.TARGET == 0.95
        assert p["verdict"] == ("met" if r["ratio"] >= bench.TARGET else "NOT met")
    amp, fp32 = "amp-bf16+channels_last", "fp32"
    assert printed["amp/fp32"]["plain"] == f"{rates[f'{amp}/plain'] / rates[f'{fp32}/plain']:.2f}"
    assert printed["amp/fp32"]["meta"] == f"{rates[f'{amp}/meta'] / rates[f'{fp32}/meta']:.2f}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the bench's target is for a GPU")
def test_meta_training_keeps_the_benchs_target_speed_on_cuda(capsys, load_bench):
    """The full bench (one CIFAR-sized epoch per measurement, 3 rounds; 1-2 minutes on an H100):
    meta-training MLR-SNet runs at >= 95% of the engine's plain training speed."""
    bench = load_bench("gpu")
    rates = bench.main(["--device", "cuda"])
    out = capsys.readouterr().out
    printed = _printed(out)
    for label in LABELS:
        assert printed[label]["ratio"] == f"{rates[f'{label}/ratio']:.3f}"
        assert rates[f"{label}/ratio"] >= bench.TARGET, (
            f"{label}: meta/plain {rates[f'{label}/ratio']:.3f} < target {bench.TARGET}\n{out}")
