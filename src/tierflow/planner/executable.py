"""Plans the device can send: the exact optimum, or the best plan over the routes it has.

The exact search may let a middle tier only relay (the edge passes tensors from the device
to the cloud). A request skips such a hop and the device talks to the next computing tier
itself -- possible only when it has a route there. :func:`executable_plan` returns the best
plan the device can run given the tiers it reaches directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Set

from tierflow.errors import PlanError
from tierflow.planner.graph import UnitGraph
from tierflow.planner.plan import Plan
from tierflow.planner.search import evaluate_plan
from tierflow.planner.search import plan as search_plan
from tierflow.planner.snapshot import Snapshot

FORCED_S = 1e6  # compute seconds that keep a unit off a tier while searching (see executable_plan)


def actual_path(plan: Plan) -> tuple[str, ...]:
    """The tiers a request of ``plan`` really visits: the device, then every remote tier that computes."""
    return (plan.path[0], *(s.tier for s in plan.stages[1:] if s.units))


def runnable(plan: Plan, reachable: Set[str]) -> bool:
    """Can the device send this plan's request? (Its first remote hop must be a tier it reaches.)"""
    path = actual_path(plan)
    return len(path) < 2 or path[1] in reachable


def executable_plan(graph: UnitGraph, snapshot: Snapshot, reachable: Set[str]) -> Plan:
    """The best plan the device can run when it reaches only the tiers in ``reachable`` directly.

    When the optimum needs a route the device lacks, the best runnable plan is either one
    that does not use that tier at all, or one in which the relay computes at least one
    unit: for each unit u, the search with u kept off every other tier finds the best plan
    with u on the relay, and the best of those (scored under the real snapshot) is exact
    over them.
    """
    best = search_plan(graph, snapshot)
    if runnable(best, reachable):
        return best
    target = actual_path(best)[1]
    relays = [s.tier for s in best.stages[1:] if not s.units]
    candidates: list[Plan] = []
    with contextlib.suppress(PlanError):
        others = set(snapshot.tier_names) - {target}
        candidates.append(search_plan(graph, snapshot, others))
    for relay in relays:
        for unit in graph.units:
            forced = snapshot
            for tier in snapshot.tiers:
                if tier.name != relay:
                    unit_s = {**tier.unit_s, unit.name: FORCED_S}
                    forced = forced.with_tier(tier.model_copy(update={"unit_s": unit_s}))
            try:
                found = search_plan(graph, forced)
                candidates.append(evaluate_plan(graph, snapshot, found.path, found.labels))
            except PlanError:
                continue
    fits = [p for p in candidates if p.prediction.feasible and runnable(p, reachable)]
    if not fits:
        raise PlanError(f"the device has no route to {target} and no plan runs without one")
    return min(fits, key=lambda p: p.prediction.score)
