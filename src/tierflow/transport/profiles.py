"""Trace files for the link emulator (the profiles themselves are :mod:`tierflow.types.links`).

A :class:`LinkTrace` is a CSV file whose rows change bandwidth, RTT and loss
over time; :func:`load_trace` reads one.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from tierflow.errors import ConfigError
from tierflow.types.links import MBIT, MS, LinkProfile

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
