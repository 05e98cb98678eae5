"""A deployment's routing as data: the hard rules, the energy policy and the matrix's priors, from YAML.

::

    rules:                      # tierflow.router.rules (merged over the defaults)
      forced: {realtime_stream: device}
      excluded: {image_2048: [device]}
    energy_policy:              # tierflow.router.energy (missing keys keep the seed's defaults)
      local_only_below_pct: 15
      metered_avoid: [cloud]
    priors:                     # seconds per request (text rows: seconds per token) before any observation
      image_1024: {edge: 1.2, cloud: 0.9}

Unknown keys, task kinds or tiers raise :class:`ConfigError` naming them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tierflow.errors import ConfigError
from tierflow.router.energy import EnergyPolicy
from tierflow.router.matrix import TaskResourceMatrix
from tierflow.router.rules import RoutingRules

KEYS = ("rules", "energy_policy", "priors")


@dataclass(frozen=True)
class RoutingConfig:
    rules: RoutingRules = field(default_factory=RoutingRules)
    energy_policy: EnergyPolicy = field(default_factory=EnergyPolicy)
    priors: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def matrix(self) -> TaskResourceMatrix:
        return TaskResourceMatrix(self.priors)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RoutingConfig:
        data = data or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"routing config: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(KEYS))
        if unknown:
            known = ", ".join(KEYS)
            raise ConfigError(f"routing config: unknown key(s) {', '.join(unknown)} (known: {known})")
        priors = data.get("priors") or {}
        if not isinstance(priors, Mapping):
            raise ConfigError("routing config: priors must map task kinds to {tier: seconds}")
        rules = RoutingRules.from_dict(data.get("rules"))
        config = cls(rules, EnergyPolicy.from_dict(data.get("energy_policy")), priors)
        config.matrix()  # the priors are checked now, not at the first request
        return config

    @classmethod
    def load(cls, path: str | Path) -> RoutingConfig:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"routing config {path}: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = " ".join(str(exc).split())[:200]
            raise ConfigError(f"routing config {path}: not YAML ({problem})") from None
        return cls.from_dict(data)
