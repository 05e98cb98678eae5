"""The immutable snapshot of measurements every planning decision is a pure function of.

A :class:`Snapshot` holds, at one moment: each tier's profiled compute time per
unit and its current load, the link estimates between tiers, the device's power
model and battery level, the weight of energy in the score, the frame format's
compression and the privacy rule. Together with a :class:`~tierflow.planner.graph.UnitGraph`
it is everything the planner reads, so a decision can be recomputed from a JSON
trace of snapshots (:class:`Trace`).

Tiers are ordered from the device (always first: requests start and results end
there) towards the cloud; data flows forward along that order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tierflow.errors import ConfigError
from tierflow.planner.graph import UnitGraph
from tierflow.planner.power import DevicePower
from tierflow.types.links import BACKHAUL, LinkProfile, chain
from tierflow.types.quant import QuantMode
from tierflow.types.tiers import Tier

MAX_LOAD = 0.9  # a load above this counts as this: compute scales by at most 10x


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TierState(_Frozen):
    """One tier as the planner sees it now."""

    name: str = Field(min_length=1)
    available: bool = True
    unit_s: dict[str, float] = Field(description="profiled compute seconds per unit on this tier")
    # load: the share of this tier's compute other work takes (see estimate.DeviceMonitor)
    profile_load: float = Field(default=0.0, ge=0.0, le=1.0, description="load while it was profiled")
    load: float = Field(default=0.0, ge=0.0, le=1.0, description="load now")
    memory_bytes: float | None = Field(default=None, gt=0.0, description="memory for a stage; None = ample")

    def load_factor(self) -> float:
        """How much slower than profiled this tier runs now: (1 - load_then) / (1 - load_now)."""
        then = min(self.profile_load, MAX_LOAD)
        now = min(self.load, MAX_LOAD)
        return (1.0 - then) / (1.0 - now)


class LinkState(_Frozen):
    """The link between tiers ``a`` (nearer the device) and ``b``: ``up`` is a -> b."""

    a: str
    b: str
    up_bps: float = Field(ge=0.0, description="bits/s from a to b (0 = down)")
    down_bps: float = Field(ge=0.0, description="bits/s from b to a (0 = down)")
    rtt_s: float = Field(ge=0.0)
    overhead_s: float = Field(default=0.0, ge=0.0, description="fixed cost per use (serialisation, RPC)")

    @property
    def usable(self) -> bool:
        return self.up_bps > 0.0 and self.down_bps > 0.0 and math.isfinite(self.rtt_s)

    @classmethod
    def from_profile(cls, a: str, b: str, profile: LinkProfile, overhead_s: float = 0.0) -> LinkState:
        if profile.offline:
            return cls(a=a, b=b, up_bps=0.0, down_bps=0.0, rtt_s=profile.rtt_s, overhead_s=overhead_s)
        return cls(a=a, b=b, up_bps=profile.up_bps, down_bps=profile.down_bps, rtt_s=profile.rtt_s,
                   overhead_s=overhead_s)


class Snapshot(_Frozen):
    """Everything one planning decision reads."""

    time_s: float = 0.0
    tiers: tuple[TierState, ...]
    links: tuple[LinkState, ...]
    compression: QuantMode = QuantMode.INT8
    energy_weight: float = Field(default=0.0, ge=0.0, description="w in score = latency + w * energy (s/J)")
    battery: float | None = Field(default=None, ge=0.0, le=1.0, description="0..1; None = mains / unknown")
    power: DevicePower = DevicePower()
    privacy: bool = Field(default=False, description="the model's inputs may not leave the device")

    @model_validator(mode="after")
    def _consistent(self) -> Snapshot:
        names = [t.name for t in self.tiers]
        if not names or names[0] != Tier.DEVICE:
            raise ValueError("the first tier must be the device")
        if len(set(names)) != len(names):
            raise ValueError("tier names must be unique")
        for link in self.links:
            if link.a not in names or link.b not in names:
                raise ValueError(f"link {link.a}-{link.b} names an unknown tier")
            if names.index(link.a) >= names.index(link.b):
                raise ValueError(f"link {link.a}-{link.b}: a must come before b in the tier order")
        return self

    @property
    def tier_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tiers)

    def tier(self, name: str) -> TierState:
        for t in self.tiers:
            if t.name == name:
                return t
        raise ConfigError(f"unknown tier '{name}' (tiers: {', '.join(self.tier_names)})")

    def link(self, a: str, b: str) -> LinkState | None:
        """The link between ``a`` and ``b`` in either order (``None`` if there is none)."""
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link
        return None

    def with_link(self, link: LinkState) -> Snapshot:
        """A copy with the link between ``link.a`` and ``link.b`` replaced (or added)."""
        others = tuple(x for x in self.links if {x.a, x.b} != {link.a, link.b})
        return self.model_copy(update={"links": (*others, link)})

    def with_tier(self, tier: TierState) -> Snapshot:
        """A copy with the tier of the same name replaced."""
        self.tier(tier.name)
        tiers = tuple(tier if t.name == tier.name else t for t in self.tiers)
        return self.model_copy(update={"tiers": tiers})

    def without_tier(self, name: str) -> Snapshot:
        """A copy in which tier ``name`` is unavailable."""
        return self.with_tier(self.tier(name).model_copy(update={"available": False}))


class Trace(_Frozen):
    """A graph and the snapshots seen over time: enough to replay every decision."""

    graph: UnitGraph
    snapshots: tuple[Snapshot, ...]

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(self.model_dump_json(indent=1), encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        p = Path(path)
        try:
            return cls.model_validate_json(p.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read trace {p}: {exc.strerror or exc}") from None
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ConfigError(f"{p}: not a planner trace ({where}: {err['msg']})") from None


def tiers_in_order(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` sorted device -> edge -> cloud (other names after, in the given order)."""
    given = list(dict.fromkeys(names))
    known = [t.value for t in Tier if t in given]
    return tuple(known + [n for n in given if n not in known])


def links_for(
    access: LinkProfile, backhaul: LinkProfile = BACKHAUL, tiers: Iterable[str] = tuple(Tier)
) -> tuple[LinkState, ...]:
    """Links between the tiers when the device reaches the network over ``access``.

    device-edge is the access link; edge-cloud is ``backhaul`` (by default
    :data:`tierflow.types.links.BACKHAUL`); device-cloud goes over the access link and then the
    backhaul (:func:`tierflow.types.links.chain`: the slower of the two bandwidths each way, the
    sum of the RTTs) without stopping at the edge box.
    """
    names = set(tiers)
    links: list[LinkState] = []
    device, edge, cloud = Tier.DEVICE, Tier.EDGE, Tier.CLOUD
    if edge in names:
        links.append(LinkState.from_profile(device, edge, access))
    if edge in names and cloud in names:
        links.append(LinkState.from_profile(edge, cloud, backhaul))
    if cloud in names:
        links.append(LinkState.from_profile(device, cloud, chain(access, backhaul)))
    return tuple(links)
