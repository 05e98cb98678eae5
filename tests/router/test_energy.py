"""The energy policy: battery and metered-network rules, the energy weight, reading the battery."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from tierflow.errors import ConfigError, InvalidInputError
from tierflow.router import energy
from tierflow.router.energy import BatteryState, EnergyPolicy, apply, read_battery
from tierflow.router.rules import RoutingRules
from tierflow.router.sla import SLA, Decision, choose
from tierflow.types.tasks import Prefer, TaskKind
from tierflow.types.tiers import Tier

from .image_offers import IMAGE_OFFERS, image_matrix

POLICY = EnergyPolicy()


def route_with(outcome: energy.EnergyOutcome, sla: SLA, network_up: bool = True) -> Decision:
    return choose(TaskKind.IMAGE_1024, sla, image_matrix(), RoutingRules(), network_up, IMAGE_OFFERS,
                  allowed=outcome.allowed, avoid=outcome.avoid, prefer=outcome.prefer)


def test_battery_at_15_percent_keeps_everything_local() -> None:
    sla = SLA(prefer=Prefer.QUALITY, offline_ok=True)
    out = apply(POLICY, BatteryState(level=15.0), metered=False, sla=sla)
    assert out.allowed == {Tier.DEVICE}
    assert out.prefer is Prefer.ENERGY
    d = route_with(out, sla)  # the cloud would have won on quality
    assert d.tier is Tier.DEVICE
    assert any("energy policy" in a.why for a in d.alternatives if a.offer.tier is Tier.CLOUD)


def test_battery_at_15_percent_while_charging_is_not_restricted() -> None:
    sla = SLA(prefer=Prefer.QUALITY)
    out = apply(POLICY, BatteryState(level=15.0, charging=True), metered=False, sla=sla)
    assert out.allowed == set(Tier) and out.prefer is Prefer.QUALITY
    assert out.energy_weight == 0.0


def test_battery_above_the_threshold_allows_every_tier() -> None:
    out = apply(POLICY, BatteryState(level=25.0), metered=False, sla=SLA())
    assert out.allowed == set(Tier) and out.prefer is Prefer.LATENCY and out.avoid == frozenset()


def test_metered_network_prefers_the_edge_over_the_cloud() -> None:
    sla = SLA(min_resolution=1024, prefer=Prefer.QUALITY)
    free = route_with(apply(POLICY, None, metered=False, sla=sla), sla)
    metered_out = apply(POLICY, None, metered=True, sla=sla)
    metered = route_with(metered_out, sla)
    assert (free.tier, free.resolution) == (Tier.CLOUD, 2048)
    assert (metered.tier, metered.resolution) == (Tier.EDGE, 1024)
    assert metered_out.allowed == set(Tier)  # the cloud stays a fallback


def test_metered_network_still_uses_the_cloud_when_nothing_nearer_meets_the_sla() -> None:
    sla = SLA(min_resolution=2048)
    d = route_with(apply(POLICY, None, metered=True, sla=sla), sla)
    assert (d.tier, d.resolution, d.degraded) == (Tier.CLOUD, 2048, False)


def test_thresholds_are_configurable() -> None:
    policy = EnergyPolicy.from_dict({"local_only_below_pct": 50, "metered_avoid": []})
    out = apply(policy, BatteryState(level=40.0), metered=True, sla=SLA())
    assert out.allowed == {Tier.DEVICE}
    assert out.avoid == frozenset()
    assert apply(EnergyPolicy(local_only_below_pct=None), BatteryState(level=1.0), False, SLA()).allowed \
        == set(Tier)


@pytest.mark.parametrize(
    ("battery", "weight", "effective"),
    [
        (None, 0.0, 0.0),  # mains power or no battery: a joule costs the user nothing
        (BatteryState(level=80.0), 0.1, 0.1),  # factor 1 at or above 50 %
        (BatteryState(level=35.0), 0.1, 0.25),  # halfway from 50 % to 20 %: factor 2.5
        (BatteryState(level=15.0), 0.1, 1.0),  # below 20 %: factor 10
        (BatteryState(level=15.0, charging=True), 0.0, 0.0),
    ],
)
def test_energy_weight_follows_the_battery(
    battery: BatteryState | None, weight: float, effective: float
) -> None:
    out = apply(POLICY, battery, metered=False, sla=SLA())
    assert out.energy_weight == pytest.approx(weight)
    assert out.effective_energy_weight == pytest.approx(effective)


@pytest.mark.parametrize("level", [-1.0, 100.5, math.nan, "full", True])
def test_battery_level_out_of_range_names_the_field(level: Any) -> None:
    with pytest.raises(InvalidInputError, match=r"battery\.level"):
        BatteryState(level=level)


def test_battery_report_parsing() -> None:
    assert BatteryState.parse({"level": 57, "charging": True}) == BatteryState(57.0, True)
    with pytest.raises(InvalidInputError, match=r"battery\.volts"):
        BatteryState.parse({"level": 57, "volts": 3.7})
    with pytest.raises(InvalidInputError, match=r"battery\.level"):
        BatteryState.parse({"level": 101})
    with pytest.raises(InvalidInputError, match=r"battery\.charging"):
        BatteryState.parse({"level": 50, "charging": "no"})


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"local_only_below_pct": 120}, "local_only_below_pct"),
        ({"metered_avoid": ["device"]}, "device"),
        ({"metered_avoid": ["fog"]}, "'fog'"),
        ({"energy_weight_s_per_j": -1}, "energy_weight_s_per_j"),
        ({"battery_low": 20}, "unknown key"),
    ],
)
def test_bad_policies_are_config_errors(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EnergyPolicy.from_dict(data)


def test_policy_round_trips_through_a_dict() -> None:
    policy = EnergyPolicy(local_only_below_pct=30.0, metered_avoid=frozenset({Tier.CLOUD, Tier.EDGE}))
    assert EnergyPolicy.from_dict(policy.to_dict()) == policy


def test_read_battery_from_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    monkeypatch.setattr(psutil, "sensors_battery", lambda: SimpleNamespace(percent=42.0, power_plugged=False))
    assert read_battery() == BatteryState(level=42.0, charging=False)
    monkeypatch.setattr(psutil, "sensors_battery", lambda: SimpleNamespace(percent=100.4, power_plugged=True))
    assert read_battery() == BatteryState(level=100.0, charging=True)
    monkeypatch.setattr(psutil, "sensors_battery", lambda: None)
    assert read_battery() is None
