"""`tierflow bench route`: the trace, the policies and the figures, on real node processes."""

from __future__ import annotations

import pytest

from tierflow.bench.route import MIX, Outcome, Segment, oracle_of, run_route_bench, summarize, targets
from tierflow.errors import ConfigError


def outcome(met: bool, quality: float, energy: float, *, ok: bool = True, offline_ok: bool = False
            ) -> Outcome:
    tier, error = ("edge", None) if ok else (None, "503")
    return Outcome(ok, met, False, quality, energy, 0.1, tier, offline_ok, error)


def test_segments_parse_and_bad_ones_name_the_problem() -> None:
    assert Segment.parse("4g:metered") == Segment("4g", metered=True)
    assert Segment.parse("offline") == Segment("offline")
    with pytest.raises(ConfigError, match="PROFILE:metered"):
        Segment.parse("4g:cheap")
    with pytest.raises(ConfigError):
        Segment.parse("carrier-pigeon")


def test_the_oracle_takes_the_met_sla_then_quality_then_the_least_energy() -> None:
    missed = outcome(False, 1.0, 0.1)
    small = outcome(True, 0.25, 0.2)
    big_dear = outcome(True, 1.0, 4.0)
    big_cheap = outcome(True, 1.0, 3.0)
    assert oracle_of([missed, small, big_dear, big_cheap]) is big_cheap
    assert oracle_of([missed, small]) is small


def test_the_summary_counts_failures_where_offline_ok_allowed_an_answer() -> None:
    rows = [outcome(True, 1.0, 1.0), outcome(False, 0.0, 0.1, ok=False, offline_ok=True),
            outcome(False, 0.0, 0.1, ok=False)]
    figures = summarize(rows)
    assert figures["failed_requests"] == 2 and figures["failed_where_offline_ok"] == 1
    assert figures["sla_met_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert figures["device_energy_j"] == pytest.approx(1.2)


@pytest.mark.slow
def test_the_router_serves_offline_what_pinned_remote_tiers_cannot() -> None:
    trace = [Segment("wifi"), Segment("offline"), Segment("wifi")]
    result = run_route_bench(trace, requests_per_segment=len(MIX))
    policies = result["policies"]
    assert set(policies) == {"tierflow", "always-device", "always-edge", "always-cloud", "oracle"}
    offline = [r for r in result["requests_log"] if r["network"] == "offline"]
    assert offline and all(r["always-cloud"]["error"] == "503 TierUnavailable" for r in offline)
    answered = [r for r in offline if r["tierflow"]["error"] is None]
    assert answered and all(r["tierflow"]["tier"] == "device" for r in answered)
    assert policies["tierflow"]["failed_where_offline_ok"] == 0
    back = [r for r in result["requests_log"][2 * len(MIX):] if r["request"] == "image-512"]
    assert back and back[0]["always-edge"]["met"], back  # back on wifi, the edge makes images again
    # the oracle is the best static outcome per request: the router can match it, not beat it on SLA
    assert policies["oracle"]["sla_met_rate"] >= max(policies[p]["sla_met_rate"] for p in
                                                     ("always-device", "always-edge", "always-cloud"))
    figures = targets(policies)
    assert figures["sla_vs_oracle"] is not None and figures["sla_vs_oracle"] > 0


def test_the_best_static_policy_meets_the_most_slas_and_is_compared_on_energy() -> None:
    def policy(rate: float, joules: float) -> dict[str, float]:
        return {"sla_met_rate": rate, "device_energy_j": joules, "failed_where_offline_ok": 0}

    policies = {
        "tierflow": policy(0.8, 28.0), "always-device": policy(0.75, 40.0), "always-edge": policy(0.4, 10.0),
        "always-cloud": policy(0.4, 11.0), "oracle": policy(0.8, 25.0),
    }
    figures = targets(policies)
    assert figures["best_static"] == "always-device"  # the most SLAs met, whatever the others spend
    assert figures["energy_vs_best_static"] == pytest.approx(0.7)
    assert figures["sla_vs_best_static"] == pytest.approx(0.05)
    assert figures["energy_vs_least_energy_static_at_equal_or_lower_sla"] == pytest.approx(2.8)
    assert figures["battery_life_vs_always_device"] == pytest.approx(40 / 28, abs=1e-3)
