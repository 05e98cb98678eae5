"""The split engine: the planner and a :class:`~tierflow.engine.split_runner.SplitRunner`, on the device.

For every request the engine

1. freezes what it knows into a snapshot (its :class:`~tierflow.planner.estimate.SnapshotSource`:
   per-tier profiles, link estimates, which tiers are up) and lets the
   :class:`~tierflow.planner.replan.Replanner` re-decide -- on the first request, periodically,
   when a link estimate moved, or at once when the plan in force cannot run (hysteresis
   keeps a working plan unless another is clearly better);
2. turns the plan into a :class:`SplitPlan` (the device's stage first; a tier that would only
   relay is skipped -- the device then talks to the next computing tier directly, so a plan
   that needs a route the device lacks is replaced by the best one it can run,
   :func:`executable_plan`) and runs it;
3. learns from what happened: the device's stage time and each remote tier's reported compute
   time (``meta["compute_s.<tier>"]``) recalibrate that tier's profile, and the rest of the
   round trip (total - computes) updates the estimate of the link the request entered by.

When a tier disappears during a request (the runner raises
:class:`~tierflow.errors.TierUnavailableError` naming it -- the innermost tier named, so a
cloud lost behind the edge is blamed on the cloud), the engine marks the tier unavailable,
re-plans over the tiers left and runs the request again on the new plan, once.
"""

from __future__ import annotations

import contextlib
import re
import statistics
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field

import numpy as np
import onnx

from tierflow.engine.split_runner import DEVICE, SplitPlan, SplitResult, SplitRunner
from tierflow.errors import InvalidInputError, PlanError, TierUnavailableError
from tierflow.planner.estimate import Ewma, LinkEstimator, SnapshotSource
from tierflow.planner.graph import UnitGraph
from tierflow.planner.plan import Plan
from tierflow.planner.profile import StageTiming, TierProfile, calibrate
from tierflow.planner.replan import Decision, Replanner, ReplanPolicy
from tierflow.planner.search import evaluate_plan
from tierflow.planner.search import plan as search_plan
from tierflow.planner.snapshot import Snapshot
from tierflow.runtime.session import SessionOptions
from tierflow.transport.tls import Identity

_TIER_NAMED = re.compile(r"tier '([^']+)'")


def to_split_plan(plan: Plan) -> SplitPlan:
    """The stages of ``plan`` that compute, as a :class:`SplitPlan` (a relay-only hop is skipped:
    a node needs something to compute, and the device can reach the next tier itself)."""
    return SplitPlan(stages=plan.split_stages(), returns=plan.results)


def actual_path(plan: Plan) -> tuple[str, ...]:
    """The tiers a request of ``plan`` really visits: the device, then every remote tier that computes."""
    return (plan.path[0], *(s.tier for s in plan.stages[1:] if s.units))


def failed_tier(exc: TierUnavailableError, candidates: Sequence[str]) -> str | None:
    """The tier an error blames: the one it carries, else the innermost of ``candidates`` its message names.

    A relayed failure reads ``tier 'edge': tier 'cloud' failed ...``: the edge answered, the
    cloud behind it did not, so the last name is the one that is gone.
    """
    if exc.tier in candidates:
        return exc.tier
    named = [n for n in _TIER_NAMED.findall(str(exc)) if n in candidates]
    return named[-1] if named else None


FORCED_S = 1e6  # compute seconds that keep a unit off a tier while searching (see executable_plan)


def executable_plan(graph: UnitGraph, snapshot: Snapshot, reachable: Set[str]) -> Plan:
    """The best plan the device can run when it reaches only the tiers in ``reachable`` directly.

    The exact optimum may let a middle tier only relay (the edge passes tensors from the
    device to the cloud). The device skips such a hop and talks to the next tier itself --
    possible only when it has a route there. When it has not, the best runnable plan is
    either one that does not use that tier at all, or one in which the relay computes at
    least one unit: for each unit u, the search with u kept off every other tier finds the
    best plan with u on the relay, and the best of those (scored under the real snapshot)
    is exact over them.
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


def runnable(plan: Plan, reachable: Set[str]) -> bool:
    """Can the device send this plan's request? (Its first remote hop must be a tier it reaches.)"""
    path = actual_path(plan)
    return len(path) < 2 or path[1] in reachable


