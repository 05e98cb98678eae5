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
   :func:`tierflow.planner.executable.executable_plan`) and runs it;
3. learns from what happened: the device's stage time and each remote tier's reported compute
   time (``meta["compute_s.<tier>"]``) recalibrate that tier's profile, and the rest of the
   round trip (total - computes) updates the estimate of the link the request entered by.

When a tier disappears during a request (the runner raises
:class:`~tierflow.errors.TierUnavailableError` naming it -- the innermost tier named, so a
cloud lost behind the edge is blamed on the cloud), the engine marks the tier unavailable,
re-plans over the tiers left and runs the request again on the new plan, once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from tierflow.engine.split_runner import SplitPlan, SplitResult, SplitRunner
from tierflow.errors import InvalidInputError, PlanError, TierUnavailableError
from tierflow.planner.estimate import Ewma, LinkEstimator, SnapshotSource
from tierflow.planner.executable import actual_path, executable_plan
from tierflow.planner.graph import UnitGraph
from tierflow.planner.overhead import first_hop_sample
from tierflow.planner.plan import Plan
from tierflow.planner.profile import StageTiming, TierProfile, calibrate
from tierflow.planner.replan import Decision, Replanner, ReplanPolicy
from tierflow.planner.snapshot import Snapshot
from tierflow.runtime.session import SessionOptions
from tierflow.transport.peers import Peers
from tierflow.transport.tls import Identity
from tierflow.types import Tier


def to_split_plan(plan: Plan) -> SplitPlan:
    """The stages of ``plan`` that compute, as a :class:`SplitPlan` (a relay-only hop is skipped:
    a node needs something to compute, and the device can reach the next tier itself)."""
    return SplitPlan(stages=plan.split_stages(), returns=plan.results)


def failed_tier(exc: TierUnavailableError, candidates: Sequence[str]) -> str | None:
    """The tier an error blames, when it is one of ``candidates``.

    ``TierUnavailableError.tier`` names the innermost tier that failed: a node relaying a
    request reports the tier behind it (response meta, ``transport/messages.py``), so a
    cloud lost behind the edge is blamed on the cloud.
    """
    return exc.tier if exc.tier in candidates else None


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
        clients: Peers | None = None,
    ) -> None:
        self.graph = source.graph
        # the engine's own copy: it recalibrates profiles and marks tiers down without touching the caller's
        self.profiles: dict[str, TierProfile] = dict(source.profiles)
        self.source = dataclasses.replace(
            source, profiles=self.profiles, links=list(source.links), loads=dict(source.loads),
            unavailable=set(source.unavailable), memory=dict(source.memory),
        )
        if not self.profiles or next(iter(self.profiles)) != Tier.DEVICE:
            raise InvalidInputError("the engine's first tier must be the device")
        self.shares = dict(shares)
        self.runner = SplitRunner(
            model, identity, peers, options, quant=source.compression, slowdown=slowdown, clients=clients
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
        device = stages.get(Tier.DEVICE)
        if device is not None and result.device_s > 0:
            self._remember(Tier.DEVICE, device.inputs, device.outputs, result.device_s)
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
        """Attribute the request's network time to the hop it entered by (see ``first_hop_sample``)."""
        path = plan.path
        links = [self._links.get(frozenset(hop)) for hop in zip(path, path[1:], strict=False)]
        if not links or any(e is None for e in links):
            return
        sample = first_hop_sample(plan, result.network_s, [e.state() for e in links if e is not None])
        if sample is not None and links[0] is not None:
            links[0].observe_transfer(sample.nbytes, sample.seconds, sample.direction)
