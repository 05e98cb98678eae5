"""Re-planning: decide again as conditions change, without flapping.

A :class:`Replanner` is fed snapshots (each with its time) and re-decides when

* no plan is in force yet (``initial``),
* the plan in force cannot run any more: a tier it uses disappeared, a link it
  needs went down, it no longer fits (``broken``) -- switch at once,
* any link's bandwidth or RTT moved by more than ``link_change`` (relative) since
  the last decision (``link-change``), or
* ``interval_s`` passed since the last decision (``periodic``, default 5 s).

Hysteresis: a new plan replaces a working one only if it scores better by more
than ``min_gain`` (10 %) *under the same snapshot*, and not sooner than
``min_dwell_s`` after the last switch. Every decision is recorded; the planner is a
pure function of each snapshot, so :func:`replay` over a recorded
:class:`~tierflow.planner.snapshot.Trace` gives the same decisions every time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field

from tierflow.errors import PlanError
from tierflow.planner.graph import UnitGraph
from tierflow.planner.plan import Plan
from tierflow.planner.search import evaluate_plan, plan
from tierflow.planner.snapshot import LinkState, Snapshot

Planner = Callable[[UnitGraph, Snapshot], Plan]


class ReplanPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    interval_s: float = Field(default=5.0, gt=0.0)
    link_change: float = Field(default=0.3, gt=0.0, description="relative link move that triggers")
    min_gain: float = Field(default=0.10, ge=0.0, lt=1.0, description="switch only if better by more")
    min_dwell_s: float = Field(default=10.0, ge=0.0, description="keep a plan at least this long")
    rtt_floor_s: float = Field(default=0.005, ge=0.0, description="RTT moves below this are noise")


class PlanSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: tuple[str, ...]
    labels: tuple[int, ...]
    describe: str
    latency_s: float
    device_energy_j: float
    score: float

    @classmethod
    def of(cls, p: Plan) -> PlanSummary:
        return cls(path=p.path, labels=p.labels, describe=p.describe(), latency_s=p.prediction.latency_s,
                   device_energy_j=p.prediction.device_energy_j, score=p.prediction.score)


class Decision(BaseModel):
    """One re-decision: why it happened, what was chosen, and whether the plan changed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    time_s: float
    reason: str  # initial | broken | link-change | periodic
    switched: bool
    chosen: PlanSummary | None  # the plan in force after this decision
    best: PlanSummary | None  # the best plan under this snapshot
    previous_score: float | None = None  # the old plan's score under this snapshot (None: it cannot run)
    note: str = ""


def link_moved(old: LinkState, new: LinkState, threshold: float, rtt_floor_s: float) -> bool:
    """Did bandwidth (either way) or RTT move by more than ``threshold`` (relative)?"""

    def moved(a: float, b: float) -> bool:
        if a == b:
            return False
        if min(a, b) <= 0.0:
            return True
        return max(a, b) / min(a, b) - 1.0 > threshold

    floor = rtt_floor_s
    rtt_moved = abs(new.rtt_s - old.rtt_s) > floor and moved(old.rtt_s + floor, new.rtt_s + floor)
    return moved(old.up_bps, new.up_bps) or moved(old.down_bps, new.down_bps) or rtt_moved


class Replanner:
    """Holds the plan in force and re-decides on the policy's triggers (see the module docstring)."""

    def __init__(self, graph: UnitGraph, policy: ReplanPolicy | None = None, planner: Planner = plan) -> None:
        self.graph = graph
        self.policy = policy or ReplanPolicy()
        self.planner = planner
        self.current: Plan | None = None
        self.decisions: list[Decision] = []
        self._decided_at: float | None = None
        self._switched_at: float | None = None
        self._links: dict[frozenset[str], LinkState] = {}

    def _rescore(self, snapshot: Snapshot) -> Plan | None:
        """The plan in force, scored under ``snapshot``; None if it can no longer run."""
        if self.current is None:
            return None
        try:
            p = evaluate_plan(self.graph, snapshot, self.current.path, self.current.labels)
        except PlanError:
            return None  # a hop of its path has no usable link, or a tier lost its profile
        return p if p.prediction.feasible else None

    def trigger(self, snapshot: Snapshot, rescored: Plan | None) -> str | None:
        """Why to re-decide now, or None."""
        if self.current is None or self._decided_at is None:
            return "initial"
        if rescored is None:
            return "broken"
        for link in snapshot.links:
            old = self._links.get(frozenset((link.a, link.b)))
            if old is not None and link_moved(old, link, self.policy.link_change, self.policy.rtt_floor_s):
                return "link-change"
        if snapshot.time_s - self._decided_at >= self.policy.interval_s:
            return "periodic"
        return None

    def step(self, snapshot: Snapshot) -> Decision | None:
        """Feed one snapshot; returns the decision if one was taken."""
        rescored = self._rescore(snapshot)
        reason = self.trigger(snapshot, rescored)
        if reason is None:
            return None
        try:
            best: Plan | None = self.planner(self.graph, snapshot)
            note = ""
        except PlanError as exc:
            best, note = None, str(exc)
        switched = False
        if best is None:
            if rescored is None:  # nothing can run: drop the broken plan
                switched = self.current is not None
                self.current = None
        elif rescored is None:
            switched = True
        elif best.key != rescored.key:
            old = rescored.prediction.score
            gain = 1.0 - best.prediction.score / old if old > 0 else 0.0
            since = None if self._switched_at is None else snapshot.time_s - self._switched_at
            dwell = since is None or since >= self.policy.min_dwell_s
            if gain > self.policy.min_gain and dwell:
                switched = True
            elif gain > self.policy.min_gain:
                note = f"better by {gain:.0%}, but the plan in force is only {since:g} s old"
            else:
                note = f"better by only {gain:.1%} (needs > {self.policy.min_gain:.0%})"
        if switched and best is not None:
            self.current = best
            self._switched_at = snapshot.time_s
        elif rescored is not None:
            self.current = rescored
        decision = Decision(
            time_s=snapshot.time_s,
            reason=reason,
            switched=switched,
            chosen=PlanSummary.of(self.current) if self.current is not None else None,
            best=PlanSummary.of(best) if best is not None else None,
            previous_score=rescored.prediction.score if rescored is not None else None,
            note=note,
        )
        self.decisions.append(decision)
        self._decided_at = snapshot.time_s
        self._links = {frozenset((x.a, x.b)): x for x in snapshot.links}
        return decision


def replay(
    graph: UnitGraph,
    snapshots: Iterable[Snapshot],
    policy: ReplanPolicy | None = None,
    planner: Planner = plan,
) -> list[Decision]:
    """The decisions a :class:`Replanner` takes over ``snapshots`` (in time order)."""
    replanner = Replanner(graph, policy, planner)
    for snapshot in snapshots:
        replanner.step(snapshot)
    return replanner.decisions