@dataclass
class EngineResult:
    """One request: the outputs, the plan it finally ran on, and how it went."""

    outputs: dict[str, np.ndarray]
    plan: Plan
    split: SplitResult
    lost: tuple[str, ...] = ()  # tiers that disappeared during this request
    retried: bool = False

    @property
    def total_s(self) -> float:
        return self.split.total_s


@dataclass
class _StageClock:
    """EWMA of one stage's measured seconds on one tier."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    ewma: Ewma = field(default_factory=lambda: Ewma(alpha=0.3))


class SplitEngine:
    """Plans, runs and re-plans split requests from the device (see the module docstring).

    ``source`` holds the live inputs of planning; its ``profiles`` must have a profile for
    every tier (device first) and its ``links`` an estimator per pair of tiers that can talk.
    ``peers`` maps each remote tier to the address the *device* reaches it at (a node or a
    link emulator in front of it); each node knows its own next hops. ``shares`` are the
    units' ONNX Runtime kernel times (``LocalProfiler.shares``): they split a measured stage
    time over its units. ``slowdown`` simulates a weaker device on the real execution path;
    the planner only sees it through the device's measured times.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        source: SnapshotSource,
        identity: Identity,
        peers: dict[str, str],
        *,
        shares: Mapping[str, float],
        options: SessionOptions | None = None,
        slowdown: float = 1.0,
        policy: ReplanPolicy | None = None,
        learn: bool = True,
    ) -> None:
        self.graph = source.graph
        self.source = source
        self.profiles: dict[str, TierProfile] = dict(source.profiles)
        source.profiles = self.profiles  # the engine recalibrates them in place
        if not self.profiles or next(iter(self.profiles)) != DEVICE:
            raise InvalidInputError("the engine's first tier must be the device")
        self.shares = dict(shares)
        self.runner = SplitRunner(
            model, identity, peers, options, quant=source.compression, slowdown=slowdown
        )
        self.replanner = Replanner(self.graph, policy, self._plan)
        self.learn = learn
        self._links = {frozenset((e.a, e.b)): e for e in source.links}
        self._clocks: dict[str, dict[tuple[str, ...], _StageClock]] = {}
        self._dirty: set[str] = set()
        for tier, profile in self.profiles.items():  # what the profile was measured from stays a sample
            for timing in profile.stages:
                self._remember(tier, timing.inputs, timing.outputs, timing.seconds)
        self._dirty.clear()

    # --- deciding --------------------------------------------------------------------------

    def _plan(self, graph: UnitGraph, snapshot: Snapshot) -> Plan:
        return executable_plan(graph, snapshot, set(self.runner.peers.addresses))

    @property
    def current(self) -> Plan | None:
        return self.replanner.current

    @property
    def decisions(self) -> list[Decision]:
        return self.replanner.decisions

    def snapshot(self) -> Snapshot:
        """What the planner sees now (profiles recalibrated from what was measured since)."""
        for tier in sorted(self._dirty):
            self._recalibrate(tier)
        self._dirty.clear()
        return self.source.snapshot()

    def decide(self) -> Plan:
        """The plan in force after feeding the replanner a fresh snapshot; PlanError naming why if none."""
        self.replanner.step(self.snapshot())
        if self.replanner.current is None:
            last = self.replanner.decisions[-1].note if self.replanner.decisions else ""
            raise PlanError(last or "no plan can run with the tiers available")
        return self.replanner.current

    def forget_plan(self) -> None:
        """Drop the plan in force and its history: the next decision is an initial one (no hysteresis)."""
        self.replanner = Replanner(self.graph, self.replanner.policy, self.replanner.planner)

    def set_profile(self, tier: str, profile: TierProfile) -> None:
        """Replace ``tier``'s profile (e.g. after profiling it again); later measurements refine it."""
        if tier not in self.profiles:
            raise InvalidInputError(f"unknown tier '{tier}' (tiers: {', '.join(self.profiles)})")
        self.profiles[tier] = profile
        self._clocks.pop(tier, None)
        for timing in profile.stages:
            self._remember(tier, timing.inputs, timing.outputs, timing.seconds)
        self._dirty.discard(tier)

    def set_links(self, links: Sequence[LinkEstimator]) -> None:
        """Replace the link estimators (e.g. the device moved to another network)."""
        self.source.links = list(links)
        self._links = {frozenset((e.a, e.b)): e for e in links}

    def mark_unavailable(self, tier: str) -> None:
        self.source.unavailable.add(tier)

    def mark_available(self, tier: str) -> None:
        self.source.unavailable.discard(tier)

    # --- running ---------------------------------------------------------------------------

    async def run(self, inputs: dict[str, np.ndarray]) -> EngineResult:
        """Run one request on the plan in force; if a tier disappears, re-plan without it and retry once."""
        plan = self.decide()
        try:
            split = await self.runner.run(inputs, to_split_plan(plan))
        except TierUnavailableError as exc:
            tier = failed_tier(exc, actual_path(plan)[1:])
            if tier is None:
                raise
            self.mark_unavailable(tier)
            retry = self.decide()  # the plan in force is broken now: the replanner switches at once
            split = await self.runner.run(inputs, to_split_plan(retry))
            self.observe(retry, split)
            return EngineResult(split.outputs, retry, split, lost=(tier,), retried=True)
        self.observe(plan, split)
        return EngineResult(split.outputs, plan, split)

    async def run_plan(
        self, inputs: dict[str, np.ndarray], plan: Plan, *, observe: bool = False
    ) -> SplitResult:
        """Run ``plan`` as it is (no re-planning, no retry): for measuring candidates."""
        split = await self.runner.run(inputs, to_split_plan(plan))
        if observe:
            self.observe(plan, split)
        return split

    async def close(self) -> None:
        await self.runner.close()

    # --- learning --------------------------------------------------------------------------

    def observe(self, plan: Plan, result: SplitResult) -> None:
        """Fold one request's measurements into the profiles and the first link's estimate."""
        if not self.learn:
            return
        stages = {s.tier: s for s in plan.stages if s.units}
        device = stages.get(DEVICE)
        if device is not None and result.device_s > 0:
            self._remember(DEVICE, device.inputs, device.outputs, result.device_s)
        for tier, seconds in result.remote_compute_s.items():
            stage = stages.get(tier)
            if stage is not None and seconds > 0:
                self._remember(tier, stage.inputs, stage.outputs, seconds)
        self._observe_link(plan, result)

    def _remember(self, tier: str, inputs: Sequence[str], outputs: Sequence[str], seconds: float) -> None:
        clocks = self._clocks.setdefault(tier, {})
        key = tuple(outputs)
        clock = clocks.get(key)
        if clock is None:
            clock = clocks[key] = _StageClock(tuple(inputs), tuple(outputs))
        clock.ewma.update(seconds)
        self._dirty.add(tier)

    def _recalibrate(self, tier: str) -> None:
        clocks = self._clocks.get(tier)
        profile = self.profiles.get(tier)
        if not clocks or profile is None:
            return
        timings = [
            StageTiming(inputs=c.inputs, outputs=c.outputs, seconds=c.ewma.value)
            for c in clocks.values()
            if c.ewma.value
        ]
        self.profiles[tier] = profile.model_copy(
            update={
                "unit_s": calibrate(self.graph, self.shares, timings),
                "stages": tuple(timings),
            }
        )

    def _observe_link(self, plan: Plan, result: SplitResult) -> None:
        """Attribute the request's network time to the hop it entered by.

        ``total - computes`` covers every hop of the path both ways. What the current
        estimates predict for the later hops (and for the first hop's other direction) is
        taken out; what is left, less the hop's measured fixed overhead, is one transfer
        sample of the first hop in the direction that carried more bytes.
        """
        path = actual_path(plan)
        if len(path) < 2 or path != plan.path:
            return  # device-only, or a skipped relay: the prediction's traffic is not what crossed
        links = [self._links.get(frozenset(hop)) for hop in zip(path, path[1:], strict=False)]
        if any(e is None for e in links):
            return
        up = [0] * len(path)
        down = [0] * len(path)
        for hop in plan.prediction.traffic:
            if hop.direction == "forward":
                up[path.index(hop.dst)] += hop.wire_bytes
            else:
                down[path.index(hop.src)] += hop.wire_bytes
        rest = 0.0
        for j, est in enumerate(links[1:], start=2):
            assert est is not None
            state = est.state()
            rest += state.rtt_s + state.overhead_s + up[j] * 8 / state.up_bps + down[j] * 8 / state.down_bps
        first = links[0]
        assert first is not None
        state = first.state()
        seconds = result.network_s - rest - state.overhead_s
        if up[1] >= down[1]:
            nbytes, other, direction = up[1], down[1] * 8 / state.down_bps, "up"
        else:
            nbytes, other, direction = down[1], up[1] * 8 / state.up_bps, "down"
        if seconds - other > 0:
            first.observe_transfer(nbytes, seconds - other, direction)


