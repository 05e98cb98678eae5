"""`tierflow bench split`: the planner's chosen split against every candidate, measured over real tiers.

Models: the bundled ones (``demo-vision``, ``random-image``, ``demo-lm``), the networks of the split
papers (``alexnet``, ``resnet18``, ``mobilenetv2``: :mod:`tierflow.bench.paper_models`, exported once
from plain PyTorch), or any ``.onnx`` file or ``.tfm`` package (every tier serves the package's most
capable target, so all tiers cut the same graph).

Set-up (one set of processes per model, reused across the link profiles), built by the deployment
code ``tierflow up`` runs (:func:`tierflow.node.deploy.deploy_local`):

* **device** -- this process: a :class:`~tierflow.engine.split_engine.SplitEngine` whose stage runner
  is SIMULATED ``device_slowdown`` times slower (the slowdown stretches the real execution; the
  planner learns it by profiling the device, it never reads the factor);
* **edge** -- a ``tierflow node`` process at ``--slowdown edge_slowdown`` (default 2: an edge box
  half as fast as the cloud), **cloud** -- a node at ``cloud_slowdown`` (default 1);
* **links** -- user-space link emulators: device->edge at the profile under test; edge->cloud at
  the backhaul (1 Gbit/s each way, 10 ms RTT: metro fibre from a base station to a cloud region,
  ``tierflow.types.links.BACKHAUL``); device->cloud through an emulator at the access profile and
  then the same backhaul emulator (``chain(access, BACKHAUL)``: the slower bandwidth each way, the
  RTTs added) -- the links the planner assumes (``links_for``). Profiles switch live between runs.

Before each profile, over a fast link, the tiers are profiled again (the machine is shared and its
speed drifts) in seven interleaved rounds of device-only, edge-only and cloud-only requests: the
device's stage time as it runs it (at its slowdown), and the compute times the edge and cloud
report for the whole model (``meta["compute_s.*"]``), each tier's lower quartile (load bursts of
the shared machine only ever slow a run down). Once per model, the fixed cost per hop that the link model
does not explain (the data plane's serialising, quantising, sealing, RPC and relay work) is
measured for each link from requests over the fast link (``planner.overhead.measured_overhead``) and put in
that link's ``overhead_s``. The links' bandwidths are the profile's at the rate a reliable stream
gets through its loss (:func:`goodput`, docs/NETWORK.md). Nothing else is given: the planner sees
measurements, never the slowdowns.

Per profile:

* the planner's **chosen** plan (exact search over the snapshot of those measurements);
* the **grid** (``candidate_grid``: every placement in which each tier of the path computes,
  the chosen plan included). Over ``max_plans`` it is sampled: the chosen plan, device-only,
  edge-only and cloud-only, the best half by prediction, and a seeded random draw of the rest;
* each plan is timed end to end for ``requests`` requests (median) after a warm-up run (done
  over the fast link). Two documented short cuts keep slow links affordable, neither can hide
  the oracle: a plan is **skipped** when a lower bound of its time -- what the emulated links
  alone must take for its bytes (bytes / bandwidth, plus each hop's RTT less four jitter
  deviations) -- exceeds the fastest median so far; a plan whose first request takes over twice
  the fastest median so far is timed **once** (it cannot be the oracle). The chosen plan and
  device-, edge- and cloud-only are always timed ``requests`` times;
* **refinement**: the chosen plan, the three fastest others and the best single tier -- those of
  them within 25 % of the fastest -- are timed ``2 x requests`` more times each, interleaved (so
  a burst of load on the shared machine hits them alike); their figure is the median over all
  their requests;
* the **oracle** is the fastest plan measured.

Figures are ratios measured side by side in one run: chosen vs oracle, vs cloud-only, vs
device-only and vs the best single tier; ``chosen_kind`` says whether the chosen plan is a split
(the summary's speed-ups "where split" are taken over those cases only) and ``oracle_kind``
whether any split paid at all.

Energy (``energy_vs_device_only``) applies the planner's power model to what was measured: the
request's wall time, the device's compute time, and the bytes that crossed the device's own link
(counted by the emulators, framing and TLS included) at that link's bandwidth.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tierflow.bench.paper_models import PAPER_MODELS, ensure_paper_model, is_paper_model
from tierflow.engine.split_engine import SplitEngine
from tierflow.engine.split_runner import SplitResult
from tierflow.errors import ConfigError, InvalidModelError, ModelNotFoundError
from tierflow.model.package import Package
from tierflow.model.registry import BUNDLED, resolve_model
from tierflow.node.deploy import LocalDeployment, deploy_local
from tierflow.planner.estimate import LinkEstimator, SnapshotSource
from tierflow.planner.executable import actual_path
from tierflow.planner.graph import UnitGraph
from tierflow.planner.overhead import measured_overhead, set_overhead
from tierflow.planner.plan import Plan
from tierflow.planner.power import DevicePower, radio_for_profile
from tierflow.planner.profile import StageTiming, TierProfile, profile_remote
from tierflow.planner.search import candidate_grid, plan
from tierflow.planner.snapshot import LinkState, links_for
from tierflow.profiling.graph_builder import build_unit_graph, example_feeds, input_dtypes
from tierflow.profiling.local import LocalProfiler
from tierflow.runtime.session import SessionOptions
from tierflow.transport.linkemu import MSS
from tierflow.transport.tls import load_identity
from tierflow.types import PlanKind, Tier
from tierflow.types.links import BACKHAUL, Direction, LinkProfile, get_profile, transfer_s

MODELS = ("demo-vision", "random-image", "demo-lm")
PROFILES = ("2g", "3g", "4g", "wifi", "5g", "datacenter")
DEVICE_SLOWDOWN = 4.0
EDGE_SLOWDOWN = 2.0
CLOUD_SLOWDOWN = 1.0
MAX_PLANS = 72  # demo-vision's 55 and random-image's 66 grid plans are all measured; demo-lm's 279 sampled
NEUROSURGEON_SPEEDUP = 3.1  # Kang et al., ASPLOS 2017: mean latency speed-up over cloud-only
NEUROSURGEON_NETWORKS = ("3g", "4g", "wifi")  # the wireless networks that mean was taken over
FAST = "datacenter"  # the profile warm-ups and calibration run over
CALIBRATION_RUNS = 5
PROFILE_ROUNDS = 7
REFINE_TOP = 3
REFINE_ROUNDS = 2  # x requests, for the contenders
CONTENDER = 1.25  # refined: plans within this factor of the fastest median (could be, or tie, the oracle)
SLOW_FACTOR = 2.0  # a first request this many times the fastest median so far: timed once
JITTER_MARGIN = 4.0  # deviations of jitter taken off each hop's RTT in the lower bound

Log = Callable[[str], None]


def goodput(profile: LinkProfile) -> LinkProfile:
    """``profile`` at the rate a reliable stream gets through its loss (docs/NETWORK.md, loss):
    each packet costs ``MSS*8/bw`` plus, with probability ``loss``, a repair of ``RTT + MSS*8/bw``."""

    def rate(bps: float) -> float:
        if bps <= 0 or math.isinf(bps):
            return bps
        return bps / (1.0 + profile.loss * (1.0 + profile.rtt_s * bps / (MSS * 8)))

    return profile.replace(up_bps=rate(profile.up_bps), down_bps=rate(profile.down_bps))


def bench_links(access: LinkProfile) -> tuple[LinkState, ...]:
    """The links the planner is given: ``links_for``'s, each emulated link at its goodput (the
    device->cloud path crosses two emulators, each repairing its own losses)."""
    return links_for(goodput(access), goodput(BACKHAUL))


def device_bytes(deployment: LocalDeployment) -> tuple[int, int]:
    """Bytes sent and received over the device's own links so far."""
    sent = received = 0
    for name, link in deployment.links.items():
        if name.startswith("device->"):
            stats = link.stats()
            sent += stats.up.bytes
            received += stats.down.bytes
    return sent, received


