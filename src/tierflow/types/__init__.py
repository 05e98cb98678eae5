"""Plain value types shared by every room; imports nothing else from tierflow but the error tree."""

from tierflow.types.links import Direction
from tierflow.types.models import ModelKind
from tierflow.types.plans import PlanKind
from tierflow.types.quant import QuantMode
from tierflow.types.tiers import Tier

__all__ = ["Direction", "ModelKind", "PlanKind", "QuantMode", "Tier"]
