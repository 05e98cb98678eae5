"""Network links between tiers: their figures and the named profiles.

A :class:`LinkProfile` describes the link between two tiers in both directions:
*up* is from the side that connects (the device, or the lower tier) to the side
it connects to, *down* is the way back. The named profiles (``offline``, ``2g``,
``3g``, ``4g``, ``wifi``, ``5g``, ``datacenter``) and where their figures come
from are documented in ``docs/NETWORK.md``. The emulator that applies them is
:mod:`tierflow.transport.linkemu`; the planner reads them as estimates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tierflow.errors import ConfigError, UserError

MBIT = 1_000_000.0
MS = 0.001


class Direction(StrEnum):
    """Which way bytes travel: ``up`` = connecting side -> upstream, ``down`` = the way back."""

    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class DirectionParams:
    """What one direction of a link does to the bytes that cross it."""

    bandwidth_bps: float  # 0 = stalled (outage), inf = unlimited
    delay_s: float  # one-way propagation delay = RTT / 2
    jitter_s: float  # standard deviation of the one-way delay
    loss: float  # probability that one MSS-sized packet is lost


class LinkProfile(BaseModel):
    """A network link between two tiers: bandwidth per direction, RTT, jitter and loss.

    ``loss`` is the per-packet loss probability in each direction (see
    docs/NETWORK.md for how a reliable byte stream feels it). A bandwidth of
    0 stalls that direction (an outage: bytes are held); ``offline`` refuses
    connections outright.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    down_bps: float = Field(ge=0.0, description="downlink bandwidth in bits/s (upstream -> connecting side)")
    up_bps: float = Field(ge=0.0, description="uplink bandwidth in bits/s (connecting side -> upstream)")
    rtt_s: float = Field(ge=0.0, le=60.0, description="round-trip time in seconds; each way gets half")
    jitter_s: float = Field(default=0.0, ge=0.0, le=10.0, description="std. dev. of each one-way delay")
    loss: float = Field(default=0.0, ge=0.0, lt=1.0, description="per-packet loss probability, each way")
    offline: bool = Field(default=False, description="refuse connections and reset open ones")

    def direction(self, which: Direction) -> DirectionParams:
        """The parameters one direction of the link applies."""
        bandwidth = self.up_bps if which is Direction.UP else self.down_bps
        return DirectionParams(bandwidth, self.rtt_s / 2.0, self.jitter_s, self.loss)

    def replace(self, **changes: Any) -> LinkProfile:
        """A copy with some fields changed, validated (a bad value raises :class:`ConfigError`)."""
        data = self.model_dump()
        unknown = set(changes) - set(data)
        if unknown:
            raise ConfigError(f"unknown link profile field(s): {', '.join(sorted(unknown))}")
        data.update(changes)
        try:
            return LinkProfile.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"invalid link profile {field}={err.get('input')!r}: {err['msg']}") from None

    def scaled(self, *, bandwidth: float = 1.0, rtt: float = 1.0, loss: float = 1.0) -> LinkProfile:
        """A copy with bandwidth, RTT (and jitter) and loss multiplied, e.g. ``4g`` at half bandwidth."""
        for label, factor in (("bandwidth", bandwidth), ("rtt", rtt), ("loss", loss)):
            if not (factor >= 0.0 and math.isfinite(factor)):
                raise ConfigError(f"{label} scale must be a finite number >= 0, got {factor}")
        parts = [f"{label} x{factor:g}" for label, factor in (("bw", bandwidth), ("rtt", rtt), ("loss", loss))
                 if factor != 1.0]
        name = f"{self.name}[{', '.join(parts)}]" if parts else self.name
        return self.replace(
            name=name,
            down_bps=self.down_bps * bandwidth,
            up_bps=self.up_bps * bandwidth,
            rtt_s=self.rtt_s * rtt,
            jitter_s=self.jitter_s * rtt,
            loss=min(self.loss * loss, 0.99),
        )

    def describe(self) -> str:
        """One line a person can read: ``4g: down 30 Mbit/s, up 7.5 Mbit/s, RTT 50 ms ±5 ms, loss 0.1 %``."""
        if self.offline:
            return f"{self.name}: offline (connections refused)"
        return (
            f"{self.name}: down {format_bps(self.down_bps)}, up {format_bps(self.up_bps)}, "
            f"RTT {self.rtt_s / MS:g} ms ±{self.jitter_s / MS:g} ms, loss {self.loss * 100:g} %"
        )


