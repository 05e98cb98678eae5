"""Live estimates: link bandwidth and RTT from real transfers, and the device's load and battery.

This is the I/O side of planning: estimators fold observations in as they come,
and :func:`device_snapshot` / :class:`SnapshotSource` freeze the current state into
an immutable :class:`~tierflow.planner.snapshot.Snapshot` for the pure planner.

A transfer observation is ``(bytes, seconds)`` where ``seconds`` runs from the
first byte sent until the receiver acknowledged the last one (what a sender can
time without synchronised clocks): seconds ~= RTT + bytes / bandwidth. Small
transfers (under ``probe_bytes``) and explicit pings estimate the RTT; larger ones
give a bandwidth sample ``bytes / (seconds - RTT)``. Each figure is an EWMA.

A change detector (two-sided CUSUM on the log ratio of each sample to the
estimate) notices a step change -- a handover from Wi-Fi to 3G -- within a few
samples; the estimate then restarts from the recent samples instead of drifting
over for tens of observations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tierflow.errors import InvalidInputError
from tierflow.planner.graph import UnitGraph
from tierflow.planner.power import DevicePower
from tierflow.planner.profile import TierProfile
from tierflow.planner.snapshot import LinkState, Snapshot, TierState
from tierflow.types.links import Direction
from tierflow.types.quant import QuantMode


@dataclass
class Ewma:
    """Exponentially weighted moving average; the first sample sets it."""

    alpha: float = 0.3
    value: float | None = None
    samples: int = 0

    def update(self, x: float) -> float:
        self.value = x if self.value is None else self.alpha * x + (1.0 - self.alpha) * self.value
        self.samples += 1
        return self.value

    def reset(self, x: float) -> None:
        self.value = x
        self.samples = 1


@dataclass
class ChangeDetector:
    """Two-sided CUSUM on log(sample / estimate): fires after a sustained shift.

    ``drift`` is the log-ratio tolerated as noise per sample (0.1 ~ 10 %), ``threshold``
    the accumulated excess that counts as a change (1.0 ~ two samples off by 2x, or
    five off by 30 %).
    """

    drift: float = 0.1
    threshold: float = 1.0
    high: float = 0.0
    low: float = 0.0

    def update(self, sample: float, estimate: float) -> bool:
        if sample <= 0.0 or estimate <= 0.0:
            return False
        r = math.log(sample / estimate)
        self.high = max(0.0, self.high + r - self.drift)
        self.low = max(0.0, self.low - r - self.drift)
        if self.high > self.threshold or self.low > self.threshold:
            self.high = self.low = 0.0
            return True
        return False


@dataclass
class _Figure:
    """One estimated figure: EWMA + change detector."""

    ewma: Ewma
    detector: ChangeDetector = field(default_factory=ChangeDetector)
    changes: int = 0

    @property
    def value(self) -> float | None:
        return self.ewma.value

    def observe(self, x: float) -> bool:
        if self.ewma.value is not None and self.detector.update(x, self.ewma.value):
            self.ewma.reset(x)
            self.changes += 1
            return True
        self.ewma.update(x)
        return False


class LinkEstimator:
    """Bandwidth (each direction) and RTT of one link, from what crossed it."""

    def __init__(
        self,
        a: str,
        b: str,
        *,
        up_bps: float | None = None,
        down_bps: float | None = None,
        rtt_s: float | None = None,
        overhead_s: float = 0.0,
        alpha: float = 0.3,
        probe_bytes: int = 2048,
    ) -> None:
        self.a, self.b = a, b
        self.overhead_s = overhead_s
        self.probe_bytes = probe_bytes
        self.up = _Figure(Ewma(alpha, up_bps))
        self.down = _Figure(Ewma(alpha, down_bps))
        self.rtt = _Figure(Ewma(alpha, rtt_s))
        self.last_change_s: float | None = None

    @classmethod
    def from_state(cls, link: LinkState, alpha: float = 0.3) -> LinkEstimator:
        return cls(link.a, link.b, up_bps=link.up_bps, down_bps=link.down_bps, rtt_s=link.rtt_s,
                   overhead_s=link.overhead_s, alpha=alpha)

    @property
    def changes(self) -> int:
        return self.up.changes + self.down.changes + self.rtt.changes

    def observe_rtt(self, seconds: float, now: float | None = None) -> None:
        """A ping (or a tiny request and its reply) took ``seconds``."""
        if seconds < 0 or not math.isfinite(seconds):
            raise InvalidInputError(f"an RTT must be a finite number >= 0, got {seconds}")
        if self.rtt.observe(seconds):
            self.last_change_s = time.monotonic() if now is None else now

    def observe_transfer(
        self, nbytes: int, seconds: float, direction: Direction = Direction.UP, now: float | None = None
    ) -> None:
        """``nbytes`` went ``direction`` (up = a -> b), acknowledged ``seconds`` after sending began."""
        try:
            direction = Direction(direction)
        except ValueError:
            raise InvalidInputError(f"direction must be 'up' or 'down', got {direction!r}") from None
        if nbytes < 0 or seconds <= 0 or not math.isfinite(seconds):
            raise InvalidInputError("a transfer needs bytes >= 0 and a finite duration > 0")
        figure = self.up if direction is Direction.UP else self.down
        bw = figure.value
        if nbytes < self.probe_bytes:
            sample = seconds - (nbytes * 8.0 / bw if bw else 0.0)
            self.observe_rtt(max(sample, 0.0), now)
            return
        rtt = self.rtt.value or 0.0
        moving = seconds - rtt
        if moving <= 0.1 * seconds:
            # (almost) all of it was round trip: the RTT estimate is too high or the link sped up a lot
            self.observe_rtt(seconds, now)
            return
        if figure.observe(nbytes * 8.0 / moving):
            self.last_change_s = time.monotonic() if now is None else now

    def state(self) -> LinkState:
        """The current estimate (raises if a figure has never been seen nor given)."""
        up, down, rtt = self.up.value, self.down.value, self.rtt.value
        if up is None or down is None or rtt is None:
            raise InvalidInputError(f"link {self.a}-{self.b} has no estimate yet (give initial figures)")
        return LinkState(a=self.a, b=self.b, up_bps=up, down_bps=down, rtt_s=rtt, overhead_s=self.overhead_s)


# --- the device ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceState:
    load: float  # share of our threads' CPU time that other work takes (0..1): the planner's "load"
    others: float  # share of all cores other processes used
    battery: float | None  # 0..1, None = no battery or on mains power


class DeviceMonitor:
    """CPU contention from other work and the battery level, from psutil.

    Other processes use a share ``others`` of the machine's ``cpus`` cores, leaving
    ``free = cpus * (1 - others)`` cores; a stage running ``threads`` threads then gets
    ``min(1, free / threads)`` of the speed it would have alone, so its load is
    ``1 - min(1, free / threads)``: zero while every thread of ours finds an idle core.
    """

    def __init__(self, threads: int = 1) -> None:
        import psutil

        self.threads = max(threads, 1)
        self._psutil = psutil
        self._me = psutil.Process()
        psutil.cpu_percent(interval=None)  # start both counters; the first real read covers since now
        self._me.cpu_percent(interval=None)
        self._cpus = psutil.cpu_count() or 1

    def read(self, window_s: float = 0.0) -> DeviceState:
        """Others' CPU share since the last read (system busy minus this process), and the battery.

        With ``window_s`` > 0 the share is measured over that many seconds from now instead.
        """
        if window_s > 0.0:
            self._psutil.cpu_percent(interval=None)
            self._me.cpu_percent(interval=None)
            time.sleep(window_s)
        total = self._psutil.cpu_percent(interval=None) / 100.0
        mine = self._me.cpu_percent(interval=None) / 100.0 / self._cpus
        battery = None
        try:
            sensor = self._psutil.sensors_battery()
        except (AttributeError, NotImplementedError, OSError):
            sensor = None
        if sensor is not None and not sensor.power_plugged:
            battery = min(max(sensor.percent / 100.0, 0.0), 1.0)
        others = min(max(total - mine, 0.0), 1.0)
        free = self._cpus * (1.0 - others)
        load = 1.0 - min(1.0, free / self.threads)
        return DeviceState(load=min(max(load, 0.0), 1.0), others=others, battery=battery)


# --- composing a snapshot ------------------------------------------------------------------


@dataclass
class SnapshotSource:
    """Keeps the live inputs of planning and freezes them into snapshots.

    ``profiles`` maps each tier (in order, device first) to its profile; ``links`` are
    the link estimators; ``loads`` are the other tiers' loads as they report them.
    """

    graph: UnitGraph
    profiles: Mapping[str, TierProfile]
    links: Sequence[LinkEstimator]
    monitor: DeviceMonitor | None = None
    compression: QuantMode = QuantMode.INT8
    energy_weight: float = 0.0
    power: DevicePower = field(default_factory=DevicePower)
    privacy: bool = False
    memory: Mapping[str, float | None] = field(default_factory=dict)
    loads: dict[str, float] = field(default_factory=dict)
    unavailable: set[str] = field(default_factory=set)
    battery: float | None = None
    clock: Callable[[], float] = time.monotonic

    def snapshot(self) -> Snapshot:
        device = next(iter(self.profiles))
        battery = self.battery
        loads = dict(self.loads)
        if self.monitor is not None:
            state = self.monitor.read()
            loads[device] = state.load
            battery = state.battery if state.battery is not None else battery
        tiers = tuple(
            TierState(name=name, available=name not in self.unavailable, unit_s=dict(p.unit_s),
                      profile_load=p.load, load=loads.get(name, 0.0), memory_bytes=self.memory.get(name))
            for name, p in self.profiles.items()
        )
        return Snapshot(
            time_s=self.clock(), tiers=tiers, links=tuple(e.state() for e in self.links),
            compression=self.compression, energy_weight=self.energy_weight, battery=battery,
            power=self.power, privacy=self.privacy,
        )
