"""The SIMULATED slowdown stretches the typical length of a kind of work, not one burst of host load."""

from __future__ import annotations

import time

import pytest

from tierflow.runtime import slowdown as slowdown_module
from tierflow.runtime.slowdown import HISTORY, SimulatedSlowdown


def test_the_first_run_of_a_kind_is_its_own_typical_length() -> None:
    s = SimulatedSlowdown(10)
    assert s.typical("a", 0.02) == 0.02
    assert s.typical("b", 0.5) == 0.5  # kinds are apart


def test_a_one_off_burst_is_not_stretched() -> None:
    s = SimulatedSlowdown(100)
    for _ in range(5):
        s.typical("stage", 0.001)
    assert s.typical("stage", 0.040) == 0.001  # a 40 ms hiccup: stretched as the usual 1 ms
    assert s.typical("stage", 0.0005) == 0.0005  # a faster run is stretched as itself


def test_a_lasting_change_is_followed() -> None:
    s = SimulatedSlowdown(4)
    for _ in range(HISTORY):
        s.typical("step", 0.001)
    seen = [s.typical("step", 0.010) for _ in range(HISTORY)]
    assert seen[0] == 0.001 and seen[-1] == 0.010  # the median moved over once most runs were longer


def test_stretch_sleeps_factor_minus_one_typical_lengths(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(slowdown_module.time, "sleep", slept.append)
    s = SimulatedSlowdown(5)
    s.stretch("k", time.perf_counter() - 0.002)
    assert len(slept) == 1 and 4 * 0.002 <= slept[0] < 4 * 0.1  # the 2 ms of work (and the call) x4
    SimulatedSlowdown(1).stretch("k", time.perf_counter())
    assert len(slept) == 1  # factor 1: full speed, no sleep
