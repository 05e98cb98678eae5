"""Link profiles and trace files: values, validation, scaling, trace semantics."""

from __future__ import annotations

import math
from pathlib import Path

import pydantic
import pytest

from tierflow.errors import ConfigError, UserError
from tierflow.transport.profiles import LinkTrace, TracePoint, load_trace, parse_trace
from tierflow.types.links import PROFILES, Direction, LinkProfile, format_bps, get_profile

NAMED = ("offline", "2g", "3g", "4g", "wifi", "5g", "datacenter")


def test_every_named_profile_exists_and_only_offline_is_offline() -> None:
    assert set(NAMED) <= set(PROFILES)
    for name in NAMED:
        p = PROFILES[name]
        assert p.name == name
        assert p.offline == (name == "offline")
        if name != "offline":
            assert p.down_bps > 0 and p.up_bps > 0 and p.rtt_s > 0
            assert 0 <= p.loss < 0.05
            assert p.jitter_s < p.rtt_s


def test_profiles_get_faster_from_2g_to_datacenter() -> None:
    order = [PROFILES[n] for n in ("2g", "3g", "4g", "5g", "datacenter")]
    downs = [p.down_bps for p in order]
    rtts = [p.rtt_s for p in order]
    assert downs == sorted(downs)
    assert rtts == sorted(rtts, reverse=True)
    # Mobile links are asymmetric: more down than up.
    for name in ("3g", "4g", "5g", "wifi"):
        assert PROFILES[name].down_bps > PROFILES[name].up_bps


def test_profiles_are_frozen() -> None:
    p = get_profile("4g")
    with pytest.raises(pydantic.ValidationError):
        p.rtt_s = 1.0  # type: ignore[misc]


def test_get_profile_is_case_insensitive_and_knows_aliases() -> None:
    assert get_profile("4G") is PROFILES["4g"]
    assert get_profile(" Wi-Fi ") is PROFILES["wifi"]
    assert get_profile("lte") is PROFILES["4g"]


def test_unknown_profile_is_a_user_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        get_profile("6g")
    assert isinstance(info.value, UserError)
    msg = str(info.value)
    assert "6g" in msg and "4g" in msg and "datacenter" in msg and "\n" not in msg


def test_direction_splits_rtt_in_half_and_picks_the_bandwidth() -> None:
    p = get_profile("4g")
    up, down = p.direction(Direction.UP), p.direction(Direction.DOWN)
    assert up.bandwidth_bps == p.up_bps and down.bandwidth_bps == p.down_bps
    assert up.delay_s == down.delay_s == pytest.approx(p.rtt_s / 2)
    assert up.loss == down.loss == p.loss
    assert up.jitter_s == p.jitter_s


def test_scaled_halves_bandwidth_and_keeps_the_rest() -> None:
    p = get_profile("4g")
    half = p.scaled(bandwidth=0.5)
    assert half.down_bps == pytest.approx(p.down_bps / 2)
    assert half.up_bps == pytest.approx(p.up_bps / 2)
    assert (half.rtt_s, half.jitter_s, half.loss) == (p.rtt_s, p.jitter_s, p.loss)
    assert half.name == "4g[bw x0.5]"
    assert p.down_bps == get_profile("4g").down_bps  # the original is untouched


def test_scaled_rtt_scales_jitter_and_loss_is_capped() -> None:
    p = get_profile("3g").scaled(rtt=2.0, loss=1000.0)
    assert p.rtt_s == pytest.approx(0.3)
    assert p.jitter_s == pytest.approx(2 * get_profile("3g").jitter_s)
    assert p.loss < 1.0
    assert get_profile("3g").scaled() == get_profile("3g")


@pytest.mark.parametrize("factor", [-1.0, math.inf, math.nan])
def test_scaled_rejects_bad_factors(factor: float) -> None:
    with pytest.raises(ConfigError):
        get_profile("4g").scaled(bandwidth=factor)


def test_replace_validates() -> None:
    p = get_profile("4g")
    assert p.replace(rtt_s=0.08).rtt_s == 0.08
    with pytest.raises(ConfigError, match="loss"):
        p.replace(loss=1.5)
    with pytest.raises(ConfigError, match="up_bps"):
        p.replace(up_bps=-1)
    with pytest.raises(ConfigError, match="unknown"):
        p.replace(colour="red")


def test_describe_is_one_readable_line() -> None:
    line = get_profile("4g").describe()
    assert line == "4g: down 30 Mbit/s, up 7.5 Mbit/s, RTT 50 ms ±5 ms, loss 0.1 %"
    assert "refused" in get_profile("offline").describe()
    assert format_bps(0) == "stalled" and format_bps(math.inf) == "unlimited"
    assert format_bps(240_000) == "240 kbit/s" and format_bps(1e9) == "1 Gbit/s"