def format_bps(bps: float) -> str:
    """``30 Mbit/s``, ``240 kbit/s``, ``stalled`` or ``unlimited``."""
    if bps == 0:
        return "stalled"
    if math.isinf(bps):
        return "unlimited"
    if bps >= 1e9:
        return f"{bps / 1e9:.3g} Gbit/s"
    if bps >= 1e6:
        return f"{bps / 1e6:.3g} Mbit/s"
    return f"{bps / 1e3:.3g} kbit/s"


def _p(name: str, down_mbps: float, up_mbps: float, rtt_ms: float, jitter_ms: float,
       loss: float) -> LinkProfile:
    return LinkProfile(name=name, down_bps=down_mbps * MBIT, up_bps=up_mbps * MBIT, rtt_s=rtt_ms * MS,
                       jitter_s=jitter_ms * MS, loss=loss)


# Representative figures; docs/NETWORK.md gives the source of each.
PROFILES: Mapping[str, LinkProfile] = MappingProxyType({
    "offline": LinkProfile(name="offline", down_bps=0.0, up_bps=0.0, rtt_s=0.0, offline=True),
    "2g": _p("2g", 0.24, 0.2, 840, 60, 0.01),
    "3g": _p("3g", 1.6, 0.768, 150, 15, 0.005),
    "4g": _p("4g", 30, 7.5, 50, 5, 0.001),
    "wifi": _p("wifi", 50, 10, 20, 3, 0.001),
    "5g": _p("5g", 130, 15, 20, 2, 0.0005),
    "datacenter": _p("datacenter", 1000, 1000, 0.5, 0.05, 0.0),
})

# The link between an edge box and the cloud when nothing better is known: metro fibre from a base
# station or factory to a cloud region (an assumption; docs/PLANNER.md). The planner (``links_for``),
# `tierflow up` and the benchmarks (``node/deploy.py``) all use this one profile.
BACKHAUL = _p("backhaul", 1000, 1000, 10, 1, 0.0)


def chain(first: LinkProfile, then: LinkProfile = BACKHAUL) -> LinkProfile:
    """``first`` followed by ``then`` without stopping in between (the device's access link, then the
    backhaul to the cloud): the slower bandwidth each way, the RTTs added, independent jitter and loss
    combined; offline if either is."""
    name = f"{first.name}+{then.name}"
    rtt = first.rtt_s + then.rtt_s
    if first.offline or then.offline:
        return LinkProfile(name=name, down_bps=0.0, up_bps=0.0, rtt_s=rtt, offline=True)
    return LinkProfile(
        name=name,
        down_bps=min(first.down_bps, then.down_bps),
        up_bps=min(first.up_bps, then.up_bps),
        rtt_s=rtt,
        jitter_s=math.hypot(first.jitter_s, then.jitter_s),
        loss=1.0 - (1.0 - first.loss) * (1.0 - then.loss),
    )


_ALIASES = {"wi-fi": "wifi", "dc": "datacenter", "lte": "4g", "edge": "2g"}


def get_profile(name: str, error: type[UserError] = ConfigError, where: str | None = None) -> LinkProfile:
    """The named profile (case-insensitive), ``backhaul``, or ``a+b`` for ``chain(a, b)`` (what
    :attr:`LinkProfile.name` of a chain reads); an unknown name raises ``error`` (a setting's
    :class:`ConfigError` by default; a request's InvalidInputError), its message led by ``where``."""
    if "+" in name:
        first, _, then = name.partition("+")
        return chain(get_profile(first, error, where), get_profile(then, error, where))
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key == BACKHAUL.name:
        return BACKHAUL
    try:
        return PROFILES[key]
    except KeyError:
        lead = f"{where}: " if where else ""
        raise error(f"{lead}unknown link profile {name!r}; known: {', '.join(PROFILES)}") from None


def transfer_s(nbytes: float, bps: float) -> float:
    """Seconds to push ``nbytes`` through ``bps`` bits/s: the one place bytes become link time.

    An unlimited link (``inf``) takes no time; a stalled one (0) takes forever.
    """
    if math.isinf(bps):
        return 0.0
    if bps <= 0.0:
        return math.inf if nbytes > 0 else 0.0
    return nbytes * 8.0 / bps
