"""What kind of placement a plan is: which of the three tiers compute."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from tierflow.errors import PlanError
from tierflow.types.tiers import Tier


class PlanKind(StrEnum):
    """The tiers that compute in a plan, in tier order: one tier alone (``*-only``) or a split."""

    DEVICE_ONLY = "device-only"
    EDGE_ONLY = "edge-only"
    CLOUD_ONLY = "cloud-only"
    DEVICE_EDGE = "device+edge"
    DEVICE_CLOUD = "device+cloud"
    EDGE_CLOUD = "edge+cloud"
    DEVICE_EDGE_CLOUD = "device+edge+cloud"

    @classmethod
    def of(cls, tiers: Iterable[str]) -> PlanKind:
        """The kind of a plan in which ``tiers`` compute (raises PlanError for none or an unknown tier)."""
        used = set(tiers)
        unknown = sorted(used - set(Tier))
        if unknown:
            raise PlanError(f"tier '{unknown[0]}' is none of {', '.join(Tier)}: a plan on it has no kind")
        ordered = [t for t in Tier if t in used]
        if not ordered:
            raise PlanError("a plan in which no tier computes has no kind")
        return cls(f"{ordered[0]}-only" if len(ordered) == 1 else "+".join(ordered))

    @classmethod
    def only(cls, tier: Tier) -> PlanKind:
        """``tier`` computing alone."""
        return cls(f"{tier}-only")

    @property
    def tiers(self) -> tuple[Tier, ...]:
        """The tiers that compute, in tier order."""
        return tuple(Tier(t) for t in self.value.removesuffix("-only").split("+"))

    @property
    def single(self) -> Tier | None:
        """The one tier of a ``*-only`` kind; None for a split."""
        tiers = self.tiers
        return tiers[0] if len(tiers) == 1 else None