@dataclass(frozen=True)
class BenchModel:
    """A model to measure: what the device runs and what the nodes are started with."""

    name: str
    proto: onnx.ModelProto
    serve: Path  # the file the edge and cloud nodes load
    target: str | None = None  # the .tfm target every tier serves


def open_model(spec: str) -> BenchModel:
    """A bundled name, a paper model (built on first use), an ``.onnx`` file or a ``.tfm`` package."""
    if spec in BUNDLED:
        path = resolve_model(spec)
        return BenchModel(spec, onnx.load(str(path)), path)
    if is_paper_model(spec):
        path = ensure_paper_model(spec)
        return BenchModel(spec, onnx.load(str(path)), path)
    path = Path(spec)
    if not path.is_file():
        known = ", ".join([*BUNDLED, *PAPER_MODELS])
        raise ModelNotFoundError(
            f"no such model file, bundled model or paper network: {spec} (known: {known})"
        )
    if path.suffix == ".tfm":
        package = Package.open(path)
        target = list(package.manifest.targets)[-1]  # the most capable target, on every tier
        return BenchModel(
            f"{path.name}#{target}", onnx.load_from_string(package.artifact(target)), path, target
        )
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise InvalidModelError(f"{path} is not a valid ONNX model: {reason}") from None
    return BenchModel(path.name, proto, path)


