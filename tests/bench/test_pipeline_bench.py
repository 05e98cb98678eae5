"""Smoke test of `tierflow bench pipeline`: it runs end to end and reports consistent figures."""

from __future__ import annotations

import pytest

from tierflow.bench.pipeline import run_pipeline_bench

pytestmark = pytest.mark.slow


def test_pipeline_bench_reports_every_figure() -> None:
    result = run_pipeline_bench(["wifi"], requests=4)
    figures = result["profiles"]["wifi"]
    for key in ("sequential_rps", "pipelined_rps", "bound_rps", "speedup", "efficiency"):
        assert figures[key] > 0
    assert figures["speedup"] == pytest.approx(figures["pipelined_rps"] / figures["sequential_rps"], rel=0.01)
    assert figures["efficiency"] == pytest.approx(figures["pipelined_rps"] / figures["bound_rps"], rel=0.01)
    # the cut tensors really crossed the emulated uplink
    assert figures["stage_uplink_s"] > 0
