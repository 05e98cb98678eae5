"""Live estimates: link figures from transfers, change detection, device load and battery."""

from __future__ import annotations

import random
import sys
from collections import namedtuple

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
    changes_after = []
    for _ in range(30):  # the link is really 10 Mbit/s up, 40 ms RTT (samples within 5 %)
        est.observe_rtt(0.04 * rng.uniform(0.95, 1.05))
        n = rng.choice([200_000, 500_000, 1_000_000])
        est.observe_transfer(n, transfer_seconds(n, 10e6, 0.04, rng))
        changes_after.append(est.changes)
    s = est.state()
    assert s.rtt_s == pytest.approx(0.04, rel=0.1)
    assert s.up_bps == pytest.approx(10e6, rel=0.15)
    assert s.down_bps == 50e6  # nothing came down: the initial figure stands
    # the wrong initial figures are noticed at once; after that, 5 % noise is never a change
    assert changes_after[2] >= 1 and changes_after[-1] == changes_after[2]
    before = est.changes
    for i in range(1, 5):  # handover to a 1 Mbit/s link
        n = 500_000
        est.observe_transfer(n, transfer_seconds(n, 1e6, 0.04, rng), now=123.0 + i)
    assert est.changes == before + 1 and est.last_change_s == 124.0  # on the first sample, once
    assert est.state().up_bps == pytest.approx(1e6, rel=0.2)  # restarted from the new samples, no slow drift
    for i in range(1, 5):  # and back to a 20 Mbit/s link: a step up is detected too
        n = 1_000_000
        est.observe_transfer(n, transfer_seconds(n, 20e6, 0.04, rng), now=200.0 + i)
    assert est.changes == before + 2 and est.last_change_s == 201.0
    assert est.state().up_bps == pytest.approx(20e6, rel=0.2)


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


class _FakeProcess:
    def __init__(self, machine: FakePsutil) -> None:
        self.machine = machine

    def cpu_percent(self, interval: float | None = None) -> float:
        return self.machine.mine


class FakePsutil:
    """The parts of psutil DeviceMonitor reads, reporting a synthetic load the test sets.

    ``total`` is the machine's busy share in percent of all cores (``psutil.cpu_percent``);
    ``mine`` this process's CPU in percent of one core (``Process().cpu_percent``).
    """

    def __init__(self, cpus: int) -> None:
        self.cpus = cpus
        self.total = self.mine = 0.0
        self.battery: object = None

    def cpu_count(self) -> int:
        return self.cpus

    def cpu_percent(self, interval: float | None = None) -> float:
        return self.total

    def Process(self) -> _FakeProcess:  # noqa: N802 -- psutil's name
        return _FakeProcess(self)

    def sensors_battery(self) -> object:
        if isinstance(self.battery, BaseException):
            raise self.battery
        return self.battery


Battery = namedtuple("Battery", "percent secsleft power_plugged")


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> FakePsutil:
    fake = FakePsutil(cpus=4)
    monkeypatch.setitem(sys.modules, "psutil", fake)
    return fake


def test_device_monitor_reports_a_known_synthetic_load(machine: FakePsutil) -> None:
    # 4 cores, 75 % busy, one full core of it ours: others use 2 cores, 2 stay free
    machine.total, machine.mine = 75.0, 100.0
    expected = {1: 0.0, 2: 0.0, 4: 0.5, 8: 0.75}  # 1 - min(1, 2 free / threads)
    for threads, load in expected.items():
        state = DeviceMonitor(threads=threads).read()
        assert state.others == pytest.approx(0.5)
        assert state.load == pytest.approx(load)
    monitor = DeviceMonitor(threads=2)
    machine.total, machine.mine = 100.0, 0.0  # other work takes every core
    assert (monitor.read().others, monitor.read().load) == (1.0, 1.0)
    machine.total, machine.mine = 25.0, 100.0  # all of the machine's work is ours: nobody competes
    assert (monitor.read().others, monitor.read().load) == (0.0, 0.0)
    machine.total, machine.mine = 75.0, 50.0  # 3 cores busy, half a core ours: 1.5 free for 2 threads
    assert monitor.read().load == pytest.approx(0.25)


def test_device_monitor_reads_the_battery_only_off_mains(machine: FakePsutil) -> None:
    monitor = DeviceMonitor()
    assert monitor.read().battery is None  # no battery
    machine.battery = Battery(percent=40.0, secsleft=3600, power_plugged=False)
    assert monitor.read().battery == pytest.approx(0.4)
    machine.battery = Battery(percent=40.0, secsleft=3600, power_plugged=True)
    assert monitor.read().battery is None  # on mains: energy is not scarce
    machine.battery = NotImplementedError("no sensors on this platform")
    assert monitor.read().battery is None


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