@dataclass
class Measured:
    """One plan's measured requests."""

    plan: Plan
    results: list[SplitResult] = field(default_factory=list)
    sent_bytes: float = 0.0  # per request, over the device's link
    received_bytes: float = 0.0

    @property
    def total_ms(self) -> float:
        return statistics.median(r.total_s for r in self.results) * 1000.0

    @property
    def device_s(self) -> float:
        return statistics.median(r.device_s for r in self.results)


def lower_bound_s(p: Plan, tiers: LocalDeployment) -> float | None:
    """What the emulated links alone must take for ``p``'s bytes (None: no bound for this plan)."""
    path = actual_path(p)
    if path != p.path:
        return None
    total = 0.0
    for a, b in zip(path, path[1:], strict=False):
        link = tiers.hop_profile(a, b)
        total += max(0.0, link.rtt_s - JITTER_MARGIN * link.jitter_s)
        for hop in p.prediction.traffic:
            if {hop.src, hop.dst} == {a, b}:
                bps = link.up_bps if hop.direction is Direction.UP else link.down_bps
                total += transfer_s(hop.wire_bytes, bps)
    return total


def lower_quartile(values: Sequence[float]) -> float:
    """The 25th percentile: a tier's speed on a shared machine, whose load bursts only slow runs down."""
    ordered = sorted(values)
    return statistics.quantiles(ordered, n=4, method="inclusive")[0] if len(ordered) > 1 else ordered[0]


