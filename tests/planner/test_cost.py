"""The cost model on hand-computed cases: wire sizes, latency, energy, battery and load."""

from __future__ import annotations

import math

import pytest

from tierflow.errors import PlanError
from tierflow.planner.cost import PathCosts, wire_bytes
from tierflow.planner.graph import TensorInfo, Unit, UnitGraph
from tierflow.planner.power import (
    RADIOS,
    DevicePower,
    battery_factor,
    effective_energy_weight,
    radio_for_profile,
)
from tierflow.planner.snapshot import LinkState, Snapshot, TierState, links_for
from tierflow.types.links import get_profile


def two_units() -> UnitGraph:
    """x (1000 floats) -> u0 -> t0 (250 floats) -> u1 -> y (10 floats, returned)."""
    tensors = {
        "x": TensorInfo(
            name="x", dtype="float32", shape=(1000,), nbytes=4000, producer=None, consumers=("u0",)
        ),
        "t0": TensorInfo(
            name="t0", dtype="float32", shape=(250,), nbytes=1000, producer="u0", consumers=("u1",)
        ),
        "y": TensorInfo(
            name="y", dtype="float32", shape=(10,), nbytes=40, producer="u1", consumers=(), output=True
        ),
    }
    units = (
        Unit(
            name="u0",
            nodes=("n0",),
            inputs=("x",),
            outputs=("t0",),
            weights=("w0",),
            weight_bytes=100,
            activation_bytes=5000,
        ),
        Unit(
            name="u1",
            nodes=("n1",),
            inputs=("t0",),
            outputs=("y",),
            weights=("w1",),
            weight_bytes=200,
            activation_bytes=1040,
        ),
    )
    return UnitGraph(
        model_sha256="0" * 64,
        granularity="node",
        input_shapes={"x": (1000,)},
        inputs=("x",),
        outputs=("y",),
        units=units,
        tensors=tensors,
        weight_sizes={"w0": 100, "w1": 200},
    )


def snapshot(**extra: object) -> Snapshot:
    tiers = (
        TierState(name="device", unit_s={"u0": 0.2, "u1": 0.3}),
        TierState(name="cloud", unit_s={"u0": 0.02, "u1": 0.03}),
    )
    link = LinkState(a="device", b="cloud", up_bps=8e6, down_bps=16e6, rtt_s=0.1, overhead_s=0.01)
    return Snapshot(tiers=tiers, links=(link,), **extra)  # type: ignore[arg-type]


def test_wire_bytes_follow_the_frame_format() -> None:
    t = TensorInfo(name="t", dtype="float32", shape=(2, 50), nbytes=400, producer=None, consumers=())
    header = 36 + 4 * 2 + 16
    assert wire_bytes(t, "raw") == header + 400
    assert wire_bytes(t, "fp16") == header + 200
    assert wire_bytes(t, "int8") == header + 100 + 4  # one byte per element and one float32 scale
    ids = TensorInfo(name="ids", dtype="int64", shape=(1, 8), nbytes=64, producer=None, consumers=())
    assert wire_bytes(ids, "int8") == 36 + 8 + 16 + 64  # integers always travel raw


def test_split_latency_and_energy_by_hand() -> None:
    snap = snapshot(compression="raw", energy_weight=0.5)
    costs = PathCosts(two_units(), snap, ("device", "cloud"))
    pred = costs.evaluate([0, 1])
    t0_wire, y_wire = 36 + 4 + 16 + 1000, 36 + 4 + 16 + 40
    up, down = t0_wire * 8 / 8e6, y_wire * 8 / 16e6
    latency = 0.2 + 0.03 + 0.11 + up + down
    assert math.isclose(pred.latency_s, latency)
    assert pred.compute_s == {"device": 0.2, "cloud": 0.03}
    assert math.isclose(pred.link_s, 0.11) and math.isclose(pred.transfer_s, up + down)
    p, radio = snap.power, snap.power.radio
    energy = (
        p.idle_w * latency
        + (p.busy_w - p.idle_w) * 0.2
        + radio.tx_w * up
        + radio.tx_j_per_byte * t0_wire
        + radio.rx_w * down
        + radio.rx_j_per_byte * y_wire
    )
    assert math.isclose(pred.device_energy_j, energy)
    assert math.isclose(pred.score, latency + 0.5 * energy)
    assert math.isclose(costs.score_of([0, 1]), pred.score)
    hops = {(h.src, h.dst): h for h in pred.traffic}
    assert hops[("device", "cloud")].tensors == ("t0",) and hops[("cloud", "device")].tensors == ("y",)


