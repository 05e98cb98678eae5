"""SLA parsing, the routing rules and choose / fallbacks on offers shaped like random-image."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tierflow.errors import ConfigError, InvalidInputError, TierUnavailableError, UserError
from tierflow.router.matrix import TaskResourceMatrix
from tierflow.router.rules import RoutingRules
from tierflow.router.sla import (
    SLA,
    Decision,
    Offer,
    SLAFieldError,
    SLAUnmetError,
    choose,
    fallbacks,
    within_budget,
)
from tierflow.types.tasks import Prefer, TaskKind
from tierflow.types.tiers import Tier

from .image_offers import (
    CLOUD_1024,
    CLOUD_2048,
    DEVICE_256,
    DEVICE_512,
    EDGE_1024,
    IMAGE_OFFERS,
    image_matrix,
)

RULES = RoutingRules()


def route(sla: SLA, *, network_up: bool = True, matrix: TaskResourceMatrix | None = None,
          task: TaskKind = TaskKind.IMAGE_1024, **kw: Any) -> Decision:
    return choose(task, sla, matrix or image_matrix(), RULES, network_up, IMAGE_OFFERS, **kw)


# --- the examples ----------------------------------------------------------------------


def test_edge_reachable_and_budget_fits_gives_the_edge_at_1024() -> None:
    m = image_matrix()
    m.set_available(Tier.CLOUD, False)  # the edge answers, the cloud does not
    d = route(SLA(max_latency_s=1.5, min_resolution=1024), matrix=m)
    assert (d.tier, d.resolution, d.degraded) == (Tier.EDGE, 1024, False)
    assert d.predicted_s == pytest.approx(1.2)
    cloud = [a for a in d.alternatives if a.offer.tier is Tier.CLOUD]
    assert cloud and all(not a.feasible and "unavailable" in a.why for a in cloud)


def test_edge_too_slow_for_the_budget_is_not_chosen() -> None:
    m = image_matrix()
    m.set_available(Tier.CLOUD, False)
    m.set_load(Tier.EDGE, 0.5)  # 1024 px on the edge now 2.4 s
    with pytest.raises(SLAUnmetError):
        route(SLA(max_latency_s=1.5, min_resolution=1024), matrix=m)


def test_offline_with_offline_ok_gives_the_device_at_512_labelled_degraded() -> None:
    d = route(SLA(min_resolution=1024, offline_ok=True), network_up=False)
    assert (d.tier, d.resolution, d.degraded) == (Tier.DEVICE, 512, True)
    assert "degraded" in d.reason and "min_resolution 1024" in d.reason
    assert all(not a.feasible for a in d.alternatives if a.offer.tier is not Tier.DEVICE)


def test_offline_device_at_512_is_not_degraded_when_512_was_enough() -> None:
    d = route(SLA(min_resolution=512, offline_ok=True), network_up=False)
    assert (d.tier, d.resolution, d.degraded) == (Tier.DEVICE, 512, False)


def test_good_network_and_prefer_quality_gives_the_cloud_at_2048_refined() -> None:
    d = route(SLA(max_latency_s=3.0, prefer=Prefer.QUALITY))
    assert (d.tier, d.resolution, d.quality, d.degraded) == (Tier.CLOUD, 2048, "refined", False)
    assert d.predicted_s == pytest.approx(2.0)


def test_prefer_latency_picks_the_fastest_offer_meeting_the_sla() -> None:
    d = route(SLA(min_resolution=1024))
    assert (d.tier, d.resolution) == (Tier.CLOUD, 1024)  # 0.8 s beats the edge's 1.2 s
    assert d.alternatives[1].offer == EDGE_1024 and d.alternatives[1].meets_sla


def test_a_busy_cloud_loses_to_the_edge_and_the_decision_says_why() -> None:
    m = image_matrix()
    m.set_load(Tier.CLOUD, 0.5)  # another caller's work: 1024 px on the cloud now 1.6 s, the edge 1.2 s
    d = route(SLA(min_resolution=1024), matrix=m)
    assert (d.tier, d.resolution) == (Tier.EDGE, 1024)
    assert "busy" not in d.chosen.why  # the edge is idle
    cloud = next(a for a in d.alternatives if a.offer == CLOUD_1024)
    assert cloud.predicted_s == pytest.approx(1.6)
    assert "the cloud is 50% busy with other work: predicted 2x slower" in cloud.why


def test_prefer_energy_picks_the_least_device_energy() -> None:
    energy = {Tier.DEVICE: 4.0, Tier.EDGE: 0.6, Tier.CLOUD: 0.9}
    d = route(SLA(min_resolution=1024, prefer=Prefer.ENERGY), energy_j=energy)
    assert (d.tier, d.resolution, d.energy_j) == (Tier.EDGE, 1024, 0.6)


def test_an_energy_weight_prices_joules_in_seconds_when_ranking_by_latency() -> None:
    energy = {Tier.DEVICE: 4.0, Tier.EDGE: 0.5, Tier.CLOUD: 3.0}
    plain = route(SLA(min_resolution=1024), energy_j=energy)
    assert plain.tier is Tier.CLOUD  # 0.8 s < 1.2 s: the weight is 0 on mains power
    # at 0.2 s/J the cloud costs 0.8 + 0.6 = 1.4 "s", the edge 1.2 + 0.1 = 1.3
    weighed = route(SLA(min_resolution=1024), energy_j=energy, energy_weight=0.2)
    assert weighed.tier is Tier.EDGE and weighed.predicted_s == 1.2  # the prediction is still seconds
    with pytest.raises(InvalidInputError, match="energy_weight"):
        route(SLA(min_resolution=1024), energy_j=energy, energy_weight=-1.0)


def test_unmeetable_sla_without_offline_ok_names_the_best_offer() -> None:
    with pytest.raises(SLAUnmetError) as info:
        route(SLA(max_latency_s=1.0, min_resolution=2048))
    err = info.value
    assert isinstance(err, UserError)
    # in time but too small: the best of those is the cloud's refined 1024 (0.8 s), not 2048 (2 s)
    assert err.best.offer == CLOUD_1024
    message = str(err)
    assert "cloud" in message and "refined" in message and "0.8 s" in message


def test_unmeetable_latency_names_the_fastest_offer() -> None:
    with pytest.raises(SLAUnmetError) as info:
        route(SLA(max_latency_s=0.1))
    assert info.value.best.offer == DEVICE_256
    assert "device" in str(info.value) and "0.4 s" in str(info.value)


def test_realtime_stream_stays_on_the_device_even_when_the_cloud_is_faster() -> None:
    m = TaskResourceMatrix({"realtime_stream": {"device": 0.05, "cloud": 0.01}})
    offers = [Offer(Tier.DEVICE, "full"), Offer(Tier.CLOUD, "full")]
    d = choose(TaskKind.REALTIME_STREAM, SLA(), m, RULES, True, offers)
    assert d.tier is Tier.DEVICE
    cloud = next(a for a in d.alternatives if a.offer.tier is Tier.CLOUD)
    assert not cloud.feasible and "forced to the device" in cloud.why


def test_text_min_quality_picks_the_full_model_over_early_exit() -> None:
    m = TaskResourceMatrix({"text_short": {"device": 0.3, "edge": 0.6}})
    offers = [Offer(Tier.DEVICE, "early_exit"), Offer(Tier.EDGE, "full")]
    fast = choose(TaskKind.TEXT_SHORT, SLA(), m, RULES, True, offers)
    full = choose(TaskKind.TEXT_SHORT, SLA(min_quality="full"), m, RULES, True, offers)
    assert (fast.tier, fast.quality) == (Tier.DEVICE, "early_exit")
    assert (full.tier, full.quality) == (Tier.EDGE, "full")
    offline = choose(TaskKind.TEXT_SHORT, SLA(min_quality="full", offline_ok=True), m, RULES, False, offers)
    assert (offline.quality, offline.degraded) == ("early_exit", True)


def test_min_quality_of_the_wrong_ladder_names_the_field() -> None:
    with pytest.raises(SLAFieldError, match="min_quality") as info:
        route(SLA(min_quality="full"))
    assert info.value.field == "min_quality"


def test_excluded_tier_is_never_chosen() -> None:
    rules = RoutingRules.from_dict({"excluded": {"image_1024": ["cloud"]}})
    d = choose(TaskKind.IMAGE_1024, SLA(min_resolution=1024), image_matrix(), rules, True, IMAGE_OFFERS)
    assert d.tier is Tier.EDGE
    assert any("excluded" in a.why for a in d.alternatives if a.offer.tier is Tier.CLOUD)


def test_nothing_feasible_is_a_recoverable_tier_error() -> None:
    rules = RoutingRules.from_dict({"forced": {"image_1024": "cloud"}})
    with pytest.raises(TierUnavailableError, match="no network"):
        choose(TaskKind.IMAGE_1024, SLA(offline_ok=True), image_matrix(), rules, False, IMAGE_OFFERS)


def test_an_offer_without_any_estimate_is_infeasible() -> None:
    m = TaskResourceMatrix({"image_512": {"device": 1.5}})
    d = choose(TaskKind.IMAGE_512, SLA(), m, RULES, True, [DEVICE_512, CLOUD_2048])
    assert d.tier is Tier.DEVICE
    assert "no latency known" in d.alternatives[-1].why


def test_decision_to_dict_reports_every_alternative() -> None:
    d = route(SLA(min_resolution=1024))
    report = d.to_dict()
    assert report["tier"] == "cloud" and report["degraded"] is False
    assert len(report["alternatives"]) == len(IMAGE_OFFERS)
    assert sum(a["chosen"] for a in report["alternatives"]) == 1


# --- fallbacks ------------------------------------------------------------------------------------


def test_fallbacks_skip_the_failed_tier_and_respect_the_sla() -> None:
    d = route(SLA(max_latency_s=2.0, min_resolution=1024))
    assert d.tier is Tier.CLOUD
    nxt = fallbacks(d)
    assert [a.offer for a in nxt] == [EDGE_1024]  # cloud 2048 is on the failed tier; 512s miss the SLA
    assert within_budget(nxt, 0.5, d.sla) == nxt  # 1.2 s still fits in 1.5 s
    assert within_budget(nxt, 1.0, d.sla) == ()  # 1.2 s does not fit in 1.0 s
    assert fallbacks(d, elapsed_s=1.0) == ()


def test_fallbacks_with_offline_ok_include_degraded_offers() -> None:
    d = route(SLA(min_resolution=1024, offline_ok=True, prefer=Prefer.QUALITY))
    assert (d.tier, d.resolution) == (Tier.CLOUD, 2048)
    nxt = fallbacks(d)
    assert nxt[0].offer == EDGE_1024
    assert {a.offer for a in nxt[1:]} == {DEVICE_256, DEVICE_512, IMAGE_OFFERS[2]}
    assert within_budget(nxt, 100.0, SLA()) == nxt  # no max_latency: everything fits


def test_within_budget_rejects_a_bad_elapsed_time() -> None:
    with pytest.raises(InvalidInputError, match="elapsed_s"):
        within_budget((), -1.0, SLA(max_latency_s=1.0))


# --- parsing the SLA ------------------------------------------------------------------------------


def test_parse_reads_the_request_fields() -> None:
    sla = SLA.parse({"max_latency": 2, "min_resolution": 1024, "offline_ok": True, "prefer": "quality"})
    assert sla == SLA(max_latency_s=2.0, min_resolution=1024, offline_ok=True, prefer=Prefer.QUALITY)
    assert SLA.parse(None) == SLA()
    assert SLA.parse({"min_quality": "early_exit"}).min_quality == "early_exit"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_latency": -1}, "max_latency"),
        ({"max_latency": 0}, "max_latency"),
        ({"max_latency": math.nan}, "max_latency"),
        ({"max_latency": "fast"}, "max_latency"),
        ({"min_resolution": 768}, "min_resolution"),
        ({"min_resolution": "1024"}, "min_resolution"),
        ({"min_quality": "ultra"}, "min_quality"),
        ({"offline_ok": "yes"}, "offline_ok"),
        ({"prefer": "cheap"}, "prefer"),
        ({"deadline": 3}, "deadline"),
        ({"max_latency": 1, "max_latency_s": 1}, "max_latency_s"),
    ],
)
def test_bad_sla_fields_are_invalid_input_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        SLA.parse(body)
    assert isinstance(info.value, SLAFieldError) and info.value.field == field
    assert f"sla.{field}" in str(info.value)


# --- the rules as data ----------------------------------------------------------------------------


def test_rules_default_forces_realtime_stream_to_the_device() -> None:
    assert RULES.allowed(TaskKind.REALTIME_STREAM) == {Tier.DEVICE}
    assert RULES.allowed(TaskKind.CLIP) == set(Tier)


def test_rules_from_dict_merge_over_defaults_and_round_trip() -> None:
    rules = RoutingRules.from_dict({"forced": {"realtime_stream": None, "crack_detect": "edge"},
                                    "excluded": {"text_long": ["device"]}})
    assert rules.allowed(TaskKind.REALTIME_STREAM) == set(Tier)
    assert rules.allowed(TaskKind.CRACK_DETECT) == {Tier.EDGE}
    assert rules.allowed(TaskKind.TEXT_LONG) == {Tier.EDGE, Tier.CLOUD}
    assert RoutingRules.from_dict(rules.to_dict()) == rules


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"forced": {"video": "device"}}, "'video'"),
        ({"forced": {"clip": "fog"}}, "'fog'"),
        ({"excluded": {"clip": ["device", "edge", "cloud"]}}, "every tier"),
        ({"excluded": {"clip": "cloud"}}, "list of tiers"),
        ({"forced": {"clip": "edge"}, "excluded": {"clip": ["edge"]}}, "forced and excluded"),
        ({"force": {}}, "unknown key"),
    ],
)
def test_bad_rules_are_config_errors(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RoutingRules.from_dict(data)
