"""Energy-aware routing: what the battery and a metered network allow, as data.

The policy (defaults from the seed, every figure configurable, e.g. from YAML)::

    local_only_below_pct: 20        # battery under 20 % (and not charging) -> the device only
    prefer_energy_below_pct: 20     # ... and the least-energy offer among those meeting the SLA
    metered_avoid: [cloud]          # metered network -> the edge (or the device) before the cloud
    energy_weight_s_per_j: 0.1      # the planner's base w in score = latency + w * E
    charging_exempt: true           # a charging device is on mains power: no battery rule applies

:func:`apply` turns policy + battery + metered flag + SLA into the tiers allowed, the tiers to
rank last (``avoid``), the preference to route by, and the planner's energy weight:

    energy_weight = 0                                   no battery, or charging (mains power)
                  = energy_weight_s_per_j               on battery

The planner multiplies that by its own battery factor (:func:`tierflow.planner.power.battery_factor`:
1 at or above 50 %, rising linearly to 4 at 20 %, 10 below), so a joule costs

    effective_energy_weight = energy_weight * battery_factor(level / 100)

seconds in its score; :class:`EnergyOutcome` reports both (pass ``energy_weight`` to the
planner together with the battery level, never the effective one, or the factor counts twice).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from tierflow.errors import ConfigError, InvalidInputError
from tierflow.planner.power import effective_energy_weight
from tierflow.router.matrix import parse_tier
from tierflow.router.sla import SLA
from tierflow.types.tasks import Prefer
from tierflow.types.tiers import Tier


def _percent(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError(f"{what} must be a number in 0..100, got {value!r}")
    if not 0.0 <= value <= 100.0:
        raise InvalidInputError(f"{what} must be in 0..100 (percent), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class BatteryState:
    """The device's battery: ``level`` in percent (0..100) and whether it is charging."""

    level: float
    charging: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", _percent(self.level, "battery.level"))
        if not isinstance(self.charging, bool):
            raise InvalidInputError(f"battery.charging must be true or false, got {self.charging!r}")

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> BatteryState:
        """A client's battery report (``{"level": 57, "charging": false}``); bad input: InvalidInputError."""
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"battery must be an object, got {data!r}")
        unknown = sorted(set(data) - {"level", "charging"})
        if unknown:
            raise InvalidInputError(f"battery.{unknown[0]}: unknown field (known: level, charging)")
        if "level" not in data:
            raise InvalidInputError("battery.level: missing")
        return cls(level=data["level"], charging=data.get("charging", False))


def read_battery() -> BatteryState | None:
    """This machine's battery from ``psutil.sensors_battery()``; None where there is none (or no psutil)."""
    try:
        import psutil

        sensor = psutil.sensors_battery()
    except (ImportError, AttributeError, NotImplementedError, OSError):
        return None
    if sensor is None:
        return None
    level = min(max(float(sensor.percent), 0.0), 100.0)
    return BatteryState(level=level, charging=sensor.power_plugged is True)


def _no_cloud() -> frozenset[Tier]:
    return frozenset({Tier.CLOUD})


@dataclass(frozen=True)
class EnergyPolicy:
    """The energy rules as data (see the module docstring for each field)."""

    local_only_below_pct: float | None = 20.0
    prefer_energy_below_pct: float | None = 20.0
    metered_avoid: frozenset[Tier] = field(default_factory=_no_cloud)
    energy_weight_s_per_j: float = 0.1
    charging_exempt: bool = True

    def __post_init__(self) -> None:
        for name in ("local_only_below_pct", "prefer_energy_below_pct"):
            value = getattr(self, name)
            if value is not None:
                try:
                    object.__setattr__(self, name, _percent(value, f"energy policy {name}"))
                except InvalidInputError as exc:
                    raise ConfigError(str(exc)) from None
        where = "energy policy metered_avoid"
        if isinstance(self.metered_avoid, str):
            raise ConfigError(f"{where}: expected a list of tiers, got {self.metered_avoid!r}")
        avoid = frozenset(parse_tier(t, ConfigError, where) for t in self.metered_avoid)
        if Tier.DEVICE in avoid:
            raise ConfigError("energy policy metered_avoid: the device uses no network and cannot be avoided")
        object.__setattr__(self, "metered_avoid", avoid)
        w = self.energy_weight_s_per_j
        if isinstance(w, bool) or not isinstance(w, int | float) or not (math.isfinite(w) and w >= 0):
            raise ConfigError(f"energy policy energy_weight_s_per_j must be a finite number >= 0, got {w!r}")
        if not isinstance(self.charging_exempt, bool):
            raise ConfigError(
                f"energy policy charging_exempt must be true or false, got {self.charging_exempt!r}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> EnergyPolicy:
        """A policy from a plain dict; missing keys keep their defaults, unknown ones raise ConfigError."""
        data = data or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"energy policy: expected a mapping, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"energy policy: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "local_only_below_pct": self.local_only_below_pct,
            "prefer_energy_below_pct": self.prefer_energy_below_pct,
            "metered_avoid": sorted(t.value for t in self.metered_avoid),
            "energy_weight_s_per_j": self.energy_weight_s_per_j,
            "charging_exempt": self.charging_exempt,
        }


@dataclass(frozen=True)
class EnergyOutcome:
    """What the policy decided for one request (pass ``allowed``, ``avoid`` and ``prefer`` to
    :func:`tierflow.router.sla.choose`, ``energy_weight`` to the planner)."""

    allowed: frozenset[Tier]
    prefer: Prefer
    energy_weight: float  # the planner's base w (s/J); the planner applies its battery factor
    effective_energy_weight: float  # w x battery_factor(level): what a joule costs in the score
    avoid: frozenset[Tier] = frozenset()
    reasons: tuple[str, ...] = ()


def on_battery(policy: EnergyPolicy, battery: BatteryState | None) -> bool:
    """Whether ``policy``'s battery rules apply: a battery that is not charging (or charging, where
    the policy does not exempt it)."""
    return battery is not None and not (battery.charging and policy.charging_exempt)


def apply(policy: EnergyPolicy, battery: BatteryState | None, metered: bool, sla: SLA) -> EnergyOutcome:
    """The tiers allowed and avoided, the preference and the energy weight under ``policy``."""
    allowed = frozenset(Tier)
    prefer = sla.prefer
    avoid: frozenset[Tier] = frozenset()
    reasons: list[str] = []
    level = battery.level if battery is not None else None
    discharging = on_battery(policy, battery)
    if discharging and level is not None:
        if policy.local_only_below_pct is not None and level < policy.local_only_below_pct:
            allowed = frozenset({Tier.DEVICE})
            reasons.append(f"battery {level:g} % < {policy.local_only_below_pct:g} %: the device only")
        if (policy.prefer_energy_below_pct is not None and level < policy.prefer_energy_below_pct
                and prefer is not Prefer.ENERGY):
            prefer = Prefer.ENERGY
            reasons.append(f"battery {level:g} % < {policy.prefer_energy_below_pct:g} %: prefer energy")
    if metered and policy.metered_avoid:
        avoid = policy.metered_avoid & allowed
        if avoid:
            tiers = ", ".join(sorted(avoid))
            reasons.append(f"metered network: {tiers} only when nothing nearer meets the SLA")
    weight = policy.energy_weight_s_per_j if discharging else 0.0
    effective = effective_energy_weight(weight, None if level is None else level / 100.0)
    return EnergyOutcome(
        allowed=allowed, prefer=prefer, energy_weight=weight, effective_energy_weight=effective,
        avoid=avoid, reasons=tuple(reasons),
    )
