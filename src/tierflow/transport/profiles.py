"""Network link profiles and trace files for the link emulator.

A :class:`LinkProfile` describes the link between two tiers in both
directions: *up* is from the side that connects (the device, or the lower
tier) to the side it connects to, *down* is the way back. The named profiles
(``offline``, ``2g``, ``3g``, ``4g``, ``wifi``, ``5g``, ``datacenter``) and
where their figures come from are documented in ``docs/NETWORK.md``.

A :class:`LinkTrace` is a CSV file whose rows change bandwidth, RTT and loss
over time; :func:`load_trace` reads one.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tierflow.errors import ConfigError

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

_ALIASES = {"wi-fi": "wifi", "dc": "datacenter", "lte": "4g", "edge": "2g"}


def get_profile(name: str) -> LinkProfile:
    """The named profile (case-insensitive); an unknown name raises :class:`ConfigError`."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return PROFILES[key]
    except KeyError:
        raise ConfigError(f"unknown link profile {name!r}; known: {', '.join(PROFILES)}") from None


# --- traces ------------------------------------------------------------------

TRACE_COLUMNS = ("time_s", "down_mbps", "up_mbps", "rtt_ms", "loss")


@dataclass(frozen=True, slots=True)
class TracePoint:
    """One row of a trace: from ``time_s`` on, the link has these figures."""

    time_s: float
    down_bps: float
    up_bps: float
    rtt_s: float
    loss: float

    def apply(self, base: LinkProfile) -> LinkProfile:
        """``base`` with this row's bandwidth, RTT and loss (jitter stays the base's)."""
        return base.replace(down_bps=self.down_bps, up_bps=self.up_bps, rtt_s=self.rtt_s, loss=self.loss,
                            offline=False)


@dataclass(frozen=True, slots=True)
class LinkTrace:
    """Link conditions over time. Before the first row the first row holds; after the last row
    the last row holds, or, with ``loop``, the trace starts over after :attr:`period_s`."""

    points: tuple[TracePoint, ...]
    loop: bool = False

    def __post_init__(self) -> None:
        if not self.points:
            raise ConfigError("a link trace needs at least one row")
        times = [p.time_s for p in self.points]
        if any(b <= a for a, b in zip(times, times[1:], strict=False)):
            raise ConfigError("link trace times must increase strictly")

    @property
    def period_s(self) -> float:
        """How long one pass takes when looping: the last row lasts as long as the gap before it
        (traces are sampled on a grid); a one-row trace never changes."""
        pts = self.points
        if len(pts) == 1:
            return math.inf
        return pts[-1].time_s + (pts[-1].time_s - pts[-2].time_s)

    def index_at(self, t: float) -> int:
        """Index of the row in force ``t`` seconds after the trace started."""
        if self.loop and math.isfinite(self.period_s):
            t = t % self.period_s
        i = bisect.bisect_right([p.time_s for p in self.points], t) - 1
        return max(i, 0)

    def at(self, t: float) -> TracePoint:
        """The row in force ``t`` seconds after the trace started."""
        return self.points[self.index_at(t)]

    def next_change(self, t: float) -> float | None:
        """When (seconds after start) the row in force after ``t`` next changes; ``None`` if never."""
        times = [p.time_s for p in self.points]
        if self.loop and math.isfinite(self.period_s):
            base = math.floor(t / self.period_s) * self.period_s
            local = t - base
            j = bisect.bisect_right(times, local)
            return base + (times[j] if j < len(times) else self.period_s)
        j = bisect.bisect_right(times, t)
        return times[j] if j < len(times) else None


def parse_trace(text: str, *, source: str = "trace", loop: bool = False) -> LinkTrace:
    """Parse trace CSV text: rows ``time_s,down_mbps,up_mbps,rtt_ms,loss``.

    An optional header row naming those columns is allowed, as are blank
    lines and lines starting with ``#``. A bad row raises :class:`ConfigError`
    naming ``source`` and the line.
    """
    points: list[TracePoint] = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if not points and cells[0].lower() == "time_s":
            if tuple(c.lower() for c in cells) != TRACE_COLUMNS:
                raise ConfigError(f"{source}:{lineno}: header must be {','.join(TRACE_COLUMNS)}")
            continue
        if len(cells) != len(TRACE_COLUMNS):
            raise ConfigError(f"{source}:{lineno}: expected {len(TRACE_COLUMNS)} columns "
                              f"({','.join(TRACE_COLUMNS)}), got {len(cells)}")
        try:
            t, down, up, rtt, loss = (float(c) for c in cells)
        except ValueError:
            raise ConfigError(f"{source}:{lineno}: not a number in {','.join(cells)!r}") from None
        if not all(math.isfinite(v) for v in (t, down, up, rtt, loss)):
            raise ConfigError(f"{source}:{lineno}: values must be finite")
        if min(t, down, up, rtt) < 0 or not 0 <= loss < 1:
            raise ConfigError(f"{source}:{lineno}: times, bandwidths and RTT must be >= 0 and loss in [0, 1)")
        if points and t <= points[-1].time_s:
            raise ConfigError(f"{source}:{lineno}: time_s {t:g} does not increase")
        points.append(TracePoint(t, down * MBIT, up * MBIT, rtt * MS, loss))
    if not points:
        raise ConfigError(f"{source}: no rows")
    return LinkTrace(tuple(points), loop=loop)


def load_trace(path: str | Path, *, loop: bool = False) -> LinkTrace:
    """Read a trace CSV file (see :func:`parse_trace`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read trace {p}: {exc.strerror or exc}") from None
    return parse_trace(text, source=str(p), loop=loop)
