"""Re-planning: triggers, hysteresis, dwell, broken plans -- replayed from a recorded trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.planner.test_cost import two_units
from tierflow.errors import ConfigError
from tierflow.planner.replan import Replanner, ReplanPolicy, link_moved, replay
from tierflow.planner.snapshot import LinkState, Snapshot, TierState, Trace

POLICY = ReplanPolicy(interval_s=5.0, link_change=0.3, min_gain=0.10, min_dwell_s=10.0)


def at(t: float, rtt: float, cloud: bool = True, up_bps: float = 8e6) -> Snapshot:
    """Device-only takes 0.5 s; cloud-only about 0.06 s + RTT: the RTT decides."""
    tiers = (
        TierState(name="device", unit_s={"u0": 0.2, "u1": 0.3}),
        TierState(name="cloud", available=cloud, unit_s={"u0": 0.02, "u1": 0.03}),
    )
    link = LinkState(a="device", b="cloud", up_bps=up_bps, down_bps=16e6, rtt_s=rtt, overhead_s=0.01)
    return Snapshot(time_s=t, tiers=tiers, links=(link,), compression="raw")


def trace() -> Trace:
    return Trace(
        graph=two_units(),
        snapshots=(
            at(0.0, 0.1),  # initial: the cloud
            at(2.0, 0.1, up_bps=8.5e6),  # a 6 % wiggle: nothing to do
            at(5.0, 0.1),  # periodic: same plan
            at(6.0, 0.46),  # RTT jumps: device-only is better, but by under 10 %
            at(7.0, 1.0),  # much worse: better by > 10 %, but the cloud plan is only 7 s old
            at(11.0, 1.0),  # 4 s after the last decision: not yet periodic
            at(12.0, 1.0),  # periodic, 12 s after the switch: switch to device-only
            at(13.0, 0.1),  # the network recovers: better by far, but device-only is 1 s old
        ),
    )


def test_replay_a_recorded_trace(tmp_path: Path) -> None:
    recorded = trace()
    decisions = replay(recorded.graph, recorded.snapshots, POLICY)
    summary = [(d.time_s, d.reason, d.switched, d.chosen.describe if d.chosen else None) for d in decisions]
    assert summary == [
        (0.0, "initial", True, "cloud[u0..u1]"),
        (5.0, "periodic", False, "cloud[u0..u1]"),
        (6.0, "link-change", False, "cloud[u0..u1]"),
        (7.0, "link-change", False, "cloud[u0..u1]"),
        (12.0, "periodic", True, "device[u0..u1]"),
        (13.0, "link-change", False, "device[u0..u1]"),
    ]
    assert "better by only" in decisions[2].note
    assert "7 s old" in decisions[3].note
    assert decisions[2].best is not None and decisions[2].best.describe == "device[u0..u1]"
    assert decisions[3].previous_score is not None and decisions[3].previous_score > 1.0
    # the trace survives JSON, and replaying it gives the same decisions
    path = recorded.save(tmp_path / "trace.json")
    again = Trace.load(path)
    assert again == recorded
    assert replay(again.graph, again.snapshots, POLICY) == decisions


def test_a_broken_plan_is_replaced_at_once() -> None:
    r = Replanner(two_units(), POLICY)
    assert r.step(at(0.0, 0.1)) is not None and r.current is not None
    assert r.current.tiers_used == ("cloud",)
    d = r.step(at(1.0, 0.1, cloud=False))  # the cloud is gone, 1 s into the dwell
    assert d is not None and d.reason == "broken" and d.switched and d.previous_score is None
    assert r.current.tiers_used == ("device",)
    assert r.step(at(2.0, 0.1, cloud=False)) is None


def test_link_moves() -> None:
    a = LinkState(a="device", b="edge", up_bps=10e6, down_bps=10e6, rtt_s=0.020)
    assert not link_moved(a, a.model_copy(update={"up_bps": 12e6}), 0.3, 0.005)
    assert link_moved(a, a.model_copy(update={"up_bps": 14e6}), 0.3, 0.005)
    assert link_moved(a, a.model_copy(update={"down_bps": 0.0}), 0.3, 0.005)
    assert not link_moved(a, a.model_copy(update={"rtt_s": 0.024}), 0.3, 0.005)  # within the RTT floor
    assert link_moved(a, a.model_copy(update={"rtt_s": 0.060}), 0.3, 0.005)


def test_bad_trace_file(tmp_path: Path) -> None:
    bad = tmp_path / "t.json"
    bad.write_text('{"graph": 1}')
    with pytest.raises(ConfigError, match="not a planner trace"):
        Trace.load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        Trace.load(tmp_path / "none.json")