def measured_overhead(
    samples: Sequence[tuple[Plan, SplitResult]], links: Sequence[LinkEstimator]
) -> dict[frozenset[str], float]:
    """The fixed cost per use of each link that the link model (RTT + bytes / bandwidth) does not explain.

    For each request: its network time less the RTTs and transfer times of the links it used
    (at the estimators' figures). Requests over one link give that link's figure (the median);
    a request over several links gives what is left, after the links already known, to the
    ones not yet known. It covers what the data plane adds per hop (serialising, quantising
    and sealing frames, the RPC, and a relay's own decode / re-encode). A link without any
    sample gets the median of the others.
    """
    by_pair = {frozenset((e.a, e.b)): e.state() for e in links}
    excess: list[tuple[list[frozenset[str]], float]] = []
    for plan, result in samples:
        path = actual_path(plan)
        if len(path) < 2 or path != plan.path:
            continue
        hops = [frozenset(h) for h in zip(path, path[1:], strict=False)]
        explained = 0.0
        for hop in hops:
            state = by_pair[hop]
            explained += state.rtt_s
            for traffic in plan.prediction.traffic:
                if {traffic.src, traffic.dst} == hop:  # links name the tier nearer the device first
                    bps = state.up_bps if traffic.direction == "forward" else state.down_bps
                    explained += traffic.wire_bytes * 8 / bps
        excess.append((hops, result.network_s - explained))
    if not excess:
        raise InvalidInputError("measuring the per-hop overhead needs requests that crossed a link")
    known: dict[frozenset[str], float] = {}
    for size in sorted({len(h) for h, _ in excess}):
        found: dict[frozenset[str], list[float]] = {}
        for hops, seconds in excess:
            if len(hops) != size:
                continue
            unknown = [h for h in hops if h not in known]
            left = seconds - sum(known[h] for h in hops if h in known)
            for h in unknown:
                found.setdefault(h, []).append(left / len(unknown))
        known.update({h: max(statistics.median(v), 0.0) for h, v in found.items()})
    fallback = statistics.median(known.values())
    return {pair: known.get(pair, fallback) for pair in by_pair}


def set_overhead(links: Sequence[LinkEstimator], overhead: Mapping[frozenset[str], float]) -> None:
    """Give each link estimator its measured fixed overhead (see :func:`measured_overhead`)."""
    for estimator in links:
        estimator.overhead_s = overhead.get(frozenset((estimator.a, estimator.b)), estimator.overhead_s)
