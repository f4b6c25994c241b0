"""bench/memory.py measures something real: meta-training's peak is above plain training's, and
the ratios it returns are the ones it prints (a measure stuck at 0 or a constant fails here)."""

from __future__ import annotations

import re

import pytest


@pytest.mark.slow  # a bench's own check: tox -e slow (the bench's numbers: tox -e bench)
def test_the_memory_bench_sees_the_meta_update_and_prints_what_it_returns(capsys, load_bench):
    bench = load_bench("memory")
    found = bench.main(["--models", "mlp500", "--steps", "2", "--device", "cpu",
                        "--threads", "1", "--jobs", "2"])
    out = capsys.readouterr().out
    for length in ("N", "4N"):
        plain, meta = found[f"mlp500/plain/{length}"], found[f"mlp500/meta/{length}"]
        # 0.27 M parameters: weights, gradients and momentum alone are 3.2 MiB, and a meta-update
        # holds at least the virtual weights and the meta loss's gradient at them (2.1 MiB more)
        assert plain > 3 * 2**20, plain
        assert meta > plain + 1.5 * 2**20, (plain, meta)
        assert f"peak {plain:>13,d} B" in out and f"peak {meta:>13,d} B" in out
    line = next(s for s in out.splitlines() if s.startswith("mlp500:"))
    printed = {k: float(v) for k, v in re.findall(r"(meta/plain@4?N|meta 4N/N|plain 4N/N) ([\d.]+)",
                                                 line)}
    assert printed == {
        "meta/plain@N": round(found["mlp500/meta/plain@N"], 3),
        "meta/plain@4N": round(found["mlp500/meta/plain@4N"], 3),
        "meta 4N/N": round(found["mlp500/meta/4N/N"], 3),
        "plain 4N/N": round(found["mlp500/plain/4N/N"], 3),
    }
    assert "(<= 1.5: " in line and "(<= 1.05: " in line