def test_single_tier_plans() -> None:
    graph, snap = two_units(), snapshot()
    device = PathCosts(graph, snap, ("device",)).evaluate([0, 0])
    assert device.latency_s == pytest.approx(0.5) and device.traffic == ()
    assert device.device_energy_j == pytest.approx(snap.power.busy_w * 0.5)
    cloud = PathCosts(graph, snap, ("device", "cloud")).evaluate([1, 1])
    assert [h.tensors for h in cloud.traffic] == [("x",), ("y",)]  # the input goes up, the result comes back
    assert cloud.compute_s["device"] == 0.0


def test_backward_flow_is_rejected() -> None:
    with pytest.raises(PlanError, match="flow backwards"):
        PathCosts(two_units(), snapshot(), ("device", "cloud")).evaluate([1, 0])


def test_load_scales_compute() -> None:
    graph = two_units()
    snap = snapshot()
    busy = snap.with_tier(snap.tier("device").model_copy(update={"load": 0.5, "profile_load": 0.0}))
    assert PathCosts(graph, busy, ("device",)).evaluate([0, 0]).latency_s == pytest.approx(1.0)
    same = snap.with_tier(snap.tier("device").model_copy(update={"load": 0.5, "profile_load": 0.5}))
    assert PathCosts(graph, same, ("device",)).evaluate([0, 0]).latency_s == pytest.approx(0.5)
    capped = snap.with_tier(snap.tier("device").model_copy(update={"load": 1.0}))
    assert PathCosts(graph, capped, ("device",)).evaluate([0, 0]).latency_s == pytest.approx(5.0)


def test_battery_makes_energy_dearer() -> None:
    assert battery_factor(None) == 1.0 and battery_factor(0.8) == 1.0
    assert battery_factor(0.35) == pytest.approx(2.5)
    assert battery_factor(0.2) == pytest.approx(4.0) and battery_factor(0.1) == 10.0
    assert effective_energy_weight(0.1, 0.1) == pytest.approx(1.0)
    graph = two_units()
    full = PathCosts(graph, snapshot(energy_weight=0.1, battery=0.9), ("device",)).evaluate([0, 0])
    low = PathCosts(graph, snapshot(energy_weight=0.1, battery=0.1), ("device",)).evaluate([0, 0])
    assert low.device_energy_j == pytest.approx(full.device_energy_j)
    assert low.score - low.latency_s == pytest.approx(10 * (full.score - full.latency_s))


def test_power_model_figures() -> None:
    lte = RADIOS["lte"]
    assert lte.tx_j_per_byte == pytest.approx(438.39e-3 * 8e-6)  # mW/Mbps -> J/byte
    assert radio_for_profile("4g") is lte and radio_for_profile("wifi").name == "wifi"
    assert radio_for_profile("3g[bw x0.5]").name == "3g"
    with pytest.raises(ValueError):
        DevicePower(busy_w=0.1, idle_w=0.3)


def test_links_for_a_profile() -> None:
    access = get_profile("4g")
    links = {(x.a, x.b): x for x in links_for(access)}
    assert links[("device", "edge")].up_bps == access.up_bps
    direct = links[("device", "cloud")]
    assert direct.rtt_s == pytest.approx(access.rtt_s + 0.010) and direct.up_bps == access.up_bps
    offline = {(x.a, x.b): x for x in links_for(get_profile("offline"))}
    assert not offline[("device", "edge")].usable and not offline[("device", "cloud")].usable
    assert offline[("edge", "cloud")].usable