def test_a_profile_can_be_built_directly() -> None:
    p = LinkProfile(name="sat", down_bps=50e6, up_bps=5e6, rtt_s=0.6, jitter_s=0.02, loss=0.01)
    assert p.direction(Direction.DOWN).delay_s == pytest.approx(0.3)
    with pytest.raises(pydantic.ValidationError):
        LinkProfile(name="bad", down_bps=1, up_bps=1, rtt_s=0.1, loss=1.0)


# --- traces ------------------------------------------------------------------

TRACE = """\
# a drive through a tunnel
time_s,down_mbps,up_mbps,rtt_ms,loss
0,20,5,50,0.001

1.0,2,0.5,120,0.01
2.0,0,0,120,0
3.0,20,5,50,0.001
"""


def test_parse_trace_reads_rows_in_si_units() -> None:
    tr = parse_trace(TRACE)
    assert len(tr.points) == 4
    first = tr.points[0]
    assert first == TracePoint(0.0, 20e6, 5e6, 0.05, 0.001)
    assert tr.points[2].down_bps == 0.0  # an outage row


def test_trace_holds_the_last_row_by_default() -> None:
    tr = parse_trace(TRACE)
    assert tr.at(0.0).down_bps == 20e6
    assert tr.at(0.999).down_bps == 20e6
    assert tr.at(1.0).down_bps == 2e6
    assert tr.at(2.5).down_bps == 0.0
    assert tr.at(100.0).down_bps == 20e6
    assert tr.next_change(0.5) == 1.0
    assert tr.next_change(3.0) is None


def test_trace_loop_repeats_with_the_last_gap_as_the_last_rows_length() -> None:
    tr = parse_trace(TRACE, loop=True)
    assert tr.period_s == pytest.approx(4.0)
    assert tr.at(3.5).down_bps == 20e6
    assert tr.at(5.2).down_bps == 2e6  # 5.2 % 4 = 1.2
    assert tr.at(6.1).down_bps == 0.0
    assert tr.next_change(3.5) == pytest.approx(4.0)
    assert tr.next_change(4.0) == pytest.approx(5.0)


def test_one_row_trace_never_changes_even_when_looping() -> None:
    tr = parse_trace("0,10,1,30,0\n", loop=True)
    assert math.isinf(tr.period_s)
    assert tr.at(1e6).down_bps == 10e6
    assert tr.next_change(5.0) is None


def test_before_the_first_row_the_first_row_holds() -> None:
    tr = parse_trace("0.5,10,1,30,0\n2,5,1,30,0\n")
    assert tr.at(0.0).down_bps == 10e6


def test_trace_point_applies_to_a_base_profile_keeping_its_jitter() -> None:
    base = get_profile("4g")
    p = parse_trace(TRACE).at(1.5).apply(base)
    assert (p.down_bps, p.up_bps, p.rtt_s, p.loss) == (2e6, 0.5e6, pytest.approx(0.12), 0.01)
    assert p.jitter_s == base.jitter_s


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0,1,1,10\n", "expected 5 columns"),
        ("0,1,x,10,0\n", "not a number"),
        ("0,1,1,10,0\n0,2,2,10,0\n", "does not increase"),
        ("0,1,1,10,1.0\n", "loss"),
        ("0,-1,1,10,0\n", ">= 0"),
        ("0,inf,1,10,0\n", "finite"),
        ("# only a comment\n", "no rows"),
        ("time,down,up,rtt,loss\n0,1,1,1,0\n", "not a number"),
        ("time_s,up_mbps,down_mbps,rtt_ms,loss\n0,1,1,1,0\n", "header"),
    ],
)
def test_bad_traces_name_the_line(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        parse_trace(text, source="t.csv")
    assert str(info.value).startswith("t.csv")


def test_link_trace_rejects_unordered_points() -> None:
    with pytest.raises(ConfigError):
        LinkTrace((TracePoint(1, 1, 1, 0, 0), TracePoint(0, 1, 1, 0, 0)))
    with pytest.raises(ConfigError):
        LinkTrace(())


def test_load_trace_from_a_file(tmp_path: Path) -> None:
    f = tmp_path / "drive.csv"
    f.write_text(TRACE, encoding="utf-8")
    assert load_trace(f).points == parse_trace(TRACE).points
    assert load_trace(f, loop=True).loop
    with pytest.raises(ConfigError, match="cannot read trace"):
        load_trace(tmp_path / "missing.csv")
