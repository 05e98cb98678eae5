"""The tiers tierflow spans."""

from __future__ import annotations

from enum import StrEnum


class Tier(StrEnum):
    """Where a piece of work runs."""

    DEVICE = "device"
    EDGE = "edge"
    CLOUD = "cloud"
