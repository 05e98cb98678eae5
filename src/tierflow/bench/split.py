"""`tierflow bench split`: the planner's chosen split against every candidate, measured over real tiers.

Set-up (one set of processes per model, reused across the link profiles):

* **device** -- this process: a :class:`~tierflow.engine.split_engine.SplitEngine` whose stage runner
  is SIMULATED ``device_slowdown`` times slower (the slowdown stretches the real execution; the
  planner learns it by profiling the device, it never reads the factor);
* **edge** -- a ``tierflow node`` process at ``--slowdown edge_slowdown`` (default 2: an edge box
  half as fast as the cloud), **cloud** -- a node at ``cloud_slowdown`` (default 1);
* **links** -- user-space link emulators: device->edge at the profile under test; edge->cloud at
  the backhaul (1 Gbit/s each way, 10 ms RTT: metro fibre from a base station to a cloud region,
  ``tierflow.planner.snapshot.BACKHAUL``); device->cloud at the access profile chained with the
  backhaul (the slower bandwidth each way, the RTTs and loss combined) -- the same links the
  planner assumes (``links_for``). Profiles switch live between runs.

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

from tierflow.engine.split_engine import SplitEngine
from tierflow.engine.split_runner import SplitResult
from tierflow.errors import ConfigError
from tierflow.model.registry import resolve_model
from tierflow.node.launch import NodeProcess, start_node
from tierflow.planner.estimate import LinkEstimator, SnapshotSource
from tierflow.planner.executable import actual_path
from tierflow.planner.graph import UnitGraph
from tierflow.planner.overhead import measured_overhead, set_overhead
from tierflow.planner.plan import Plan
from tierflow.planner.power import DevicePower, radio_for_profile
from tierflow.planner.profile import StageTiming, profile_remote
from tierflow.planner.search import candidate_grid, plan
from tierflow.planner.snapshot import BACKHAUL, CLOUD, DEVICE, EDGE, LinkState
from tierflow.profiling.graph_builder import build_unit_graph, example_feeds, input_dtypes
from tierflow.profiling.local import LocalProfiler
from tierflow.runtime.session import SessionOptions
from tierflow.transport.certs import init_pki
from tierflow.transport.linkemu import MSS, LinkEmulator
from tierflow.transport.tls import load_identity
from tierflow.types.links import Direction, LinkProfile, get_profile

MODELS = ("demo-vision", "demo-image", "demo-lm")
PROFILES = ("2g", "3g", "4g", "wifi", "5g", "datacenter")
DEVICE_SLOWDOWN = 4.0
EDGE_SLOWDOWN = 2.0
CLOUD_SLOWDOWN = 1.0
MAX_PLANS = 72  # demo-vision's 55 and demo-image's 66 grid plans are all measured; demo-lm's 279 sampled
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


def chained(access: LinkProfile, backhaul: LinkProfile = BACKHAUL) -> LinkProfile:
    """The device->cloud link: the access link then the backhaul, without stopping at the edge."""
    return LinkProfile(
        name=f"{access.name}+{backhaul.name}",
        down_bps=min(access.down_bps, backhaul.down_bps),
        up_bps=min(access.up_bps, backhaul.up_bps),
        rtt_s=access.rtt_s + backhaul.rtt_s,
        jitter_s=math.hypot(access.jitter_s, backhaul.jitter_s),
        loss=1.0 - (1.0 - access.loss) * (1.0 - backhaul.loss),
    )


def goodput(profile: LinkProfile) -> LinkProfile:
    """``profile`` at the rate a reliable stream gets through its loss (docs/NETWORK.md, loss):
    each packet costs ``MSS*8/bw`` plus, with probability ``loss``, a repair of ``RTT + MSS*8/bw``."""

    def rate(bps: float) -> float:
        if bps <= 0 or math.isinf(bps):
            return bps
        return bps / (1.0 + profile.loss * (1.0 + profile.rtt_s * bps / (MSS * 8)))

    return profile.replace(up_bps=rate(profile.up_bps), down_bps=rate(profile.down_bps))


def bench_links(access: LinkProfile) -> tuple[LinkState, ...]:
    """The links the planner is given: the emulated ones (``links_for``'s topology), each at its goodput."""
    return (
        LinkState.from_profile(DEVICE, EDGE, goodput(access)),
        LinkState.from_profile(EDGE, CLOUD, goodput(BACKHAUL)),
        LinkState.from_profile(DEVICE, CLOUD, goodput(chained(access))),
    )


class Tiers:
    """The edge and cloud node processes of one model and the three link emulators."""

    def __init__(self, model: Path, certs: Path, *, edge_slowdown: float, cloud_slowdown: float,
                 threads: int = 1, logs: Path | None = None) -> None:
        self.nodes: list[NodeProcess] = []
        self.links: list[LinkEmulator] = []
        try:
            cloud = self._node(start_node("cloud", model, certs, threads=threads, slowdown=cloud_slowdown,
                                          log=logs / "cloud.log" if logs else None))
            self.edge_cloud = self._link(LinkEmulator(cloud.data_plane, BACKHAUL, seed=1))
            edge = self._node(start_node("edge", model, certs, threads=threads, slowdown=edge_slowdown,
                                         peers={CLOUD: self.edge_cloud.hostport},
                                         log=logs / "edge.log" if logs else None))
            self.device_edge = self._link(LinkEmulator(edge.data_plane, FAST, seed=2))
            self.device_cloud = self._link(LinkEmulator(cloud.data_plane, chained(get_profile(FAST)), seed=3))
        except BaseException:
            self.close()
            raise
        self.access = get_profile(FAST)

    def _node(self, node: NodeProcess) -> NodeProcess:
        self.nodes.append(node)
        return node

    def _link(self, link: LinkEmulator) -> LinkEmulator:
        self.links.append(link.start())
        return link

    @property
    def peers(self) -> dict[str, str]:
        """Where the device reaches each remote tier."""
        return {EDGE: self.device_edge.hostport, CLOUD: self.device_cloud.hostport}

    def set_access(self, access: LinkProfile) -> None:
        self.access = access
        self.device_edge.set_profile(access)
        self.device_cloud.set_profile(chained(access))

    def hop_profile(self, a: str, b: str) -> LinkProfile:
        pair = {a, b}
        if pair == {DEVICE, EDGE}:
            return self.access
        if pair == {EDGE, CLOUD}:
            return BACKHAUL
        return chained(self.access)

    def device_bytes(self) -> tuple[int, int]:
        """Bytes sent and received over the device's own links so far."""
        sent = received = 0
        for link in (self.device_edge, self.device_cloud):
            stats = link.stats()
            sent += stats.up.bytes
            received += stats.down.bytes
        return sent, received

    def close(self) -> None:
        for link in self.links:
            link.stop()
        for node in self.nodes:
            node.stop()


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


def lower_bound_s(p: Plan, tiers: Tiers) -> float | None:
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
                total += hop.wire_bytes * 8.0 / bps
    return total


def lower_quartile(values: Sequence[float]) -> float:
    """The 25th percentile: a tier's speed on a shared machine, whose load bursts only slow runs down."""
    ordered = sorted(values)
    return statistics.quantiles(ordered, n=4, method="inclusive")[0] if len(ordered) > 1 else ordered[0]


def sample_grid(
    grid: Sequence[Plan], chosen: Plan, max_plans: int, seed: int
) -> tuple[list[Plan], list[Plan]]:
    """``(must, rest)``: the plans always measured, and the rest of the grid (sampled), best first."""
    singles = {}
    for p in grid:
        kind = p.kind()
        if kind.endswith("-only") and kind not in singles:
            singles[kind] = p
    kinds = (f"{DEVICE}-only", f"{EDGE}-only", f"{CLOUD}-only")
    must = [chosen] + [singles[k] for k in kinds if k in singles]
    must = list({p.key: p for p in must}.values())
    keys = {p.key for p in must}
    others = [p for p in grid if p.key not in keys]
    room = max(max_plans - len(must), 0)
    if len(others) > room:
        top = others[: room // 2]
        rng = random.Random(seed)
        drawn = rng.sample(others[room // 2:], room - len(top))
        order = {p.key: i for i, p in enumerate(others)}
        others = sorted(top + drawn, key=lambda p: order[p.key])
    return must, others


def energy_j(m: Measured, power: DevicePower, access: LinkProfile) -> float:
    """The power model applied to what was measured (see the module docstring)."""
    latency = m.total_ms / 1000.0
    t_tx = m.sent_bytes * 8.0 / access.up_bps if m.sent_bytes else 0.0
    t_rx = m.received_bytes * 8.0 / access.down_bps if m.received_bytes else 0.0
    radio = power.radio
    return (power.idle_w * latency + (power.busy_w - power.idle_w) * m.device_s
            + radio.tx_w * t_tx + radio.tx_j_per_byte * m.sent_bytes
            + radio.rx_w * t_rx + radio.rx_j_per_byte * m.received_bytes)


@dataclass
class Settings:
    requests: int = 3
    device_slowdown: float = DEVICE_SLOWDOWN
    edge_slowdown: float = EDGE_SLOWDOWN
    cloud_slowdown: float = CLOUD_SLOWDOWN
    max_plans: int = MAX_PLANS
    threads: int = 1
    seed: int = 0


class ModelBench:
    """All profiles of one model over one set of tiers (async; see the module docstring)."""

    def __init__(self, name: str, proto: onnx.ModelProto, graph: UnitGraph, tiers: Tiers, certs: Path,
                 settings: Settings, log: Log) -> None:
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
        order = {DEVICE: 0, EDGE: 1, CLOUD: 2}
        return {"-".join(sorted(pair, key=order.__getitem__)): round(v * 1000.0, 2)
                for pair, v in self.overhead.items()}

    async def _runs(self, engine: SplitEngine, p: Plan, n: int) -> list[SplitResult]:
        return [await engine.run_plan(dict(self.feeds), p) for _ in range(n)]

    async def setup(self) -> SplitEngine:
        """Profile every tier and measure each link's fixed overhead (over the fast link)."""
        s = self.settings
        self.profiler = LocalProfiler(self.proto, self.graph, options=self.options, runs=5, cache=None)
        device = self.profiler.measure(DEVICE, s.device_slowdown)
        stand_in = {t: device.model_copy(update={"tier": t}) for t in (EDGE, CLOUD)}  # replaced below
        source = SnapshotSource(self.graph, {DEVICE: device, **stand_in}, self._links(get_profile(FAST)))
        engine = SplitEngine(self.proto, source, load_identity(self.certs, DEVICE), self.tiers.peers,
                             shares=self.profiler.shares, options=self.options, slowdown=s.device_slowdown)
        samples = await self.profile_tiers(engine)
        three = [p for p in candidate_grid(self.graph, engine.snapshot()) if len(actual_path(p)) == 3][:2]
        for p in three:
            await self._runs(engine, p, 1)
            samples += [(p, r) for r in await self._runs(engine, p, CALIBRATION_RUNS)]
            self.warm.add(p.key)
        self.overhead = measured_overhead([(p, r.network_s) for p, r in samples], engine.source.links)
        return engine

    async def profile_tiers(self, engine: SplitEngine) -> list[tuple[Plan, SplitResult]]:
        """Profile the tiers again over the fast link, in interleaved rounds (device-only, edge-only,
        cloud-only, repeated) so drift in the shared machine's load hits them alike: the device's
        stage time as it runs it (at its slowdown), the compute times the edge and cloud report.
        Returns the remote requests (for the overhead)."""
        access = self.tiers.access
        self.tiers.set_access(get_profile(FAST))
        snap = engine.snapshot()
        tiers = (DEVICE, EDGE, CLOUD)
        only = {t: plan(self.graph, snap, {t}) for t in tiers}
        runs: dict[str, list[SplitResult]] = {t: [] for t in tiers}
        try:
            for p in only.values():
                await self._runs(engine, p, 1)  # warm up
                self.warm.add(p.key)
            for _ in range(PROFILE_ROUNDS):
                for t, p in only.items():
                    runs[t] += await self._runs(engine, p, 1)
        finally:
            self.tiers.set_access(access)
        for t, p in only.items():
            stage = next(st for st in p.stages if st.tier == t)
            samples = [r.device_s if t == DEVICE else r.remote_compute_s[t] for r in runs[t]]
            seconds = lower_quartile(samples)
            timing = StageTiming(inputs=stage.inputs, outputs=stage.outputs, seconds=seconds)
            profile = profile_remote(self.graph, self.profiler.shares, [timing], tier=t,
                                     fingerprint=f"{t}-node")
            if t == DEVICE:  # measured here: keep the local profile's identity, with the new figures
                profile = engine.profiles[DEVICE].model_copy(
                    update={"unit_s": profile.unit_s, "stages": profile.stages})
            engine.set_profile(t, profile)
        self.whole_ms = {t: engine.profiles[t].total_s * 1000.0 for t in engine.profiles}
        return [(only[t], r) for t in (EDGE, CLOUD) for r in runs[t]]

    async def _warm_up(self, engine: SplitEngine, plans: Sequence[Plan], access: LinkProfile) -> None:
        cold = [p for p in plans if p.key not in self.warm]
        if not cold:
            return
        self.tiers.set_access(get_profile(FAST))
        try:
            for p in cold:
                await engine.run_plan(dict(self.feeds), p)
                self.warm.add(p.key)
        finally:
            self.tiers.set_access(access)

    async def _measure(self, engine: SplitEngine, p: Plan, n: int, best_ms: float | None,
                       into: Measured | None = None, full: bool = False) -> Measured:
        m = into or Measured(p)
        before = self.tiers.device_bytes()
        count = 0
        for i in range(n):
            m.results.append(await engine.run_plan(dict(self.feeds), p))
            count += 1
            first_ms = m.results[-1].total_s * 1000.0
            slow = best_ms is not None and first_ms > SLOW_FACTOR * best_ms
            if i == 0 and into is None and not full and slow:
                break
        after = self.tiers.device_bytes()
        done = len(m.results)
        # bytes per request, averaged over every request of this plan so far
        m.sent_bytes = (m.sent_bytes * (done - count) + (after[0] - before[0])) / done
        m.received_bytes = (m.received_bytes * (done - count) + (after[1] - before[1])) / done
        return m

    async def profile(self, engine: SplitEngine, access_name: str) -> dict[str, Any]:
        s = self.settings
        access = get_profile(access_name)
        await self.profile_tiers(engine)
        self.tiers.set_access(access)
        engine.set_links(self._links(access))
        engine.source.power = DevicePower(radio=radio_for_profile(access.name))
        engine.forget_plan()
        chosen = engine.decide()
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
        refine = [m for m in {id(m): m for m in refine}.values()
                  if len(m.results) >= s.requests and m.total_ms <= CONTENDER * fastest]
        for _ in range(REFINE_ROUNDS * s.requests):  # interleaved: one request of each in turn
            for m in refine:
                await self._measure(engine, m.plan, 1, None, into=m)
        elapsed = time.perf_counter() - started
        return self._figures(access, chosen, measured, must, len(grid), skipped, elapsed, engine)

    def _figures(self, access: LinkProfile, chosen: Plan, measured: dict[Any, Measured], must: list[Plan],
                 grid_size: int, skipped: int, elapsed: float, engine: SplitEngine) -> dict[str, Any]:
        power = engine.source.power
        c = measured[chosen.key]
        oracle = min(measured.values(), key=lambda m: m.total_ms)
        single: dict[str, Measured] = {}
        for p in must:
            kind = p.kind()
            if kind.endswith("-only") and p.key in measured:
                single.setdefault(kind.removesuffix("-only"), measured[p.key])
        best_single = min(single.values(), key=lambda m: m.total_ms)
        cloud = single.get(CLOUD)
        dev = single.get(DEVICE)

        def ms(m: Measured | None) -> float | None:
            return round(m.total_ms, 2) if m is not None else None

        rows = sorted(measured.values(), key=lambda m: m.total_ms)
        return {
            "chosen": chosen.describe(),
            "chosen_kind": chosen.kind(),
            "chosen_predicted_ms": round(chosen.prediction.latency_s * 1000.0, 2),
            "chosen_ms": ms(c),
            "oracle_ms": ms(oracle),
            "oracle": oracle.plan.describe(),
            "device_only_ms": ms(dev),
            "edge_only_ms": ms(single.get(EDGE)),
            "cloud_only_ms": ms(cloud),
            "best_single_tier": best_single.plan.kind(),
            "chosen_over_oracle": round(c.total_ms / oracle.total_ms, 3),
            "speedup_vs_cloud_only": round(cloud.total_ms / c.total_ms, 3) if cloud else None,
            "speedup_vs_best_single_tier": round(best_single.total_ms / c.total_ms, 3),
            "energy_vs_device_only": (round(energy_j(c, power, access) / energy_j(dev, power, access), 3)
                                      if dev else None),
            "chosen_energy_j": round(energy_j(c, power, access), 4),
            "grid_plans": grid_size,
            "measured_plans": len(measured),
            "skipped_by_bound": skipped,
            "requests_timed": sum(len(m.results) for m in measured.values()),
            "seconds": round(elapsed, 1),
            "plans": [[m.plan.describe(), round(m.plan.prediction.latency_s * 1000.0, 2),
                       round(m.total_ms, 2), len(m.results)] for m in rows],
        }


async def _bench_model(name: str, proto: onnx.ModelProto, graph: UnitGraph, tiers: Tiers, certs: Path,
                       profiles: Sequence[str], settings: Settings, log: Log) -> dict[str, Any]:
    bench = ModelBench(name, proto, graph, tiers, certs, settings, log)
    engine = await bench.setup()
    try:
        log(f"{name}: whole model {', '.join(f'{t} {v:.1f} ms' for t, v in bench.whole_ms.items())}; "
            f"overhead per hop {bench.overhead_ms()} ms")
        out: dict[str, Any] = {
            "units": len(graph.units),
            "overhead_per_hop_ms": bench.overhead_ms(),
            "profiles": {},
        }
        for access in profiles:
            figures = await bench.profile(engine, access)
            figures["whole_model_ms"] = {t: round(v, 2) for t, v in bench.whole_ms.items()}
            out["profiles"][access] = figures
            log(f"{name} {access}: chosen {figures['chosen']} {figures['chosen_ms']} ms, oracle "
                f"{figures['oracle_ms']} ms ({figures['chosen_over_oracle']}x), {figures['measured_plans']}"
                f"/{figures['grid_plans']} plans in {figures['seconds']} s")
        return out
    finally:
        await engine.close()


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    cases = [(access, f) for m in results.values() for access, f in m["profiles"].items()]
    rows = [f for _, f in cases]
    speedups = [r["speedup_vs_cloud_only"] for r in rows if r["speedup_vs_cloud_only"]]
    neurosurgeon = [f["speedup_vs_cloud_only"] for access, f in cases
                    if access in NEUROSURGEON_NETWORKS and f["speedup_vs_cloud_only"]]
    over = [r["chosen_over_oracle"] for r in rows]
    vs_single = [r["speedup_vs_best_single_tier"] for r in rows]

    def mean(xs: list[float]) -> float | None:
        return round(statistics.fmean(xs), 3) if xs else None

    return {
        "cases": len(rows),
        "mean_speedup_vs_cloud_only": mean(speedups),
        "geomean_speedup_vs_cloud_only": round(statistics.geometric_mean(speedups), 3) if speedups else None,
        "max_speedup_vs_cloud_only": round(max(speedups), 3) if speedups else None,
        "mean_speedup_vs_cloud_only_on_3g_4g_wifi": mean(neurosurgeon),
        "neurosurgeon_mean_speedup_vs_cloud_only": NEUROSURGEON_SPEEDUP,
        "max_chosen_over_oracle": round(max(over), 3),
        "worst_speedup_vs_best_single_tier": round(min(vs_single), 3),
        "cases_within_10pct_of_oracle": sum(x <= 1.10 for x in over),
        "cases_within_5pct_of_best_single_tier": sum(x >= 1 / 1.05 for x in vs_single),
        "chosen_kinds": dict(Counter(r["chosen_kind"] for r in rows)),
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
    with tempfile.TemporaryDirectory(prefix="tierflow-split-") as tmp:
        certs = Path(tmp) / "pki"
        init_pki(certs, [DEVICE, EDGE, CLOUD])
        for name in models:
            path = resolve_model(name)
            proto = onnx.load(str(path))
            graph = build_unit_graph(proto)
            tiers = Tiers(path, certs, edge_slowdown=s.edge_slowdown, cloud_slowdown=s.cloud_slowdown,
                          threads=s.threads, logs=Path(tmp))
            try:
                results[name] = asyncio.run(_bench_model(name, proto, graph, tiers, certs, profiles, s, say))
            finally:
                tiers.close()
    return {
        "settings": {
            "device": f"this process, SIMULATED x{s.device_slowdown:g} slower (learned by profiling)",
            "edge": f"tierflow node process, --slowdown {s.edge_slowdown:g}",
            "cloud": f"tierflow node process, --slowdown {s.cloud_slowdown:g}",
            "device_edge_link": "the profile",
            "edge_cloud_link": BACKHAUL.describe(),
            "device_cloud_link": "the profile chained with the backhaul",
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
