"""Hard routing rules as data: task kinds forced to one tier, tiers excluded for a task kind.

As a plain dict (YAML / JSON)::

    forced:   {realtime_stream: device}        # merged over the defaults; null removes a default
    excluded: {image_2048: [device], text_long: [device]}

A forced tier must not also be excluded, and a task kind may not exclude every tier: both
raise :class:`ConfigError`, as do unknown task kinds, tiers and keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tierflow.errors import ConfigError, InvalidInputError
from tierflow.router.matrix import parse_task, parse_tier
from tierflow.types.tasks import TaskKind
from tierflow.types.tiers import Tier

DEFAULT_FORCED: Mapping[TaskKind, Tier] = MappingProxyType({TaskKind.REALTIME_STREAM: Tier.DEVICE})


def _default_forced() -> Mapping[TaskKind, Tier]:
    return DEFAULT_FORCED


def _no_exclusions() -> Mapping[TaskKind, frozenset[Tier]]:
    return MappingProxyType({})


@dataclass(frozen=True)
class RoutingRules:
    """Which tiers a task kind may run on, before any SLA or measurement is looked at."""

    forced: Mapping[TaskKind, Tier] = field(default_factory=_default_forced)
    excluded: Mapping[TaskKind, frozenset[Tier]] = field(default_factory=_no_exclusions)

    def __post_init__(self) -> None:
        forced = {
            parse_task(k, ConfigError, "forced"): parse_tier(v, ConfigError, f"forced.{k}")
            for k, v in self.forced.items()
        }
        excluded: dict[TaskKind, frozenset[Tier]] = {}
        for k, tiers in self.excluded.items():
            kind = parse_task(k, ConfigError, "excluded")
            if isinstance(tiers, str) or not isinstance(tiers, Iterable):
                raise ConfigError(f"excluded.{kind}: expected a list of tiers, got {tiers!r}")
            excluded[kind] = frozenset(parse_tier(t, ConfigError, f"excluded.{kind}") for t in tiers)
            if excluded[kind] >= set(Tier):
                raise ConfigError(f"excluded.{kind}: every tier is excluded, so {kind} could never run")
        for kind, tier in forced.items():
            if tier in excluded.get(kind, frozenset()):
                raise ConfigError(f"forced.{kind}: {tier} is forced and excluded at once")
        object.__setattr__(self, "forced", MappingProxyType(forced))
        object.__setattr__(self, "excluded", MappingProxyType(excluded))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RoutingRules:
        """Rules from a plain dict (see the module docstring); ``None`` or ``{}`` = the defaults."""
        data = data or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"routing rules: expected a mapping, got {data!r}")
        unknown = sorted(set(data) - {"forced", "excluded"})
        if unknown:
            raise ConfigError(f"routing rules: unknown key(s) {', '.join(unknown)} (known: forced, excluded)")
        forced_in = data.get("forced") or {}
        excluded_in = data.get("excluded") or {}
        for name, value in (("forced", forced_in), ("excluded", excluded_in)):
            if not isinstance(value, Mapping):
                raise ConfigError(f"routing rules: {name} must be a mapping of task kind -> tier(s)")
        forced: dict[TaskKind, Tier | str] = dict(DEFAULT_FORCED)
        for key, tier in forced_in.items():
            kind = parse_task(key, ConfigError, "forced")
            if tier is None:
                forced.pop(kind, None)
            else:
                forced[kind] = tier
        return cls(forced=forced, excluded=excluded_in)  # type: ignore[arg-type]  # parsed in __post_init__

    def allowed(self, task: TaskKind) -> frozenset[Tier]:
        """The tiers ``task`` may run on under these rules."""
        if task in self.forced:
            return frozenset({self.forced[task]})
        return frozenset(Tier) - self.excluded.get(task, frozenset())

    def why_not(self, task: TaskKind, tier: Tier) -> str | None:
        """Why the rules keep ``task`` off ``tier`` (one phrase), or None if they allow it."""
        forced = self.forced.get(task)
        if forced is not None and forced != tier:
            return f"{task} is forced to the {forced}"
        if tier in self.excluded.get(task, frozenset()):
            return f"the {tier} is excluded for {task}"
        return None

    def pinned(self, task: TaskKind, tier: Tier) -> RoutingRules:
        """These rules with ``task`` forced to ``tier`` (a request that names its tier; InvalidInputError
        if the rules exclude it or force the task elsewhere)."""
        why = self.why_not(task, tier)
        if why is not None:
            raise InvalidInputError(f"tier: {task} cannot be pinned to the {tier}: {why}")
        return RoutingRules(forced={**self.forced, task: tier}, excluded=self.excluded)

    def to_dict(self) -> dict[str, Any]:
        """The rules as a plain dict that :meth:`from_dict` reads back."""
        removed = {k.value: None for k in DEFAULT_FORCED if k not in self.forced}
        return {
            "forced": {**removed, **{k.value: v.value for k, v in self.forced.items()}},
            "excluded": {k.value: sorted(t.value for t in v) for k, v in self.excluded.items()},
        }