def sample_grid(
    grid: Sequence[Plan], chosen: Plan, max_plans: int, seed: int
) -> tuple[list[Plan], list[Plan]]:
    """``(must, rest)``: the plans always measured, and the rest of the grid (sampled), best first."""
    singles: dict[PlanKind, Plan] = {}
    for p in grid:
        kind = p.kind()
        if kind.single is not None and kind not in singles:
            singles[kind] = p
    kinds = [PlanKind.only(t) for t in Tier]
    must = [chosen] + [singles[k] for k in kinds if k in singles]
    must = list({p.key: p for p in must}.values())
    keys = {p.key for p in must}
    others = [p for p in grid if p.key not in keys]
    room = max(max_plans - len(must), 0)
    if len(others) > room:
        top = others[: room // 2]
        rng = random.Random(seed)
        drawn = rng.sample(others[room // 2 :], room - len(top))
        order = {p.key: i for i, p in enumerate(others)}
        others = sorted(top + drawn, key=lambda p: order[p.key])
    return must, others


def energy_j(m: Measured, power: DevicePower, access: LinkProfile) -> float:
    """The power model applied to what was measured (see the module docstring)."""
    latency = m.total_ms / 1000.0
    t_tx = transfer_s(m.sent_bytes, access.up_bps)
    t_rx = transfer_s(m.received_bytes, access.down_bps)
    return power.energy_j(
        latency, m.device_s,
        sent_bytes=m.sent_bytes, send_s=t_tx, received_bytes=m.received_bytes, receive_s=t_rx,
    )


@dataclass
class Settings:
    requests: int = 3
    device_slowdown: float = DEVICE_SLOWDOWN
    edge_slowdown: float = EDGE_SLOWDOWN
    cloud_slowdown: float = CLOUD_SLOWDOWN
    max_plans: int = MAX_PLANS
    threads: int = 1
    seed: int = 0
    profile_rounds: int = PROFILE_ROUNDS  # interleaved single-tier rounds each time the tiers are profiled
    calibration_runs: int = CALIBRATION_RUNS  # requests per three-tier plan measuring the per-hop overhead


class ModelBench:
    """All profiles of one model over one set of tiers (async; see the module docstring)."""

    def __init__(
        self,
        name: str,
        proto: onnx.ModelProto,
        graph: UnitGraph,
        tiers: LocalDeployment,
        certs: Path,
        settings: Settings,
        log: Log,
    ) -> None:
        self.name, self.proto, self.graph, self.tiers = name, proto, graph, tiers
        self.settings, self.log = settings, log
        self.certs = certs
        self.feeds = example_feeds(graph, input_dtypes(proto))
        self.warm: set[tuple[tuple[str, ...], tuple[int, ...]]] = set()
        self.options = SessionOptions(intra_op_threads=settings.threads)
        self.overhead: dict[frozenset[str], float] = {}

    def _links(self, access: LinkProfile) -> list[LinkEstimator]:
        links = [LinkEstimator.from_state(s) for s in bench_links(access)]
        set_overhead(links, self.overhead)
        return links

    def overhead_ms(self) -> dict[str, float]:
        order: dict[str, int] = {t: i for i, t in enumerate(Tier)}
        return {
            "-".join(sorted(pair, key=order.__getitem__)): round(v * 1000.0, 2)
            for pair, v in self.overhead.items()
        }

    async def _runs(self, engine: SplitEngine, p: Plan, n: int) -> list[SplitResult]:
        return [await engine.run_plan(dict(self.feeds), p) for _ in range(n)]

    async def setup(self) -> SplitEngine:
        """Profile every tier and measure each link's fixed overhead (over the fast link)."""
        s = self.settings
        self.profiler = LocalProfiler(self.proto, self.graph, options=self.options, runs=5, cache=None)
        device = self.profiler.measure(Tier.DEVICE, s.device_slowdown)
        stand_in: dict[str, TierProfile] = {  # replaced below
            t: device.model_copy(update={"tier": t}) for t in (Tier.EDGE, Tier.CLOUD)
        }
        source = SnapshotSource(self.graph, {Tier.DEVICE: device, **stand_in}, self._links(get_profile(FAST)))
        engine = SplitEngine(
            self.proto,
            source,
            load_identity(self.certs, Tier.DEVICE),
            self.tiers.peers,
            shares=self.profiler.shares,
            options=self.options,
            slowdown=s.device_slowdown,
        )
        samples = await self.profile_tiers(engine)
        three = [p for p in candidate_grid(self.graph, engine.snapshot()) if len(actual_path(p)) == 3][:2]
        access = self.tiers.access
        self.tiers.set_profile(get_profile(FAST))  # the links the engine was given while calibrating
        try:
            for p in three:
                await self._runs(engine, p, 1)
                samples += [(p, r) for r in await self._runs(engine, p, s.calibration_runs)]
                self.warm.add(p.key)
        finally:
            self.tiers.set_profile(access)
        self.overhead = measured_overhead([(p, r.network_s) for p, r in samples], engine.source.links)
        return engine

    async def profile_tiers(self, engine: SplitEngine) -> list[tuple[Plan, SplitResult]]:
        """Profile the tiers again over the fast link, in interleaved rounds (device-only, edge-only,
        cloud-only, repeated) so drift in the shared machine's load hits them alike: the device's
        stage time as it runs it (at its slowdown), the compute times the edge and cloud report.
        Returns the remote requests (for the overhead)."""
        access = self.tiers.access
        self.tiers.set_profile(get_profile(FAST))
        snap = engine.snapshot()
        tiers = (Tier.DEVICE, Tier.EDGE, Tier.CLOUD)
        only = {t: plan(self.graph, snap, {t}) for t in tiers}
        runs: dict[str, list[SplitResult]] = {t: [] for t in tiers}
        try:
            for p in only.values():
                await self._runs(engine, p, 1)  # warm up
                self.warm.add(p.key)
            for _ in range(self.settings.profile_rounds):
                for t, p in only.items():
                    runs[t] += await self._runs(engine, p, 1)
        finally:
            self.tiers.set_profile(access)
        for t, p in only.items():
            stage = next(st for st in p.stages if st.tier == t)
            samples = [r.device_s if t == Tier.DEVICE else r.remote_compute_s[t] for r in runs[t]]
            seconds = lower_quartile(samples)
            timing = StageTiming(inputs=stage.inputs, outputs=stage.outputs, seconds=seconds)
            profile = profile_remote(
                self.graph, self.profiler.shares, [timing], tier=t, fingerprint=f"{t}-node"
            )
            if t == Tier.DEVICE:  # measured here: keep the local profile's identity, with the new figures
                profile = engine.profiles[Tier.DEVICE].model_copy(
                    update={"unit_s": profile.unit_s, "stages": profile.stages}
                )
            engine.set_profile(t, profile)
        self.whole_ms = {t: engine.profiles[t].total_s * 1000.0 for t in engine.profiles}
        return [(only[t], r) for t in (Tier.EDGE, Tier.CLOUD) for r in runs[t]]

    async def _warm_up(self, engine: SplitEngine, plans: Sequence[Plan], access: LinkProfile) -> None:
        cold = [p for p in plans if p.key not in self.warm]
        if not cold:
            return
        self.tiers.set_profile(get_profile(FAST))
        try:
            for p in cold:
                await engine.run_plan(dict(self.feeds), p)
                self.warm.add(p.key)
        finally:
            self.tiers.set_profile(access)

    async def _measure(
        self,
        engine: SplitEngine,
        p: Plan,
        n: int,
        best_ms: float | None,
        into: Measured | None = None,
        full: bool = False,
    ) -> Measured:
        m = into or Measured(p)
        before = device_bytes(self.tiers)
        count = 0
        for i in range(n):
            m.results.append(await engine.run_plan(dict(self.feeds), p))
            count += 1
            first_ms = m.results[-1].total_s * 1000.0
            slow = best_ms is not None and first_ms > SLOW_FACTOR * best_ms
            if i == 0 and into is None and not full and slow:
                break
        after = device_bytes(self.tiers)
        done = len(m.results)
        # bytes per request, averaged over every request of this plan so far
        m.sent_bytes = (m.sent_bytes * (done - count) + (after[0] - before[0])) / done
        m.received_bytes = (m.received_bytes * (done - count) + (after[1] - before[1])) / done
        return m

    async def decide(self, engine: SplitEngine, access: LinkProfile) -> Plan:
        """Profile the tiers again, switch the device's links to ``access`` and let the planner choose
        (a fresh decision: no hysteresis from the previous profile)."""
        await self.profile_tiers(engine)
        self.tiers.set_profile(access)
        engine.set_links(self._links(access))
        engine.source.power = DevicePower(radio=radio_for_profile(access.name))
        engine.forget_plan()
        return engine.decide()

    async def profile(self, engine: SplitEngine, access_name: str) -> dict[str, Any]:
        s = self.settings
        access = get_profile(access_name)
        chosen = await self.decide(engine, access)
        snap = engine.snapshot()
        grid = candidate_grid(self.graph, snap, include=[chosen])
        must, rest = sample_grid(grid, chosen, s.max_plans, s.seed)
        await self._warm_up(engine, must + rest, access)
        measured: dict[tuple[tuple[str, ...], tuple[int, ...]], Measured] = {}
        skipped = 0
        best: float | None = None
        started = time.perf_counter()
        must_keys = {p.key for p in must}
        for p in must + rest:
            if p.key not in must_keys:
                bound = lower_bound_s(p, self.tiers)
                if best is not None and bound is not None and bound * 1000.0 > best:
                    skipped += 1
                    continue
            m = await self._measure(engine, p, s.requests, best, full=p.key in must_keys)
            measured[p.key] = m
            if len(m.results) == s.requests or best is None:
                best = m.total_ms if best is None else min(best, m.total_ms)
        by_time = sorted(measured.values(), key=lambda m: m.total_ms)
        singles = [measured[p.key] for p in must[1:] if p.key in measured]
        refine = [measured[chosen.key]] + [m for m in by_time if m.plan.key != chosen.key][:REFINE_TOP]
        if singles:
            refine.append(min(singles, key=lambda m: m.total_ms))
        fastest = by_time[0].total_ms
        refine = [
            m
            for m in {id(m): m for m in refine}.values()
            if len(m.results) >= s.requests and m.total_ms <= CONTENDER * fastest
        ]
        for _ in range(REFINE_ROUNDS * s.requests):  # interleaved: one request of each in turn
            for m in refine:
                await self._measure(engine, m.plan, 1, None, into=m)
        elapsed = time.perf_counter() - started
        return self._figures(access, chosen, measured, must, len(grid), skipped, elapsed, engine)

    def _figures(
        self,
        access: LinkProfile,
        chosen: Plan,
        measured: dict[Any, Measured],
        must: list[Plan],
        grid_size: int,
        skipped: int,
        elapsed: float,
        engine: SplitEngine,
    ) -> dict[str, Any]:
        power = engine.source.power
        c = measured[chosen.key]
        oracle = min(measured.values(), key=lambda m: m.total_ms)
        single: dict[Tier, Measured] = {}
        for p in must:
            tier = p.kind().single
            if tier is not None and p.key in measured:
                single.setdefault(tier, measured[p.key])
        best_single = min(single.values(), key=lambda m: m.total_ms)
        cloud = single.get(Tier.CLOUD)
        dev = single.get(Tier.DEVICE)

        def ms(m: Measured | None) -> float | None:
            return round(m.total_ms, 2) if m is not None else None

        rows = sorted(measured.values(), key=lambda m: m.total_ms)
        return {
            "chosen": chosen.describe(),
            "chosen_kind": chosen.kind(),
            "chosen_is_split": chosen.kind().single is None,
            "oracle_kind": oracle.plan.kind(),
            "chosen_predicted_ms": round(chosen.prediction.latency_s * 1000.0, 2),
            "chosen_ms": ms(c),
            "oracle_ms": ms(oracle),
            "oracle": oracle.plan.describe(),
            "device_only_ms": ms(dev),
            "edge_only_ms": ms(single.get(Tier.EDGE)),
            "cloud_only_ms": ms(cloud),
            "best_single_tier": best_single.plan.kind(),
            "chosen_over_oracle": round(c.total_ms / oracle.total_ms, 3),
            "speedup_vs_cloud_only": round(cloud.total_ms / c.total_ms, 3) if cloud else None,
            "speedup_vs_device_only": round(dev.total_ms / c.total_ms, 3) if dev else None,
            "speedup_vs_best_single_tier": round(best_single.total_ms / c.total_ms, 3),
            "energy_vs_device_only": (
                round(energy_j(c, power, access) / energy_j(dev, power, access), 3) if dev else None
            ),
            "chosen_energy_j": round(energy_j(c, power, access), 4),
            "grid_plans": grid_size,
            "measured_plans": len(measured),
            "skipped_by_bound": skipped,
            "requests_timed": sum(len(m.results) for m in measured.values()),
            "seconds": round(elapsed, 1),
            "plans": [
                [
                    m.plan.describe(),
                    round(m.plan.prediction.latency_s * 1000.0, 2),
                    round(m.total_ms, 2),
                    len(m.results),
                ]
                for m in rows
            ],
        }


async def _bench_model(
    name: str,
    proto: onnx.ModelProto,
    graph: UnitGraph,
    tiers: LocalDeployment,
    certs: Path,
    profiles: Sequence[str],
    settings: Settings,
    log: Log,
) -> dict[str, Any]:
    bench = ModelBench(name, proto, graph, tiers, certs, settings, log)
    engine = await bench.setup()
    try:
        log(
            f"{name}: whole model {', '.join(f'{t} {v:.1f} ms' for t, v in bench.whole_ms.items())}; "
            f"overhead per hop {bench.overhead_ms()} ms"
        )
        out: dict[str, Any] = {
            "units": len(graph.units),
            "overhead_per_hop_ms": bench.overhead_ms(),
            "profiles": {},
        }
        for access in profiles:
            figures = await bench.profile(engine, access)
            figures["whole_model_ms"] = {t: round(v, 2) for t, v in bench.whole_ms.items()}
            out["profiles"][access] = figures
            log(
                f"{name} {access}: chosen {figures['chosen']} {figures['chosen_ms']} ms, oracle "
                f"{figures['oracle_ms']} ms ({figures['chosen_over_oracle']}x), {figures['measured_plans']}"
                f"/{figures['grid_plans']} plans in {figures['seconds']} s"
            )
        return out
    finally:
        await engine.close()


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    """Across every model and profile. Speed-ups of a split are given over the cases in which the
    planner chose a split (a single-tier choice beating another single tier is not a split's gain);
    the mean over every case on 3g, 4g and Wi-Fi is the figure Neurosurgeon reports (its choice,
    whatever it was, vs cloud-only), given beside its models' name for that reason only."""
    cases = [(name, access, f) for name, m in results.items() for access, f in m["profiles"].items()]
    rows = [f for _, _, f in cases]
    split = [f for _, _, f in cases if f["chosen_is_split"]]
    over = [r["chosen_over_oracle"] for r in rows]
    vs_single = [r["speedup_vs_best_single_tier"] for r in rows]

    def mean(xs: list[float]) -> float | None:
        return round(statistics.fmean(xs), 3) if xs else None

    def geomean(xs: list[float]) -> float | None:
        return round(statistics.geometric_mean(xs), 3) if xs else None

    def figures(key: str, among: list[dict[str, Any]]) -> list[float]:
        return [r[key] for r in among if r[key]]

    neurosurgeon = [
        f["speedup_vs_cloud_only"]
        for _, access, f in cases
        if access in NEUROSURGEON_NETWORKS and f["speedup_vs_cloud_only"]
    ]
    return {
        "cases": len(rows),
        "chosen_kinds": dict(Counter(str(r["chosen_kind"]) for r in rows)),
        "split_chosen": [
            f"{name} {access}: {f['chosen']}" for name, access, f in cases if f["chosen_is_split"]
        ],
        "no_split_pays": [
            f"{name} {access}: fastest measured {f['oracle_kind']}"
            for name, access, f in cases
            if PlanKind(f["oracle_kind"]).single is not None
        ],
        "where_split": {
            "cases": len(split),
            "mean_speedup_vs_cloud_only": mean(figures("speedup_vs_cloud_only", split)),
            "geomean_speedup_vs_cloud_only": geomean(figures("speedup_vs_cloud_only", split)),
            "mean_speedup_vs_device_only": mean(figures("speedup_vs_device_only", split)),
            "geomean_speedup_vs_device_only": geomean(figures("speedup_vs_device_only", split)),
            "mean_speedup_vs_best_single_tier": mean(figures("speedup_vs_best_single_tier", split)),
            "max_chosen_over_oracle": max((r["chosen_over_oracle"] for r in split), default=None),
        },
        "all_cases_mean_speedup_vs_cloud_only_on_3g_4g_wifi": mean(neurosurgeon),
        "neurosurgeon": {
            "mean_speedup_vs_cloud_only": NEUROSURGEON_SPEEDUP,
            "networks": list(NEUROSURGEON_NETWORKS),
            "what": "its chosen partition (mobile-only, cloud-only or a split) vs cloud-only, "
            "mean over 8 DNN apps (Kang et al., ASPLOS 2017)",
        },
        "max_chosen_over_oracle": round(max(over), 3),
        "worst_speedup_vs_best_single_tier": round(min(vs_single), 3),
        "cases_within_10pct_of_oracle": sum(x <= 1.10 for x in over),
        "cases_within_5pct_of_best_single_tier": sum(x >= 1 / 1.05 for x in vs_single),
    }


def run_split_bench(
    models: Sequence[str] = MODELS,
    profiles: Sequence[str] = PROFILES,
    settings: Settings | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns the JSON-ready result."""
    s = settings or Settings()
    if s.requests < 1:
        raise ConfigError("--requests must be at least 1")
    for name in profiles:
        if get_profile(name).offline:
            raise ConfigError("the offline profile has no link to measure")
    say = log or (lambda _msg: None)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    opened = [open_model(spec) for spec in models]  # every model is found before anything starts
    with tempfile.TemporaryDirectory(prefix="tierflow-split-") as tmp:
        certs = Path(tmp) / "pki"
        for model in opened:
            graph = build_unit_graph(model.proto)
            tiers = deploy_local(
                model.serve,
                certs,
                FAST,
                threads=s.threads,
                edge_slowdown=s.edge_slowdown,
                cloud_slowdown=s.cloud_slowdown,
                target=model.target,
                seed=1,
                log_dir=Path(tmp),
            )
            try:
                results[model.name] = asyncio.run(
                    _bench_model(model.name, model.proto, graph, tiers, certs, profiles, s, say)
                )
            finally:
                tiers.stop()
    return {
        "settings": {
            "device": f"this process, SIMULATED x{s.device_slowdown:g} slower (learned by profiling)",
            "edge": f"tierflow node process, --slowdown {s.edge_slowdown:g}",
            "cloud": f"tierflow node process, --slowdown {s.cloud_slowdown:g}",
            "device_edge_link": "the profile",
            "edge_cloud_link": BACKHAUL.describe(),
            "device_cloud_link": "the profile, then the backhaul (two emulated links in series)",
            "compression": "int8",
            "requests_per_plan": s.requests,
            "max_plans": s.max_plans,
            "threads_per_tier": s.threads,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
        },
        "models": results,
        "summary": _summary(results),
        "seconds": round(time.perf_counter() - started, 1),
    }
