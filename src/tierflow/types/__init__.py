"""Plain value types shared by every room; imports nothing else from tierflow."""

from tierflow.types.tiers import Tier

__all__ = ["Tier"]
