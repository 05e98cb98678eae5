"""`tierflow bench pipeline`: on a set-up where overlap must pay, it does, and the figures say what ran."""

from __future__ import annotations

import pytest

from tierflow.bench.pipeline import every_stage_works, run_pipeline_bench

pytestmark = pytest.mark.slow


def test_a_stage_that_does_no_work_is_not_overlap() -> None:
    assert every_stage_works({"device_s": 0.05, "remote_s": 0.04, "uplink_s": 0.06, "downlink_s": 0.0})
    # random-image's old figures: a 0 ms device stage, the link directions and the remote overlapping
    assert not every_stage_works({"device_s": 0.0, "remote_s": 0.038, "uplink_s": 0.073, "downlink_s": 0.118})
    assert not every_stage_works({"device_s": 0.1, "remote_s": 0.0099, "uplink_s": 0.0, "downlink_s": 0.0})


def test_overlap_pays_when_device_and_remote_both_compute() -> None:
    """Device and cloud each SIMULATED 8x slower, over a fast link: the cut balances two compute
    stages of ~equal length, so sequential requests take about their sum and pipelined ones about
    the longer one -- theory ~2x; a robust bound here."""
    result = run_pipeline_bench(["datacenter"], requests=8, device_slowdown=8.0, remote_slowdown=8.0)
    figures = result["profiles"]["datacenter"]
    assert figures["every_stage_works"] is True
    # both compute stages were measured doing real work (ms), not a 0 ms stage
    assert figures["stage_device_s"] > 20 and figures["stage_remote_s"] > 20, figures
    assert figures["overlap_bound"] > 1.5, figures  # the stages are balanced enough for overlap to matter
    assert figures["speedup"] > 1.2, figures
    # and not faster than the slowest stage allows (the bound's stage times are medians taken on a
    # shared machine: a burst of load during them makes the bound pessimistic by up to ~20 %)
    assert figures["pipelined_rps"] <= 1.5 * figures["bound_rps"], figures
    # the cut tensors really crossed the emulated uplink
    assert figures["stage_uplink_s"] > 0
