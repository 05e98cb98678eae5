"""Routing rules as data: a request may pin its task to a tier the rules allow."""

from __future__ import annotations

import pytest

from tierflow.errors import InvalidInputError
from tierflow.router.rules import RoutingRules
from tierflow.types.tasks import TaskKind
from tierflow.types.tiers import Tier


def test_a_request_pins_its_task_to_a_tier_the_rules_allow() -> None:
    rules = RoutingRules.from_dict({"excluded": {"image_2048": ["device"]}})
    pinned = rules.pinned(TaskKind.TEXT_SHORT, Tier.EDGE)
    assert pinned.allowed(TaskKind.TEXT_SHORT) == {Tier.EDGE}
    assert pinned.allowed(TaskKind.TEXT_LONG) == set(Tier)  # only the pinned kind
    assert rules.allowed(TaskKind.TEXT_SHORT) == set(Tier)  # the deployment's rules are unchanged
    with pytest.raises(InvalidInputError, match="excluded"):
        rules.pinned(TaskKind.IMAGE_2048, Tier.DEVICE)
    with pytest.raises(InvalidInputError, match="forced"):
        rules.pinned(TaskKind.REALTIME_STREAM, Tier.CLOUD)
