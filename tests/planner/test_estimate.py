"""Live estimates: link figures from transfers, change detection, device load and battery."""

from __future__ import annotations

import random

import pytest

from tierflow.errors import InvalidInputError
from tierflow.planner.estimate import ChangeDetector, DeviceMonitor, Ewma, LinkEstimator, SnapshotSource
from tierflow.planner.graph import TensorInfo, Unit, UnitGraph
from tierflow.planner.profile import StageTiming, TierProfile


def transfer_seconds(nbytes: int, bps: float, rtt: float, rng: random.Random) -> float:
    return (rtt + nbytes * 8 / bps) * rng.uniform(0.95, 1.05)


def test_ewma_and_detector() -> None:
    e = Ewma(alpha=0.5)
    assert e.update(10.0) == 10.0 and e.update(20.0) == 15.0
    d = ChangeDetector()
    assert not any(d.update(x, 100.0) for x in (105, 95, 110, 92, 101))  # noise
    assert any(d.update(x, 100.0) for x in (40, 40, 40))  # a step down


def test_link_estimate_converges_and_follows_a_handover() -> None:
    rng = random.Random(0)
    est = LinkEstimator("device", "edge", up_bps=50e6, down_bps=50e6, rtt_s=0.02)
    for _ in range(30):  # the link is really 10 Mbit/s up, 40 ms RTT
        est.observe_rtt(0.04 * rng.uniform(0.95, 1.05))
        n = rng.choice([200_000, 500_000, 1_000_000])
        est.observe_transfer(n, transfer_seconds(n, 10e6, 0.04, rng))
    s = est.state()
    assert s.rtt_s == pytest.approx(0.04, rel=0.1)
    assert s.up_bps == pytest.approx(10e6, rel=0.15)
    assert s.down_bps == 50e6  # nothing came down: the initial figure stands
    before = est.changes
    for _ in range(4):  # handover to a 1 Mbit/s link
        n = 500_000
        est.observe_transfer(n, transfer_seconds(n, 1e6, 0.04, rng), now=123.0)
    assert est.changes > before and est.last_change_s == 123.0
    assert est.state().up_bps == pytest.approx(1e6, rel=0.2)  # restarted from the new samples, no slow drift


def test_small_transfers_measure_rtt() -> None:
    est = LinkEstimator("device", "cloud", up_bps=10e6, down_bps=10e6, rtt_s=0.2)
    for _ in range(20):
        est.observe_transfer(100, 0.05 + 100 * 8 / 10e6, direction="down")
    assert est.state().rtt_s == pytest.approx(0.05, rel=0.05)
    with pytest.raises(InvalidInputError):
        est.observe_transfer(100, -1.0)
    with pytest.raises(InvalidInputError):
        est.observe_transfer(100, 1.0, direction="sideways")
    with pytest.raises(InvalidInputError, match="no estimate yet"):
        LinkEstimator("device", "edge").state()


def test_device_monitor_reads_load_and_battery() -> None:
    monitor = DeviceMonitor(threads=1)
    state = monitor.read(window_s=0.05)
    assert 0.0 <= state.load <= 1.0 and 0.0 <= state.others <= 1.0
    assert state.battery is None or 0.0 <= state.battery <= 1.0


def test_snapshot_source_freezes_the_live_state() -> None:
    unit = Unit(
        name="u", nodes=("n",), inputs=("x",), outputs=("y",), weights=(), weight_bytes=0, activation_bytes=8
    )
    graph = UnitGraph(
        model_sha256="0" * 64,
        granularity="node",
        input_shapes={"x": (1,)},
        inputs=("x",),
        outputs=("y",),
        units=(unit,),
        weight_sizes={},
        tensors={
            "x": TensorInfo(name="x", dtype="float32", shape=(1,), nbytes=4, producer=None, consumers=("u",)),
            "y": TensorInfo(
                name="y", dtype="float32", shape=(1,), nbytes=4, producer="u", consumers=(), output=True
            ),
        },
    )
    timing = StageTiming(inputs=("x",), outputs=("y",), seconds=0.1)
    profiles = {
        name: TierProfile(
            model_sha256="0" * 64,
            tier=name,
            fingerprint=name,
            granularity="node",
            input_shapes={"x": (1,)},
            unit_s={"u": s},
            stages=(timing,),
        )
        for name, s in (("device", 0.1), ("cloud", 0.01))
    }
    link = LinkEstimator("device", "cloud", up_bps=1e6, down_bps=2e6, rtt_s=0.05)
    clock = iter([1.0, 2.0])
    source = SnapshotSource(
        graph, profiles, [link], battery=0.5, loads={"device": 0.3}, clock=lambda: next(clock)
    )
    first = source.snapshot()
    assert first.time_s == 1.0 and first.tier_names == ("device", "cloud")
    assert first.battery == 0.5 and first.tier("device").load == 0.3
    assert first.link("cloud", "device") is not None
    link.observe_transfer(100_000, 0.05 + 100_000 * 8 / 0.5e6)
    source.unavailable.add("cloud")
    second = source.snapshot()
    assert second.time_s == 2.0 and not second.tier("cloud").available
    assert second.link("device", "cloud").up_bps < first.link("device", "cloud").up_bps  # type: ignore[union-attr]
